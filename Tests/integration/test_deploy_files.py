"""The files to deploy with (config/turnout.service, config/turnout-systemd.yaml, `make install`),
checked so they never rot."""
import os
import re
import shutil
import subprocess

import pytest

from harness import ROOT, run_cli, turnout_binary


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


def test_make_install_puts_the_manual_page_and_the_completions_where_they_belong(tmp_path):
    dest = str(tmp_path)
    install(dest)
    page = os.path.join(dest, "usr/share/man/man1/turnout.1")
    out = subprocess.run(["man", "-l", page], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "MANPAGER": "cat", "MANWIDTH": "100"})
    assert out.returncode == 0 and "mdoc warning" not in out.stderr, out.stderr
    text = re.sub(r".\x08", "", out.stdout)
    # Every command is in it, with its options (it comes from the argument parser itself).
    for command in ("serve", "demo", "check-config", "status", "switch", "weights", "rollback", "mirror", "ramp",
                    "reload", "events", "endpoints", "wait-drained"):
        assert re.search(rf"^\s+{re.escape(command)}\b", text, re.M), command
    assert "--mirror-for" in text and "--if-match" in text
    # Bash completion, as installed: sourcing it registers the function for turnout.
    bash = os.path.join(dest, "usr/share/bash-completion/completions/turnout")
    out = subprocess.run(["bash", "-c", f"source {bash} && complete -p turnout"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "turnout" in out.stdout, out.stderr
    for path, marker in (("usr/share/zsh/site-functions/_turnout", "#compdef turnout"),
                         ("usr/share/fish/vendor_completions.d/turnout.fish", "complete -c")):
        assert marker in open(os.path.join(dest, path)).read(), path


def test_the_binary_writes_its_completion_scripts():
    out = subprocess.run(["bash", "-c", f"source <({turnout_binary()} --generate-completion-script bash); complete -p turnout"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "complete" in out.stdout, out.stderr
    # Completing a subcommand: `turnout sw<TAB>` offers switch.
    script = (f"source <({turnout_binary()} --generate-completion-script bash); "
              "COMP_WORDS=(turnout sw); COMP_CWORD=1; COMP_LINE='turnout sw'; COMP_POINT=${#COMP_LINE}; "
              "$(complete -p turnout | sed -E 's/.*-F ([^ ]+).*/\\1/') turnout sw turnout; printf '%s\\n' \"${COMPREPLY[@]}\"")
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert "switch" in out.stdout.split(), out.stdout + out.stderr
    for shell in ("zsh", "fish"):
        assert run_cli("--generate-completion-script", shell).returncode == 0


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


def test_every_config_in_config_passes_check_config():
    configs = sorted(os.path.join(ROOT, "config", f) for f in os.listdir(os.path.join(ROOT, "config")) if f.endswith(".yaml"))
    assert len(configs) >= 3
    for path in configs:
        out = run_cli("check-config", path)
        assert out.returncode == 0, (path, out.stderr)


def kubernetes_documents():
    yaml = pytest.importorskip("yaml")
    with open(os.path.join(ROOT, "config/kubernetes/turnout.yaml")) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    return yaml, {(d["kind"], d["metadata"]["name"]): d for d in docs}


def test_the_kubernetes_manifests_hang_together_and_their_config_passes_check_config(tmp_path):
    yaml, docs = kubernetes_documents()
    namespace = "turnout"
    for (kind, name), d in docs.items():
        if kind != "Namespace":
            assert d["metadata"].get("namespace") == namespace, (kind, name)
    config_text = docs[("ConfigMap", "turnout-config")]["data"]["turnout.yaml"]
    path = tmp_path / "turnout.yaml"
    path.write_text(config_text)
    out = run_cli("check-config", str(path))
    assert out.returncode == 0, out.stderr
    config = yaml.safe_load(config_text)

    deployment = docs[("Deployment", "turnout")]
    spec = deployment["spec"]
    assert spec["replicas"] >= 2
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == int(config["listeners"][0]["address"].rsplit(":", 1)[1])
    assert ports["admin"] == int(config["admin"]["address"].rsplit(":", 1)[1])
    # Readiness and liveness on the admin /healthz (which answers without the token).
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "admin"}, probe
    # The pod gives a draining Turnout longer than its drain timeout before SIGKILL.
    drain = int(config["timeouts"]["drain"].rstrip("s"))
    assert pod["terminationGracePeriodSeconds"] > drain + container["lifecycle"]["preStop"]["sleep"]["seconds"] - 1
    # Every file the config names is mounted where the config looks for it; the root filesystem is read-only.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert mounts["/etc/turnout/turnout.yaml"] == "config" and container["args"][-1] == "/etc/turnout/turnout.yaml"
    assert os.path.dirname(config["admin"]["token_file"]) in mounts
    assert volumes[mounts[os.path.dirname(config["admin"]["token_file"])]]["secret"]["secretName"] == "turnout-admin-token"
    assert os.path.dirname(config["admin"]["socket"]) in mounts
    assert os.path.dirname(config["state_file"]) in mounts
    # A PodDisruptionBudget keeps most replicas up; cluster mode shares the routing truth.
    pdb = docs[("PodDisruptionBudget", "turnout")]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert 1 <= pdb["spec"]["minAvailable"] < spec["replicas"]
    assert config["cluster"]["etcd"]["endpoints"]
    # Each pool is discovered from a headless Service of this namespace, on the Service's port.
    for pool in ("blue", "green"):
        d = config["pools"][pool]["discovery"]
        service_name, ns, rest = d["dns"].split(".", 2)
        assert ns == namespace and rest == "svc.cluster.local", d["dns"]
        service = docs[("Service", service_name)]
        assert service["spec"]["clusterIP"] == "None"
        assert service["spec"]["selector"]["track"] == pool
        assert d["port"] in [p["targetPort"] for p in service["spec"]["ports"]]
    front = docs[("Service", "turnout")]
    assert front["spec"]["selector"].items() <= labels.items()
    assert front["spec"]["ports"][0]["targetPort"] == "http"


def test_the_container_image_installs_every_library_the_binary_needs():
    """The Containerfile's runtime stage installs the Debian packages of every shared library the
    binary links, apart from the Swift runtime (linked in with --static-swift-stdlib) and those
    debian:bookworm-slim has already."""
    text = open(os.path.join(ROOT, "config/kubernetes/Containerfile")).read()
    runtime = text.split("FROM debian:bookworm-slim", 1)[1]
    installed = set(re.search(r"apt-get install -y --no-install-recommends ([^\\&]+)", runtime).group(1).split())
    assert "--static-swift-stdlib" in text
    from harness import turnout_binary
    ldd = subprocess.run(["ldd", turnout_binary()], capture_output=True, text=True, check=True).stdout
    needed = set()
    for line in ldd.splitlines():
        m = re.search(r"=> (/\S+)", line)
        if not m or "/swift/" in m.group(1):
            continue
        owner = subprocess.run(["dpkg", "-S", os.path.realpath(m.group(1))], capture_output=True, text=True)
        if owner.returncode != 0:
            owner = subprocess.run(["dpkg", "-S", m.group(1)], capture_output=True, text=True)
        assert owner.returncode == 0, f"no Debian package owns {m.group(1)}"
        needed.add(owner.stdout.split(":")[0])
    in_base_image = {"libc6", "libgcc-s1", "libstdc++6"}
    assert needed - in_base_image <= installed, (needed, installed)
    assert {"libssl3", "libnghttp2-14", "libjemalloc2"} <= needed
