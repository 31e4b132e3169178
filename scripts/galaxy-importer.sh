#!/usr/bin/env bash
# Managed by the agentops.fleet collection: runs Galaxy's own import checks (galaxy-importer) on the built
# collection tarball, offline, as Galaxy would on upload: the metadata, the documentation of every
# plugin (ansible-doc), the roles and ansible-lint. Its venv (.cache/matrix/galaxy-importer) is pinned by
# tests/matrix/constraints-galaxy-importer.txt. The configuration keeps it off the network: no
# ansible-test container (run_ansible_test), ansible-lint offline.
# Fails when the import fails, as Galaxy refuses the upload then. Every ERROR line the importer logs (an
# upload Galaxy still accepts, with that content's documentation missing) is printed and counted; with
# GALAXY_IMPORTER_STRICT=1 any of them fails too.
#   usage: scripts/galaxy-importer.sh [TARBALL]   (default: ansible-galaxy collection build into .cache/build)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
constraints=tests/matrix/constraints-galaxy-importer.txt
venv=.cache/matrix/galaxy-importer
want=$(sha256sum "$constraints" | cut -d' ' -f1)
if [ ! -f "$venv/.constraints.sha256" ] || [ "$(cat "$venv/.constraints.sha256")" != "$want" ]; then
  echo "galaxy-importer: creating $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q -c "$constraints" galaxy-importer 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  echo "$want" >"$venv/.constraints.sha256"
fi

tarball=${1:-}
if [ -z "$tarball" ]; then
  mkdir -p .cache/build/galaxy-importer
  rm -f .cache/build/galaxy-importer/*.tar.gz
  "$venv/bin/ansible-galaxy" collection build --force --output-path .cache/build/galaxy-importer . >/dev/null
  tarball=$(ls .cache/build/galaxy-importer/*.tar.gz)
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/agentops-galaxy-importer.XXXXXX")
trap 'rm -rf "$work"' EXIT
cat >"$work/galaxy-importer.cfg" <<CFG
[galaxy-importer]
run_ansible_test = False
run_ansible_lint = True
offline_ansible_lint = True
run_ansible_doc = True
check_changelog = True
tmp_root_dir = $work
ansible_local_tmp = $work/ansible-tmp
CFG
echo "galaxy-importer: $("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("galaxy-importer"))') on $(basename "$tarball")"
set +e
tarball=$(cd "$(dirname "$tarball")" && pwd)/$(basename "$tarball")
# It writes importer_result.json into its working directory: the temporary one.
(cd "$work" && GALAXY_IMPORTER_CONFIG="$work/galaxy-importer.cfg" PATH="$root/$venv/bin:$PATH" HOME="$work" \
  "$root/$venv/bin/python" -m galaxy_importer.main "$tarball" >"$work/out.log" 2>&1)
rc=$?
set -e
grep -vE '^Loading ' "$work/out.log" || true
errors=$(grep -c '^ERROR' "$work/out.log" || true)
if [ "$rc" -ne 0 ] || ! grep -q 'Importer processing completed successfully' "$work/out.log"; then
  echo "galaxy-importer: FAILED (exit code $rc)" >&2
  exit 1
fi
if [ "$errors" -gt 0 ]; then
  echo "galaxy-importer: ERROR lines logged:" >&2
  grep '^ERROR' "$work/out.log" | cut -c1-400 >&2
  if [ "${GALAXY_IMPORTER_STRICT:-0}" = 1 ]; then
    echo "galaxy-importer: FAILED ($errors ERROR line(s), GALAXY_IMPORTER_STRICT=1)" >&2
    exit 1
  fi
fi
echo "galaxy-importer: import passed, $errors ERROR line(s) logged"
