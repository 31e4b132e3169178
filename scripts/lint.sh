#!/usr/bin/env bash
# Managed by the agentops.fleet collection: every static check of `make lint`.
#  1. the generated documentation is up to date (scripts/gen-docs.py --check: role READMEs' tables and
#     the shared agent options of the argument specs; the defaults match the specs)
#  2. ansible-lint, production profile, zero violations
#  3. the on-host command imports with the Python standard library alone
#  4. ansible-test sanity on the plugins (scripts/sanity.sh)
#  5. antsibull-changelog lint of the fragments, actionlint of .github/workflows
#  6. ansible-galaxy collection build, and the tarball installs
#  7. execution-environment.yml renders a build context (ansible-builder create)
set -euo pipefail
step() { printf '=== lint: %s\n' "$*"; }

step "generated documentation (scripts/gen-docs.py --check; make docs rewrites it)"
python scripts/gen-docs.py --check

step "ansible-lint (production profile)"
# ansible-lint works on its own copy of the collection under .ansible/: never a stale one. Offline, it
# puts its cache (and the first entry of its collections path) under $ANSIBLE_HOME, by default
# ~/.ansible, where an older copy of this collection installed by hand would hide the checkout's
# plugins: its home is the checkout's .ansible/ instead.
rm -rf .ansible/collections/ansible_collections/agentops
ANSIBLE_HOME="$PWD/.ansible" ansible-lint --offline --profile production

step "on-host command: standard library only"
hostlib=$(mktemp -d)
trap 'rm -rf "$hostlib"' EXIT
mkdir -p "$hostlib/agentops_lib"
cp -r roles/common/files/agentops_host "$hostlib/"
cp plugins/module_utils/*.py "$hostlib/agentops_lib/"
# -I -S: no site-packages, no user paths: an import of anything outside the standard library fails here.
PYTHONPATH= python3 -I -S - "$hostlib" <<'PY'
import os, pkgutil, sys, importlib
sys.path.insert(0, sys.argv[1])
import agentops_host
names = ["agentops_host." + m.name for m in pkgutil.iter_modules(agentops_host.__path__)]
names += ["agentops_lib." + m[:-3] for m in os.listdir(os.path.join(sys.argv[1], "agentops_lib")) if m.endswith(".py") and m != "__init__.py"]
for name in names:
    importlib.import_module(name)
print("imported %d modules: %s" % (len(names), ", ".join(sorted(names))))
PY
python3 -I -S -m py_compile roles/common/files/agentops

if [ -x scripts/sanity.sh ]; then
  step "ansible-test sanity (plugins)"
  scripts/sanity.sh
fi

step "antsibull-changelog lint"
antsibull-changelog lint

step "actionlint (.github/workflows)"
actionlint .github/workflows/*.yml
echo "workflows: $(ls .github/workflows/*.yml | xargs -n1 basename | tr '\n' ' ')"

step "ansible-galaxy collection build + install"
out=.cache/build
rm -rf "$out" && mkdir -p "$out"
ansible-galaxy collection build --force --output-path "$out" . >/dev/null
tarball=$(ls "$out"/agentops-fleet-*.tar.gz)
ansible-galaxy collection install --force -p "$out/installed" "$tarball" >/dev/null
test -f "$out/installed/ansible_collections/agentops/fleet/MANIFEST.json"
# The playbooks work by collection name from the installed tarball.
for playbook in site status audit; do
  ANSIBLE_COLLECTIONS_PATH="$PWD/$out/installed" ansible-playbook -i inventories/demo \
    "agentops.fleet.$playbook" --syntax-check >/dev/null
done
echo "agentops.fleet.site, .status and .audit pass --syntax-check from the installed collection"
echo "built and installed $(basename "$tarball") ($(du -k "$tarball" | cut -f1) KiB)"

step "execution environment definition (ansible-builder create)"
rm -rf "$out/ee" && mkdir -p "$out/ee"
cp execution-environment.yml "$out/ee/" && cp "$tarball" "$out/ee/ee-collection.tar.gz"
(cd "$out/ee" && ansible-builder create -f execution-environment.yml -c context >/dev/null)
test -f "$out/ee/context/Dockerfile" -o -f "$out/ee/context/Containerfile"
echo "build context written to $out/ee/context"
step "all lint checks passed"
