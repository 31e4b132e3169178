#!/usr/bin/env bash
# Managed by the agentops.fleet collection: runs pytest and refuses to treat
# "no tests ran" (pytest exit code 5) as a pass: it is reported and fails.
set -uo pipefail
"${PYTEST:-pytest}" "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest: ERROR: no tests were collected for: $*" >&2
  exit 1
fi
exit "$rc"
