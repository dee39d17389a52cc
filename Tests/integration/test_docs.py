"""The reference in docs/ against the binary: every key the config loader accepts, every metric
`/metrics` exposes and every field of a JSON access line has its entry, exactly once. The keys
come from the loader itself (`turnout check-config` names the keys it expects wherever it meets
an unknown one), so a key added to the loader without its line in docs/ fails here."""
import json
import os
import re
import urllib.request

import yaml
from harness import ROOT, Turnout, Upstream, admin_call, run_cli, wait_for

DOCS = os.path.join(ROOT, "docs")
BASE = {"listeners": [{"address": "127.0.0.1:0"}], "pools": {"blue": {"endpoints": ["127.0.0.1:1"]}}}
PROBE = "zz_probe"


def doc(name):
    with open(os.path.join(DOCS, name)) as f:
        return f.read()


def reference_rows(text, header):
    """(first cell, whole row) of every row of the tables headed `header` (the reference tables;
    other tables, such as the one on why defaults are what they are, only refer to entries)."""
    rows = []
    inside = False
    for line in text.splitlines():
        if not line.startswith("|"):
            inside = False
        elif line.strip() == header:
            inside = True
        elif inside and not line.startswith("|---"):
            rows.append((line.split(" | ")[0][2:], line))
    return rows


def expected_keys(tmp_path, path):
    """The keys the loader accepts at `path` (a list of keys and list indexes), or None when the
    value there is not a mapping of known keys."""
    config = json.loads(json.dumps(BASE))
    node = config
    if not path:
        config[PROBE] = 1
    for i, k in enumerate(path):
        nxt = path[i + 1] if i + 1 < len(path) else None
        if isinstance(k, int):
            node = node[k]
            continue
        if nxt is None:
            node[k] = {PROBE: 1}
        elif isinstance(nxt, int):
            node[k] = [{}] if not isinstance(node.get(k), list) else node[k]
            node = node[k]
        else:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
    if path and isinstance(path[-1], int):
        node[PROBE] = 1
    file = tmp_path / "probe.yaml"
    file.write_text(yaml.safe_dump(config))
    out = run_cli("check-config", str(file))
    shown = ".".join(f"[{k}]" if isinstance(k, int) else k for k in path).replace(".[", "[")
    prefix = re.escape(shown) + r"\." if shown else ""
    m = re.search(rf"^\s+{prefix}{PROBE}: unknown key \(expected one of: ([^)]*)\)", out.stdout + out.stderr, re.M)
    return m.group(1).split(", ") if m else None


def config_keys(tmp_path):
    """Every key path the loader accepts, as docs write them: listeners[].tls, pools.NAME.health."""
    found = []

    def walk(path, shown):
        keys = expected_keys(tmp_path, path)
        if keys is None:
            return False
        for k in keys:
            child = path + [k]
            name = f"{shown}.{k}" if shown else k
            found.append(name)
            if k == "listeners":
                walk(child + [0], "listeners[]")
            elif k == "pools" and not shown:
                walk(child + ["blue"], "pools.NAME")
            elif k == "certificates":
                walk(child + [0], name + "[]")
            elif k not in ("weights",):
                walk(child, name)
        return True

    assert walk([], ""), "check-config did not name the keys it expects"
    return found


def test_every_config_key_the_loader_accepts_is_documented_once(tmp_path):
    keys = config_keys(tmp_path)
    # The walk reaches the nested blocks too (TLS, discovery, outlier detection, the mirror, etcd).
    for k in ("log_format", "pools.NAME.tls.server_name", "routing.mirror.max_in_flight", "cluster.etcd.password_file",
              "listeners[].tls.certificates[].private_key", "pools.NAME.discovery.confirm_empty"):
        assert k in keys, (k, keys)
    rows = reference_rows(doc("configuration.md"), "| key | default | meaning |")
    missing, twice = [], []
    for key in keys:
        own = [r for first, r in rows if f"`{key}`" in first]
        if len(own) > 1:
            twice.append(key)
        if own:
            continue
        # A nested key may be described in its parent's row (`{ dns: NAME, type: A ... }`).
        parent, leaf = key.rsplit(".", 1) if "." in key else ("", key)
        parents = [r for first, r in rows if f"`{parent}`" in first]
        if not any(re.search(rf"\b{re.escape(leaf)}\b", r.split(" | ", 1)[1]) for r in parents):
            missing.append(key)
    assert not missing, f"config keys with no entry in docs/configuration.md: {missing}"
    assert not twice, f"config keys with more than one entry: {twice}"
    # Nothing else in docs/ has a key table of its own.
    for name in os.listdir(DOCS):
        if name.endswith(".md") and name != "configuration.md":
            assert "| key | default | meaning |" not in doc(name), name


def test_every_metric_and_every_json_log_field_is_documented_once(blue_green):
    t, _, _ = blue_green(weights={"blue": 100}, extra="  mirror: { pool: green, percent: 100 }\n",
                         root_extra="log_format: json\n")
    for path in ("/", "/a", "/b"):
        urllib.request.urlopen(f"http://127.0.0.1:{t.port}{path}", timeout=10).read()
    wait_for(lambda: '"log":"access"' in t.read_log(), what="an access line")
    status, body, _ = admin_call(t, "GET", "/metrics")
    assert status == 200
    text = body.decode() if isinstance(body, bytes) else str(body)
    metrics = sorted(set(re.findall(r"^# TYPE (\S+) ", text, re.M)))
    assert len(metrics) > 20, metrics
    page = doc("metrics-and-logs.md")
    rows = reference_rows(page, "| metric | type | labels |")
    fields = reference_rows(page, "| field | type | meaning |")
    counts = {m: len([r for first, r in rows if first == f"`{m}`"]) for m in metrics}
    wrong = {m: n for m, n in counts.items() if n != 1}
    assert not wrong, f"metrics without exactly one entry in docs/metrics-and-logs.md: {wrong}"
    line = next(json.loads(x) for x in t.read_log().splitlines() if '"log":"access"' in x)
    for field in line:
        own = [r for first, r in fields if first == f"`{field}`"]
        assert len(own) == 1, f"access log field {field}: {len(own)} entries in docs/metrics-and-logs.md"


def test_the_readme_is_a_landing_page_whose_links_resolve():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    assert "make demo" in readme and "make test" in readme and "## A five-minute walkthrough" in readme
    assert len(readme) < 12000, "README.md is meant to stay a landing page; the reference lives in docs/"
    pages = [n for n in os.listdir(DOCS) if n.endswith(".md")]
    for source, text, base in [("README.md", readme, ROOT)] + [(f"docs/{n}", doc(n), DOCS) for n in pages]:
        for target in re.findall(r"\]\(([^)#\s]*)(?:#[^)\s]*)?\)", text):
            if not target or target.startswith("http"):
                continue
            assert os.path.exists(os.path.join(base, target)), f"{source}: broken link to {target}"
    for n in pages:
        if n != "README.md":
            assert f"({n})" in doc("README.md"), f"docs/README.md does not list {n}"
