"""Make the collection and the on-host library importable for the unit tests.

- ``ansible_collections.agentops.fleet`` comes from ``.cache/collections`` (a link to this checkout).
- ``agentops_host`` (the on-host command's library) comes from ``roles/common/files``.
- ``agentops_lib`` is the name the host gives to ``plugins/module_utils``: one implementation, two import paths.
"""
import os
import sys

sys.dont_write_bytecode = True

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CACHE = os.path.join(ROOT, ".cache")
COLLECTIONS = os.path.join(CACHE, "collections")
LINK = os.path.join(COLLECTIONS, "ansible_collections", "agentops", "fleet")
HOSTLIB = os.path.join(CACHE, "hostlib")


def _link(target, link):
    os.makedirs(os.path.dirname(link), exist_ok=True)
    if os.path.islink(link) and os.readlink(link) == target:
        return
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(target, link)


_link(ROOT, LINK)
_link(os.path.join(ROOT, "plugins", "module_utils"), os.path.join(HOSTLIB, "agentops_lib"))

for path in (COLLECTIONS, HOSTLIB, os.path.join(ROOT, "roles", "common", "files")):
    if path not in sys.path:
        sys.path.insert(0, path)
