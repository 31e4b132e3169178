#!/usr/bin/env bash
# Managed by the agentops.fleet collection: `ansible-test sanity` on the plugins.
#
# ansible-test only runs inside .../ansible_collections/<namespace>/<name>/, so the
# collection (without .venv, .cache, .git and test output) is copied into a temporary
# tree of that layout first. The tests that work offline run on Python 3.11 from the
# local environment; they include the no-log rules of validate-modules.
#
# ansible-test creates a virtual environment per test and bootstraps pip in it with a
# script it normally downloads; here that script is a small local one that uses the
# interpreter's own ensurepip, then installs the pinned requirements through the
# configured package index. Its HOME is the temporary tree, nothing is left behind.
#
# usage: scripts/sanity.sh [extra ansible-test sanity options and targets]
# env:   ANSIBLE_TEST (default .venv/bin/ansible-test), SANITY_PYTHON (default 3.11),
#        SANITY_TARGETS (default plugins/: the modules, module_utils and filters),
#        SANITY_TESTS (default: validate-modules pylint import compile ansible-doc
#        use-argspec-type-path no-assert replace-urlopen shebang line-endings
#        no-smart-quotes empty-init runtime-metadata)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
ansible_test=${ANSIBLE_TEST:-$root/.venv/bin/ansible-test}
python_version=${SANITY_PYTHON:-3.11}
targets=${SANITY_TARGETS-plugins/}
tests=${SANITY_TESTS:-validate-modules pylint import compile ansible-doc use-argspec-type-path no-assert
  replace-urlopen shebang line-endings no-smart-quotes empty-init runtime-metadata}

if [ ! -x "$ansible_test" ]; then
  echo "sanity: ERROR: $ansible_test not found (run make venv)" >&2
  exit 1
fi
namespace=$(sed -n 's/^namespace: *//p' "$root/galaxy.yml")
name=$(sed -n 's/^name: *//p' "$root/galaxy.yml")

work=$(mktemp -d "${TMPDIR:-/tmp}/agentops-sanity.XXXXXX")
trap 'rm -rf "$work"' EXIT
tree="$work/ansible_collections/$namespace/$name"
mkdir -p "$tree" "$work/home/.ansible/test/cache"
tar -C "$root" \
  --exclude=./.venv --exclude=./.cache --exclude=./.git --exclude=./.ansible --exclude=./.pytest_cache \
  --exclude=./tests/output --exclude='*.tar.gz' --exclude=__pycache__ -cf - . | tar -C "$tree" -xf -

# The collection is MIT licensed (galaxy.yml): the GPLv3 header check of validate-modules does not apply.
core_version=$("$(dirname "$ansible_test")/python" -c 'from ansible.release import __version__ as v; print(".".join(v.split(".")[:2]))')
ignore="$tree/tests/sanity/ignore-$core_version.txt"
mkdir -p "$(dirname "$ignore")"
for module in "$tree"/plugins/modules/*.py; do
  [ -e "$module" ] || continue
  rel=${module#"$tree"/}
  grep -qs "^$rel validate-modules:missing-gplv3-license" "$ignore" \
    || echo "$rel validate-modules:missing-gplv3-license" >> "$ignore"
done

# The pip bootstrap script ansible-test looks for (get_pip_<version>.py), one per pip version it may ask for.
pip_version=$("$(dirname "$ansible_test")/python" -c '
import re, inspect
from ansible_test._internal import python_requirements as r
print(re.search(r"pip=.([0-9.]+).", inspect.getsource(r.get_venv_packages)).group(1))' 2>/dev/null || true)
cat > "$work/get_pip.py" <<'PY'
"""Stand-in for get-pip.py: pip from the interpreter's ensurepip, then the requested packages."""
import ensurepip
import os
import subprocess
import sys

args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
ensurepip.bootstrap(upgrade=True)
env = dict(os.environ)
for name in ("PIP_CONFIG_FILE", "ENSUREPIP_OPTIONS"):  # set by ensurepip; pip must read its usual configuration
    env.pop(name, None)
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", "--quiet"] + args, env=env))
PY
for version in ${pip_version:-24.2}; do
  cp "$work/get_pip.py" "$work/home/.ansible/test/cache/get_pip_${version//./_}.py"
done

# Keep the user's pip settings (index, certificates) for the installs under the temporary HOME.
for conf in .config/pip .pip; do
  if [ -d "${HOME:-/nonexistent}/$conf" ]; then
    mkdir -p "$work/home/$(dirname "$conf")"
    cp -r "$HOME/$conf" "$work/home/$conf"
  fi
done

test_args=()
for test in $tests; do
  test_args+=(--test "$test")
done

echo "sanity: ansible-test sanity on $namespace.$name ${targets:-(everything)} (python $python_version): $tests"
cd "$tree"
set +e
HOME="$work/home" "$ansible_test" sanity --local --python "$python_version" --color no "${test_args[@]}" "$@" $targets
rc=$?
set -e
if [ "$rc" -ne 0 ]; then
  echo "sanity: FAILED (ansible-test exit code $rc)" >&2
  exit "$rc"
fi
echo "sanity: passed"
