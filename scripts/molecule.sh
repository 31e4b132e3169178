#!/usr/bin/env bash
# Managed by the agentops.fleet collection: runs `molecule test` for each named
# scenario (both images each), keeps a log per scenario under .cache/logs and
# prints one summary. Exits non-zero when any scenario failed.
#   usage: scripts/molecule.sh SCENARIO [SCENARIO ...]
set -uo pipefail
[ "$#" -gt 0 ] || { echo "molecule.sh: no scenario given" >&2; exit 2; }
logs=.cache/logs
mkdir -p "$logs"
failed=()
passed=()
tests_passed=0
tests_failed=0
for scenario in "$@"; do
  if [ ! -f "molecule/$scenario/molecule.yml" ]; then
    echo "molecule.sh: unknown scenario '$scenario' (no molecule/$scenario/molecule.yml)" >&2
    failed+=("$scenario"); continue
  fi
  log="$logs/molecule-$scenario.log"
  echo "=== molecule test -s $scenario (log: $log)"
  start=$SECONDS
  if ANSIBLE_FORCE_COLOR=0 PY_COLORS=0 NO_COLOR=1 molecule test -s "$scenario" >"$log" 2>&1; then
    passed+=("$scenario"); status=passed
  else
    failed+=("$scenario"); status=FAILED
    sed 's/\x1b\[[0-9;]*m//g' "$log" | tail -n 150
  fi
  # The testinfra summary line of this scenario ("== 28 passed, 1 failed in 53.74s ==").
  summary=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -E '=+ .*(passed|failed|error).* in [0-9.]+s' | tail -n 1 || true)
  p=$(grep -oE '[0-9]+ passed' <<<"$summary" | awk '{s+=$1} END{print s+0}')
  f=$(grep -oE '[0-9]+ (failed|errors?)' <<<"$summary" | awk '{s+=$1} END{print s+0}')
  if [ "$status" = passed ] && [ "$p" -eq 0 ]; then
    # "no tests ran" is neither a pass nor something to hide: the scenario fails.
    echo "molecule.sh: $scenario ran no testinfra test" >&2
    status=FAILED; unset 'passed[${#passed[@]}-1]'; failed+=("$scenario")
  fi
  tests_passed=$((tests_passed + p)); tests_failed=$((tests_failed + f))
  echo "=== $scenario: $status in $((SECONDS - start))s ${summary:+($(sed -E 's/^.*=+ (.*) in ([0-9.]+s).*$/\1/' <<<"$summary"))}"
done
echo "molecule: scenarios passed: ${passed[*]:-none}; failed: ${failed[*]:-none}"
echo "molecule: $tests_passed passed, $tests_failed failed"
[ "${#failed[@]}" -eq 0 ]
