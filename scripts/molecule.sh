#!/usr/bin/env bash
# Managed by the agentops.fleet collection: runs `molecule test` for each named
# scenario (both images each), keeps a log per scenario under .cache/logs and
# prints one summary. Exits non-zero when any scenario failed.
#   usage: scripts/molecule.sh SCENARIO [SCENARIO ...]
# Scenarios run in lanes (AGENTOPS_MOLECULE_LANES, default 2): the lanes run side by side, each
# runs its scenarios one after the other. Lanes are balanced by each scenario's expected time
# (WEIGHTS below, measured on a 2-core machine), so a scenario that mostly waits for timers and
# deadlines runs beside a CPU-heavy one. Every scenario has a time limit
# (AGENTOPS_MOLECULE_TIMEOUT seconds, default 1800); one that exceeds it fails and is destroyed.
# The test sequences start at `create`: a scenario whose containers or Molecule state are left
# over from an interrupted run is destroyed here first (nothing to destroy costs nothing), and
# `make lint` already syntax-checks every playbook.
# AGENTOPS_MOLECULE_BASE_CONFIG: colon-separated Molecule base configs (default: Molecule's own,
# .config/molecule/config.yml), e.g. `make test-all` passes config.yml:all.yml (Debian 11, 12, 13)
# and config.yml:testing.yml (Debian testing); logs then carry the last one's name
# (.cache/logs/molecule-all-default.log). With AGENTOPS_MOLECULE_SKIP_OWN_PLATFORMS=1, scenarios
# that list their own platforms (which replace a base config's) are left out of that pass.
set -uo pipefail
[ "$#" -gt 0 ] || { echo "molecule.sh: no scenario given" >&2; exit 2; }
lanes=${AGENTOPS_MOLECULE_LANES:-2}
limit=${AGENTOPS_MOLECULE_TIMEOUT:-1800}
[[ "$lanes" =~ ^[1-9][0-9]*$ ]] || { echo "molecule.sh: AGENTOPS_MOLECULE_LANES must be a whole number >= 1" >&2; exit 2; }
[[ "$limit" =~ ^[1-9][0-9]*$ ]] || { echo "molecule.sh: AGENTOPS_MOLECULE_TIMEOUT must be whole seconds >= 1" >&2; exit 2; }
logs=.cache/logs
mkdir -p "$logs"
base_args=()
tag=""
if [ -n "${AGENTOPS_MOLECULE_BASE_CONFIG:-}" ]; then
  IFS=: read -r -a base_files <<<"$AGENTOPS_MOLECULE_BASE_CONFIG"
  for f in "${base_files[@]}"; do
    [ -f "$f" ] || { echo "molecule.sh: AGENTOPS_MOLECULE_BASE_CONFIG: no such file '$f'" >&2; exit 2; }
    base_args+=(--base-config "$f")
  done
  tag=$(basename "${base_files[-1]}" .yml)-
fi

# Expected seconds per scenario (both images, two lanes side by side, pipelining on, each host's tests in a
# worker of its own where the scenario allows it); unknown scenarios count as 300.
# default, agents and auth run three platforms (Debian 11 too).
declare -A WEIGHTS=([default]=350 [alerts]=330 [hostile]=700 [channels]=250 [settings]=250 [audit]=230
                    [token_rotation]=220 [watcher]=200 [agents]=200 [recovery]=160 [auth]=150 [scheduled]=140
                    [ssh]=130 [runtimes]=110 [journald]=100)

# Leftovers of an interrupted run: containers named after the scenario, or Molecule state that
# says they were created (create would then be skipped).
leftovers() {
  docker ps -aq --filter "name=^agentops-$1-" 2>/dev/null | grep -q . && return 0
  grep -qs '^created: true' "$HOME"/.ansible/tmp/molecule.*."$1"/state.yml
}

run_scenario() {
  local scenario=$1 log="$logs/molecule-$tag$1.log" start=$SECONDS status rc summary p f
  echo "=== molecule test -s $scenario (log: $log)"
  : >"$log"
  if leftovers "$scenario"; then
    echo "molecule.sh: $scenario: destroying what an earlier run left" | tee -a "$log"
    ANSIBLE_FORCE_COLOR=0 molecule "${base_args[@]}" destroy -s "$scenario" >>"$log" 2>&1 || true
  fi
  ANSIBLE_FORCE_COLOR=0 PY_COLORS=0 NO_COLOR=1 timeout --kill-after=60 "$limit" \
    molecule "${base_args[@]}" test -s "$scenario" >>"$log" 2>&1
  rc=$?
  if [ "$rc" -eq 0 ]; then status=passed; else status=FAILED; fi
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "molecule.sh: $scenario exceeded ${limit}s and was stopped" | tee -a "$log" >&2
    ANSIBLE_FORCE_COLOR=0 molecule "${base_args[@]}" destroy -s "$scenario" >>"$log" 2>&1 || true
  fi
  # The testinfra summary line of this scenario ("== 28 passed, 1 failed in 53.74s ==").
  summary=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -E '=+ .*(passed|failed|error).* in [0-9.]+s' | tail -n 1 || true)
  p=$(grep -oE '[0-9]+ passed' <<<"$summary" | awk '{s+=$1} END{print s+0}')
  f=$(grep -oE '[0-9]+ (failed|errors?)' <<<"$summary" | awk '{s+=$1} END{print s+0}')
  if [ "$status" = passed ] && [ "$p" -eq 0 ]; then
    # "no tests ran" is neither a pass nor something to hide: the scenario fails.
    echo "molecule.sh: $scenario ran no testinfra test" >&2
    status=FAILED
  fi
  echo "$status $((SECONDS - start)) $p $f" >"$logs/molecule-$tag$scenario.result"
  echo "=== $scenario: $status in $((SECONDS - start))s ${summary:+($(sed -E 's/^.*=+ (.*) in ([0-9.]+s).*$/\1/' <<<"$summary"))}"
}

# Known scenarios, heaviest first, each to the lane with the least expected time so far.
scenarios=()
failed=()
for scenario in "$@"; do
  if [ ! -f "molecule/$scenario/molecule.yml" ]; then
    echo "molecule.sh: unknown scenario '$scenario' (no molecule/$scenario/molecule.yml)" >&2
    failed+=("$scenario"); continue
  fi
  if [ "${AGENTOPS_MOLECULE_SKIP_OWN_PLATFORMS:-0}" = 1 ] && grep -q '^platforms:' "molecule/$scenario/molecule.yml"; then
    echo "molecule.sh: $scenario lists its own platforms: not part of this pass"
    continue
  fi
  rm -f "$logs/molecule-$tag$scenario.result"
  scenarios+=("$scenario")
done
mapfile -t ordered < <(for s in "${scenarios[@]}"; do echo "${WEIGHTS[$s]:-300} $s"; done | sort -k1,1nr -k2 | awk '{print $2}')
declare -a lane_load lane_list
for ((i = 0; i < lanes; i++)); do lane_load[i]=0; lane_list[i]=""; done
for scenario in "${ordered[@]}"; do
  best=0
  for ((i = 1; i < lanes; i++)); do
    if [ "${lane_load[i]}" -lt "${lane_load[best]}" ]; then best=$i; fi
  done
  lane_load[best]=$((lane_load[best] + ${WEIGHTS[$scenario]:-300}))
  lane_list[best]="${lane_list[best]} $scenario"
done

started=$SECONDS
pids=()
for ((i = 0; i < lanes; i++)); do
  [ -n "${lane_list[i]}" ] || continue
  echo "molecule.sh: lane $((i + 1)):${lane_list[i]} (expected ~${lane_load[i]}s)"
  ( for scenario in ${lane_list[i]}; do run_scenario "$scenario"; done ) &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done

passed=()
tests_passed=0
tests_failed=0
for scenario in "${scenarios[@]}"; do
  result="$logs/molecule-$tag$scenario.result"
  if [ ! -f "$result" ]; then
    failed+=("$scenario"); continue
  fi
  read -r status seconds p f <"$result"
  tests_passed=$((tests_passed + p)); tests_failed=$((tests_failed + f))
  if [ "$status" = passed ]; then
    passed+=("$scenario")
  else
    failed+=("$scenario")
    echo "----- $scenario FAILED after ${seconds}s: the end of $logs/molecule-$tag$scenario.log"
    sed 's/\x1b\[[0-9;]*m//g' "$logs/molecule-$tag$scenario.log" | tail -n 150
  fi
done
echo "molecule: scenarios passed: ${passed[*]:-none}; failed: ${failed[*]:-none}"
echo "molecule: $tests_passed passed, $tests_failed failed, ${#scenarios[@]} scenario(s) in $((SECONDS - started))s on $lanes lane(s)"
[ "${#failed[@]}" -eq 0 ]
