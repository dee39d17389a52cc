"""The files to deploy with (config/turnout.service, config/turnout-systemd.yaml, `make install`),
checked so they never rot."""
import os
import re
import shutil
import subprocess

import pytest

from harness import ROOT, run_cli


def install(destdir, prefix="/usr"):
    out = subprocess.run(["make", "-s", "-C", ROOT, "install", f"DESTDIR={destdir}", f"PREFIX={prefix}"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def test_make_install_puts_the_binary_the_unit_and_the_config_where_they_belong(tmp_path):
    dest = str(tmp_path)
    install(dest)
    binary = os.path.join(dest, "usr/bin/turnout")
    unit = os.path.join(dest, "usr/lib/systemd/system/turnout.service")
    config = os.path.join(dest, "etc/turnout/turnout.yaml")
    assert os.access(binary, os.X_OK)
    text = open(unit).read()
    # PREFIX reaches ExecStart; the config the unit names is the one installed.
    assert "ExecStart=/usr/bin/turnout serve --config /etc/turnout/turnout.yaml" in text
    assert run_cli("check-config", config).returncode == 0
    cfg = open(config).read()
    # The state file and the admin socket live in the directories systemd gives the service.
    assert "state_file: /var/lib/turnout/" in cfg and "StateDirectory=turnout" in text
    assert "socket: /run/turnout/" in cfg and "RuntimeDirectory=turnout" in text
    # A second install keeps a config the operator edited.
    with open(config, "a") as f:
        f.write("# edited\n")
    out = install(dest)
    assert "kept the existing" in out.stdout and open(config).read().endswith("# edited\n")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is part of Debian's systemd")
def test_the_unit_passes_systemd_analyze_verify_and_is_sandboxed(tmp_path):
    dest = str(tmp_path)
    install(dest)
    unit = open(os.path.join(dest, "usr/lib/systemd/system/turnout.service")).read()
    for directive in ["DynamicUser=yes", "ProtectSystem=strict", "ProtectHome=yes", "NoNewPrivileges=yes",
                      "Restart=on-failure", "ExecReload=/bin/kill -HUP $MAINPID", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE"]:
        assert directive in unit, directive
    # systemd-analyze verify checks every directive and that ExecStart is executable: point it at
    # the binary just installed under DESTDIR.
    checked = tmp_path / "turnout.service"
    checked.write_text(unit.replace("ExecStart=/usr/bin/turnout", f"ExecStart={dest}/usr/bin/turnout"))
    out = subprocess.run(["systemd-analyze", "verify", str(checked)], capture_output=True, text=True, timeout=60)
    # A directive systemd cannot parse is only a warning ("ignoring"), with exit status 0: any
    # output at all fails the check.
    assert out.returncode == 0 and out.stdout + out.stderr == "", out.stdout + out.stderr
    # And it would catch a broken unit.
    broken = tmp_path / "broken.service"
    broken.write_text(checked.read_text().replace("ProtectSystem=strict", "ProtectSystem=very"))
    out = subprocess.run(["systemd-analyze", "verify", str(broken)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 or "protect system value" in out.stderr
    # The stop timeout outlasts the default drain (30s).
    assert int(re.search(r"TimeoutStopSec=(\d+)s", unit).group(1)) > 30
