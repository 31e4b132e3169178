#!/usr/bin/env bash
# Managed by the agentops.fleet collection: creates .venv from the pinned
# requirements.txt. Re-runs pip only when requirements.txt changed.
set -euo pipefail
venv=${1:-.venv}
python=${PYTHON:-python3}
stamp="$venv/.requirements.sha256"
want=$(sha256sum requirements.txt | cut -d' ' -f1)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/ansible-playbook" ]; then
  echo "setup-venv: $venv is up to date"
  exit 0
fi
if ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup-venv: installing python3-venv"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; }
  else
    echo "setup-venv: ERROR: $python has no venv/ensurepip module (install python3-venv)" >&2
    exit 1
  fi
fi
echo "setup-venv: creating $venv with $("$python" --version 2>&1)"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
"$venv/bin/python" -m pip install -q -r requirements.txt 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
echo "$want" > "$stamp"
echo "setup-venv: done"
