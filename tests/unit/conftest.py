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


import pytest  # noqa: E402  (after sys.path is set up above)


@pytest.fixture
def trusted_dir():
    """A fresh directory whose every ancestor only root (or the user running the tests) can write - unlike pytest's
    tmp_path below the world-writable /tmp - so that code telling root-only places from places another user can
    write sees a root-only one. Removed afterwards."""
    import shutil
    import tempfile
    from agentops_lib import agentops_safefile
    base = os.path.join(CACHE, "trusted-tmp")
    os.makedirs(base, mode=0o755, exist_ok=True)
    os.chmod(base, 0o755)
    path = tempfile.mkdtemp(dir=base)
    os.chmod(path, 0o755)
    with agentops_safefile.locate(os.path.join(path, "x")) as found:
        if found.writable:
            shutil.rmtree(path, ignore_errors=True)
            pytest.skip("a directory above %s can be written by a user other than root or this user" % path)
    yield path
    shutil.rmtree(path, ignore_errors=True)
