#!/usr/bin/env bash
# Managed by the agentops.fleet collection: the ansible-core matrix (`make test-matrix`).
#
# For each supported ansible-core release, in its own virtual environment under .cache/matrix/
# (exact versions pinned in tests/matrix/constraints-<release>.txt, rebuilt when that file changes):
#   sanity    `ansible-test sanity` on the plugins (scripts/sanity.sh, tests/sanity/ignore-<release>.txt)
#   unit      the unit tests (tests/unit, scripts/pytest.sh)
#   molecule  `molecule test -s default` (MOLECULE_RELEASES only: the floor and the newest)
# then, once, Galaxy's import checks on the built tarball (scripts/galaxy-importer.sh, offline),
# and prints one table of results and times. Exits non-zero when any cell failed.
#
# usage: scripts/test-matrix.sh [RELEASE ...]     (default: every release of RELEASES below)
# env:   MATRIX_STEPS      steps to run, default "sanity unit molecule galaxy"
#        MATRIX_TIMEOUT    seconds per step (default 3600)
#        MATRIX_SCENARIO   the Molecule scenario (default: default)
#        AGENTOPS_TEST_IMAGE_DEBIAN11/12/13   images of the Molecule platforms (.config/molecule/config.yml)
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# release -> controller Python it runs on (ansible-core 2.20 and newer need Python >= 3.12).
# 2.19 is the floor (meta/runtime.yml): under 2.17 and 2.18 the inventory contract sees a value templated
# from another variable (a URL built from a vaulted one) unrendered, and the roles write numbers as strings.
declare -A PYTHON_OF=([2.19]=3.11 [2.20]=3.12 [2.21]=3.12)
RELEASES="2.19 2.20 2.21"
# The Molecule part runs under the floor and the newest release only.
MOLECULE_RELEASES="2.19 2.21"
# Top-level packages of each venv (versions come from the constraints file).
BASE_PACKAGES=(ansible-core pytest hypothesis prometheus-client PyYAML antsibull-docs-parser)
# `ansible` (the package of the matching major) carries community.docker for Molecule's docker driver.
MOLECULE_PACKAGES=(ansible molecule "molecule-plugins[docker]" docker pytest-testinfra pytest-xdist)

steps=${MATRIX_STEPS:-sanity unit molecule galaxy}
limit=${MATRIX_TIMEOUT:-3600}
scenario=${MATRIX_SCENARIO:-default}
releases=${*:-$RELEASES}
matrix=.cache/matrix
logs=.cache/logs
mkdir -p "$matrix" "$logs"
export ANSIBLE_COLLECTIONS_PATH="$root/.cache/collections" ANSIBLE_CONFIG="$root/ansible.cfg" PYTHONDONTWRITEBYTECODE=1
mkdir -p .cache/collections/ansible_collections/agentops
ln -sfn "$root" .cache/collections/ansible_collections/agentops/fleet

# An interpreter of the wanted X.Y: on PATH, or one that pyenv installed.
find_python() {
  local want=$1 candidate
  for candidate in "python$want" "${PYENV_ROOT:-$HOME/.pyenv}/versions/$want"*/bin/python /usr/bin/python3 python3; do
    command -v "$candidate" >/dev/null 2>&1 || [ -x "$candidate" ] || continue
    if [ "$("$candidate" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = "$want" ]; then
      command -v "$candidate" 2>/dev/null || echo "$candidate"
      return 0
    fi
  done
  return 1
}

in_list() { [[ " $2 " == *" $1 "* ]]; }

# The venv of a release, (re)built when its constraints file changed.
make_venv() {
  local release=$1 python=$2 venv=$3 constraints=tests/matrix/constraints-$1.txt want packages
  want=$(sha256sum "$constraints" | cut -d' ' -f1)
  if [ -f "$venv/.constraints.sha256" ] && [ "$(cat "$venv/.constraints.sha256")" = "$want" ]; then
    return 0
  fi
  packages=("${BASE_PACKAGES[@]}")
  if in_list "$release" "$MOLECULE_RELEASES"; then packages+=("${MOLECULE_PACKAGES[@]}"); fi
  rm -rf "$venv"
  "$python" -m venv "$venv" || return 1
  "$venv/bin/python" -m pip install -q -c "$constraints" "${packages[@]}" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  [ "${PIPESTATUS[0]}" -eq 0 ] || return 1
  echo "$want" >"$venv/.constraints.sha256"
}

# One cell: runs "$@" with a time limit, logs to $logs/matrix-<release>-<step>.log, records the result.
run_step() {
  local release=$1 step=$2 log="$logs/matrix-$1-$2.log" start=$SECONDS rc
  shift 2
  timeout --kill-after=60 "$limit" "$@" >"$log" 2>&1
  rc=$?
  local seconds=$((SECONDS - start)) status=passed detail
  [ "$rc" -eq 0 ] || status=FAILED
  [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && status="TIMEOUT"
  case "$step" in
    unit | molecule)
      detail=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -E '([0-9]+ (passed|failed)).* in [0-9.]+s' | tail -n 1 \
        | grep -oE '[0-9]+ (passed|failed|skipped|errors?)' | paste -sd, - || true) ;;
    galaxy-importer)
      detail=$(sed -n 's/^galaxy-importer: import passed, \([0-9]*\) ERROR.*$/\1 errors logged/p' "$log") ;;
    sanity)
      detail=$(grep -cE '^Running sanity test' "$log" || true); detail="$detail tests" ;;
    *) detail="" ;;
  esac
  results[$release.$step]="$status ${seconds}s${detail:+ ($detail)}"
  echo "=== ansible-core $release $step: ${results[$release.$step]} (log: $log)"
  if [ "$status" != passed ]; then
    failed=1
    sed 's/\x1b\[[0-9;]*m//g' "$log" | tail -n 40 | sed 's/^/    /'
  fi
}

# `systemd-analyze security` of every agent unit (agentops-<agent>.service) on each host of the scenario.
exposure() {
  local release=$1 container image systemd line
  for container in $(docker ps --filter name="^agentops-$scenario-" --format '{{.Names}}' | sort); do
    image=$(docker inspect --format '{{.Config.Image}}' "$container")
    systemd=$(docker exec "$container" systemctl --version | awk 'NR == 1 {print $2}')
    # The agents of the host are the files of /etc/agentops/agents.d/ (the test's own helper units are not).
    line=$(docker exec "$container" sh -c 'for f in /etc/agentops/agents.d/*.json; do
        [ -e "$f" ] || continue; n=$(basename "$f" .json)
        systemd-analyze security --no-pager "agentops-$n.service" 2>/dev/null \
          | sed -n "s/^.*Overall exposure level for agentops-$n.service: \([0-9.]*\).*$/$n \1/p"
      done' | paste -sd, - | sed 's/,/, /g')
    exposures+=("$release | $container | $image | systemd $systemd | ${line%, }")
  done
}

exposures=()
declare -A results versions
failed=0
started=$SECONDS
for release in $releases; do
  if [ -z "${PYTHON_OF[$release]:-}" ] || [ ! -f "tests/matrix/constraints-$release.txt" ]; then
    echo "test-matrix: unknown release '$release' (known: $RELEASES)" >&2
    exit 2
  fi
  venv="$root/$matrix/ansible-core-$release"
  echo "=== ansible-core $release: venv $matrix/ansible-core-$release"
  if ! python=$(find_python "${PYTHON_OF[$release]}"); then
    results[$release.venv]="FAILED (no Python ${PYTHON_OF[$release]}: install it, e.g. with pyenv)"
    echo "test-matrix: ${results[$release.venv]}" >&2
    failed=1
    continue
  fi
  if ! make_venv "$release" "$python" "$venv" >"$logs/matrix-$release-venv.log" 2>&1; then
    results[$release.venv]="FAILED (pip, see $logs/matrix-$release-venv.log)"
    tail -n 20 "$logs/matrix-$release-venv.log" >&2
    failed=1
    continue
  fi
  versions[$release]="$("$venv/bin/python" -c 'import ansible.release as r, platform; print("%s, Python %s" % (r.__version__, platform.python_version()))')"
  if in_list sanity "$steps"; then
    run_step "$release" sanity env ANSIBLE_TEST="$venv/bin/ansible-test" SANITY_PYTHON="${PYTHON_OF[$release]}" \
      PATH="$venv/bin:$PATH" scripts/sanity.sh
  fi
  if in_list unit "$steps"; then
    run_step "$release" unit env PATH="$venv/bin:$PATH" PYTEST="$venv/bin/pytest" scripts/pytest.sh -q tests/unit
  fi
  if in_list molecule "$steps" && in_list "$release" "$MOLECULE_RELEASES"; then
    # The hosts stay up after verify for the exposure of their agent units, then go.
    run_step "$release" molecule env PATH="$venv/bin:$PATH" ANSIBLE_FORCE_COLOR=0 PY_COLORS=0 \
      NO_COLOR=1 molecule test -s "$scenario" --destroy never
    if [ "${results[$release.molecule]%% *}" = passed ]; then
      exposure "$release"
    fi
    env PATH="$venv/bin:$PATH" molecule destroy -s "$scenario" >/dev/null 2>&1
  fi
done

if in_list galaxy "$steps"; then
  run_step galaxy galaxy-importer scripts/galaxy-importer.sh
fi

echo
echo "ansible-core matrix ($((SECONDS - started))s; logs: $logs/matrix-*.log)"
printf '| %-8s | %-26s | %-26s | %-40s | %-40s |\n' release "ansible-core, Python" sanity unit "molecule $scenario"
printf '| %-8s | %-26s | %-26s | %-40s | %-40s |\n' -------- -------------------------- -------------------------- \
  ---------------------------------------- ----------------------------------------
for release in $releases; do
  if [ -n "${results[$release.venv]:-}" ]; then
    printf '| %-8s | %s |\n' "$release" "${results[$release.venv]}"
    continue
  fi
  printf '| %-8s | %-26s | %-26s | %-40s | %-40s |\n' "$release" "${versions[$release]:-}" \
    "${results[$release.sanity]:--}" "${results[$release.unit]:--}" "${results[$release.molecule]:--}"
done
if [ "${#exposures[@]}" -gt 0 ]; then
  echo
  echo "exposure of the agent units (systemd-analyze security, lower is better):"
  printf '  %s\n' "${exposures[@]}"
fi
if [ -n "${results[galaxy.galaxy-importer]:-}" ]; then
  echo "galaxy-importer (offline) on the built tarball: ${results[galaxy.galaxy-importer]}"
fi
[ "$failed" -eq 0 ]
