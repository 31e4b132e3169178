"""The checkout's ansible.cfg is what a production run from the checkout picks up: it keeps SSH safe."""
import configparser
import os

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def test_ansible_cfg_keeps_host_key_checking_on():
    parser = configparser.ConfigParser()
    parser.read(os.path.join(ROOT, "ansible.cfg"))
    assert parser.has_section("defaults")
    value = parser.get("defaults", "host_key_checking", fallback="true")
    assert value.strip().lower() in ("true", "yes", "1", "on"), "ansible.cfg turns host key checking off"


def test_no_make_target_or_script_turns_host_key_checking_off_for_everyone():
    """Only the test and demo targets may relax it, and they use the docker connection (no host keys)."""
    offenders = []
    for folder in ("", "scripts", "playbooks", "inventories/example"):
        base = os.path.join(ROOT, folder)
        for name in sorted(os.listdir(base)):
            path = os.path.join(base, name)
            if not os.path.isfile(path) or name.endswith((".pyc", ".tar.gz")):
                continue
            with open(path, "r", encoding="utf-8", errors="replace") as handle:
                text = handle.read().lower()
            if "host_key_checking" in text.replace(" ", "") and ("=false" in text.replace(" ", "")
                                                                 or "host_key_checking:false" in text.replace(" ", "")):
                offenders.append(os.path.relpath(path, ROOT))
    assert offenders == [], offenders
