"""The ansible-core releases the collection claims are the ones it tests, in one list everywhere.

scripts/test-matrix.sh (RELEASES) is the list; meta/runtime.yml's floor, the roles' min_ansible_version,
the pinned constraints files, the CI sanity matrix and the README's table follow it.
"""
import glob
import os
import re

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def _read(*parts):
    with open(os.path.join(ROOT, *parts), "r", encoding="utf-8") as handle:
        return handle.read()


def _matrix_releases():
    script = _read("scripts", "test-matrix.sh")
    match = re.search(r'^RELEASES="([0-9. ]+)"$', script, re.M)
    assert match, "scripts/test-matrix.sh has no RELEASES line"
    return match.group(1).split()


def _key(release):
    return tuple(int(part) for part in release.split("."))


def test_the_floor_is_the_oldest_release_of_the_matrix():
    releases = _matrix_releases()
    floor = min(releases, key=_key)
    runtime = yaml.safe_load(_read("meta", "runtime.yml"))
    assert runtime["requires_ansible"] == ">=%s.0" % floor
    for meta in sorted(glob.glob(os.path.join(ROOT, "roles", "*", "meta", "main.yml"))):
        info = yaml.safe_load(_read(meta))["galaxy_info"]
        assert str(info["min_ansible_version"]) == floor, meta


def test_every_release_has_constraints_pinning_that_release():
    for release in _matrix_releases():
        pins = _read("tests", "matrix", "constraints-%s.txt" % release)
        core = re.findall(r"^ansible-core==([0-9.]+)$", pins, re.M)
        assert len(core) == 1 and core[0].startswith(release + "."), (release, core)
        # every line is an exact pin (or a comment): the venv is reproducible
        for line in pins.splitlines():
            assert not line.strip() or line.startswith("#") or re.match(r"^[A-Za-z0-9_.\-\[\]]+==\S+$", line), line


def test_the_release_make_test_pins_is_in_the_matrix_with_the_same_version():
    pinned = re.search(r"^ansible-core==([0-9.]+)$", _read("requirements.txt"), re.M).group(1)
    release = ".".join(pinned.split(".")[:2])
    assert release in _matrix_releases()
    assert "ansible-core==%s\n" % pinned in _read("tests", "matrix", "constraints-%s.txt" % release)


def test_ci_sanity_matrix_and_readme_list_the_same_releases():
    workflow = yaml.safe_load(_read(".github", "workflows", "ci.yml"))
    ci = [str(cell["ansible-core"]) for cell in workflow["jobs"]["sanity"]["strategy"]["matrix"]["include"]]
    assert sorted(ci, key=_key) == sorted(_matrix_releases(), key=_key)
    readme = _read("README.md")
    table = re.findall(r"^\| (2\.[0-9]+)\b[^|]*\| 3\.[0-9]+ \|", readme, re.M)
    assert sorted(table, key=_key) == sorted(_matrix_releases(), key=_key), table


def test_no_constraints_file_for_a_release_outside_the_matrix():
    releases = set(_matrix_releases())
    for path in glob.glob(os.path.join(ROOT, "tests", "matrix", "constraints-2.*.txt")):
        release = os.path.basename(path)[len("constraints-"):-len(".txt")]
        assert release in releases, path
