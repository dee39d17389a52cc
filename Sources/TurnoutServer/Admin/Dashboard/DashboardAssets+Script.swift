extension DashboardAssets {
    static let script = #"""
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  let csrf = null, role = null, state = null, stats = null, source = null, lost = false, timers = [];

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
    return e;
  }
  const pct = (v) => v === null || v === undefined ? "–" : (Math.round(v * 100) / 100) + "%";
  const rate = (v) => v === null || v === undefined ? "–" : (v * 100).toFixed(2) + "%";
  const ago = (ms) => ms === null || ms === undefined ? "never" : (ms / 1000).toFixed(1) + "s ago";

  function showError(text) { const e = $("error"); e.textContent = text; e.hidden = !text; }
  function setLost(isLost) { lost = isLost; $("banner").hidden = !isLost; }

  async function call(method, path, body, ifMatch) {
    const headers = {};
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (csrf && method !== "GET") headers["X-CSRF-Token"] = csrf;
    if (ifMatch !== undefined) headers["If-Match"] = String(ifMatch);
    const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: "same-origin", cache: "no-store" });
    let data = null;
    try { data = await r.json(); } catch (_) { data = null; }
    return { status: r.status, data };
  }

  async function login(ev) {
    ev.preventDefault();
    $("login-error").textContent = "";
    const r = await call("POST", "/v1/session", { token: $("token").value });
    if (r.status !== 200) { $("login-error").textContent = (r.data && r.data.error) || "login failed"; return; }
    $("token").value = "";
    started(r.data);
  }

  async function logout() {
    await call("DELETE", "/v1/session");
    location.reload();
  }

  function started(session) {
    csrf = session.csrf; role = session.role;
    $("login").hidden = true; $("main").hidden = false; $("logout").hidden = false;
    $("role").textContent = role === "admin" ? "admin" : "read-only";
    for (const b of document.querySelectorAll("button.action")) b.disabled = role !== "admin";
    refresh(); refreshStats(); openEvents();
    timers.push(setInterval(refresh, 2000), setInterval(refreshStats, 2000));
  }

  function openEvents() {
    if (source) source.close();
    source = new EventSource("/v1/events");
    source.onopen = () => { if (lost) { setLost(false); refresh(); refreshStats(); } };
    source.onmessage = (m) => {
      let e; try { e = JSON.parse(m.data); } catch (_) { return; }
      addEvent(e); refresh();
    };
    source.onerror = () => {
      setLost(true);
      if (source.readyState === EventSource.CLOSED) setTimeout(openEvents, 2000);
    };
  }

  function addEvent(e) {
    const parts = [e.time, "gen " + e.generation, e.kind];
    for (const k of ["pool", "endpoint", "health", "step", "weight", "verdict", "live", "by"]) if (e[k] !== undefined && e[k] !== null) parts.push(k + "=" + (typeof e[k] === "object" ? JSON.stringify(e[k]) : e[k]));
    if (e.reason) parts.push("(" + e.reason + ")");
    const list = $("events");
    list.prepend(el("li", { class: "event-" + e.kind }, parts.join(" ")));
    while (list.children.length > 200) list.lastChild.remove();
  }

  async function refresh() {
    try {
      const r = await call("GET", "/v1/state");
      if (r.status === 401) { location.reload(); return; }
      if (r.status !== 200) return;
      state = r.data; if (lost && source && source.readyState === EventSource.OPEN) setLost(false);
      render();
    } catch (_) { setLost(true); }
  }

  async function refreshStats() {
    try {
      const r = await call("GET", "/v1/stats");
      if (r.status === 200) { stats = r.data; render(); }
    } catch (_) { setLost(true); }
  }

  function render() {
    if (!state) return;
    const pools = Object.keys(state.pools);
    $("summary").textContent = "live " + state.live + " · generation " + state.generation;
    const body = $("pools").tBodies[0]; body.replaceChildren();
    for (const p of pools) {
      const w = stats && stats.window ? stats.window[p] : null;
      const sw = el("button", { type: "button", class: "action", "data-pool": p, onclick: () => confirmSwitch(p) }, "Switch to " + p);
      sw.disabled = role !== "admin" || state.weights[p] === 100;
      body.append(el("tr", { "data-pool": p, class: p === state.live ? "live" : "" },
        el("td", {}, p + (p === state.live ? " (live)" : "")), el("td", { class: "set" }, pct(state.weights[p])),
        el("td", { class: "observed" }, w ? pct(w.observed_share) : "–"), el("td", {}, w ? Number(w.rps).toFixed(1) : "–"),
        el("td", {}, w ? rate(w.error_rate) : "–"), el("td", {}, sw)));
    }
    const inputs = $("weight-inputs");
    if (inputs.dataset.pools !== pools.join(",") || inputs.dataset.generation !== String(state.generation)) {
      inputs.replaceChildren(...pools.map((p) => el("label", {}, p + " ", el("input", { id: "weight-" + p, "data-pool": p, size: "5", value: String(state.weights[p]) }), "% ")));
      inputs.dataset.pools = pools.join(","); inputs.dataset.generation = String(state.generation);
    }
    const sel = $("ramp-pool");
    if (sel.options.length !== pools.length) sel.replaceChildren(...pools.map((p) => el("option", { value: p }, p)));
    renderRamp(); renderEndpoints(); renderCharts(); renderCluster();
    for (const b of document.querySelectorAll("button.action")) if (role !== "admin") b.disabled = true;
  }

  function renderRamp() {
    const r = state.ramp, box = $("ramp");
    if (!r) { box.replaceChildren(el("p", {}, "No ramp has run.")); return; }
    const steps = el("ol", { class: "steps" });
    const observed = (rec) => rec ? " · " + rec.requests + " req, errors " + rate(rec.error_rate) + ", p99 " + (rec.p99_ms === null ? "–" : rec.p99_ms.toFixed(1) + " ms") + " · " + rec.verdict : "";
    if (r.mirror) {
      const rec = r.mirror_observed;
      const cls = (r.phase === "mirror" ? "current " : "") + (rec ? rec.verdict : "");
      steps.append(el("li", { class: cls, "data-step": 0 }, "mirroring " + r.mirror.percent + "% of " + r.mirror.methods.join(", ") + " for " + r.mirror.duration, observed(rec)));
    }
    r.steps.forEach((w, i) => {
      const rec = r.steps_observed[i];
      const cls = (i + 1 === r.step && r.phase !== "mirror" && (r.status === "running" || r.status === "paused") ? "current " : "") + (rec ? rec.verdict : "");
      steps.append(el("li", { class: cls, "data-step": i + 1 }, "step " + (i + 1) + ": " + w + "%", observed(rec)));
    });
    const next = r.next_step_at ? Math.max(0, Math.round((Date.parse(r.next_step_at) - Date.now()) / 1000)) + "s to the next step" : "";
    const g = r.gates;
    box.replaceChildren(
      el("p", { id: "ramp-status" }, "Ramp of " + r.pool + ": " + r.status + ", " + (r.phase === "mirror" ? "mirroring step" : "step " + r.step + " of " + r.steps.length) + " at " + r.weight + "%. " + next),
      el("p", {}, "Gates: max error rate " + (g.max_error_rate === null ? "none" : rate(g.max_error_rate)) + ", max p99 " + (g.max_p99 || "none") + ", min requests " + g.min_requests),
      steps,
      r.reason ? el("p", { id: "ramp-reason", class: r.status === "rolled_back" ? "error-text" : "" }, "Reason: " + r.reason) : null);
    $("ramp-pause").disabled = role !== "admin" || r.status !== "running";
    $("ramp-resume").disabled = role !== "admin" || r.status !== "paused";
    $("ramp-abort").disabled = role !== "admin" || !(r.status === "running" || r.status === "paused");
  }

  function renderEndpoints() {
    const body = $("endpoints").tBodies[0]; body.replaceChildren();
    for (const [p, v] of Object.entries(state.pools)) {
      for (const e of v.endpoints) {
        const probe = stats && stats.probes && stats.probes[p] ? stats.probes[p][e.address] : null;
        let st = e.leaving ? "leaving" : e.state;
        if (e.ejected) st += ", ejected";
        const draining = e.state !== "serving";
        const b = el("button", { type: "button", class: "action", onclick: () => confirmEndpoint(p, e.address, draining ? "serving" : "draining") }, draining ? "Ready" : "Drain");
        b.disabled = role !== "admin" || e.leaving;
        body.append(el("tr", { "data-endpoint": e.address, "data-pool": p },
          el("td", {}, p), el("td", {}, e.address), el("td", { class: "health " + e.health }, e.health),
          el("td", {}, probe ? (probe.passed ? "passed" : "failed") + " (" + probe.detail + ", " + Number(probe.latency_ms).toFixed(1) + " ms)" : "–"),
          el("td", { class: "state" }, st), el("td", {}, e.in_flight), el("td", {}, e.tunnels), el("td", {}, ago(e.last_request_ms_ago)), el("td", {}, b)));
      }
    }
  }

  function renderCluster() {
    const c = state.cluster; $("cluster-section").hidden = !c;
    if (!c) return;
    const body = $("replicas").tBodies[0];
    body.replaceChildren(...c.replicas.map((r) => el("tr", {}, el("td", {}, r.id), el("td", {}, r.address), el("td", {}, r.applied_revision),
      el("td", {}, r.stale ? "yes" : "no"), el("td", {}, ago(r.last_seen_ms_ago)))));
  }

  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs) { const e = document.createElementNS(SVG, tag); for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); return e; }

  function chart(title, values, limit) {
    const W = 260, H = 90, pad = 16;
    const s = svg("svg", { class: "chart", width: W, height: H, viewBox: "0 0 " + W + " " + H, role: "img" });
    const present = values.filter((v) => v !== null && v !== undefined);
    const max = Math.max(limit || 0, ...present, 1e-9) * 1.1;
    const t = svg("text", { x: 4, y: 11 }); t.textContent = title + " (max " + (Math.round(max / 1.1 * 1000) / 1000) + ")"; s.append(t);
    const x = (i) => pad + (i * (W - 2 * pad)) / Math.max(1, values.length - 1);
    const y = (v) => H - 4 - (v / max) * (H - pad - 4);
    if (limit) s.append(svg("line", { class: "limit", x1: pad, x2: W - pad, y1: y(limit), y2: y(limit) }));
    const pts = values.map((v, i) => v === null || v === undefined ? null : x(i) + "," + y(v)).filter(Boolean);
    if (pts.length) s.append(svg("polyline", { class: "series", points: pts.join(" ") }));
    return s;
  }

  function renderCharts() {
    const box = $("charts");
    if (!stats || !state) return;
    const r = state.ramp && (state.ramp.status === "running" || state.ramp.status === "paused") ? state.ramp : null;
    const rows = Object.keys(state.pools).map((p) => {
      const get = (k) => stats.samples.map((s) => s.pools[p] ? s.pools[p][k] : null);
      const gated = r && r.pool === p;
      const p99Limit = gated && r.gates.max_p99 ? parseDuration(r.gates.max_p99) : null;
      return el("div", { class: "charts-row", "data-pool": p }, el("strong", {}, p),
        chart("req/s", get("rps"), null),
        chart("error rate", get("error_rate"), gated ? r.gates.max_error_rate : null),
        chart("p99 ms", get("p99_ms"), p99Limit));
    });
    box.replaceChildren(...rows);
  }

  function parseDuration(t) {
    let ms = 0; const re = /(\d+(?:\.\d+)?)(ms|s|m|h)/g; let m;
    while ((m = re.exec(t))) ms += parseFloat(m[1]) * { ms: 1, s: 1000, m: 60000, h: 3600000 }[m[2]];
    return ms;
  }

  // The generation the confirmation showed: a change made elsewhere meanwhile gets 412.
  let confirmedGeneration = null;
  function confirmThen(text, action) {
    const d = $("confirm");
    const shown = state.generation;
    $("confirm-text").textContent = text;
    d.returnValue = "";
    d.onclose = async () => { if (d.returnValue === "ok") { confirmedGeneration = shown; await action(); } };
    d.showModal();
  }

  async function mutate(method, path, body) {
    showError("");
    const r = await call(method, path, body, confirmedGeneration === null ? state.generation : confirmedGeneration);
    confirmedGeneration = null;
    if (r.status >= 300) showError("Refused (" + r.status + (r.data && r.data.code ? " " + r.data.code : "") + "): " + ((r.data && r.data.error) || "no reason given"));
    await refresh();
  }

  function confirmSwitch(p) {
    const to = Object.keys(state.weights).map((k) => k + "=" + (k === p ? 100 : 0)).join(" ");
    const from = Object.entries(state.weights).map(([k, v]) => k + "=" + v).join(" ");
    confirmThen("Switch all traffic to " + p + " (generation " + state.generation + "): " + from + " → " + to, () => mutate("POST", "/v1/switch", { pool: p }));
  }

  function confirmWeights(ev) {
    ev.preventDefault();
    const weights = {};
    for (const i of $("weight-inputs").querySelectorAll("input")) weights[i.dataset.pool] = Number(i.value);
    const from = Object.entries(state.weights).map(([k, v]) => k + "=" + v).join(" ");
    const to = Object.entries(weights).map(([k, v]) => k + "=" + v).join(" ");
    confirmThen("Set weights (generation " + state.generation + "): " + from + " → " + to, () => mutate("PUT", "/v1/weights", { weights }));
  }

  function confirmRollback() {
    const prev = state.previous ? Object.entries(state.previous).map(([k, v]) => k + "=" + v).join(" ") : "nothing recorded";
    confirmThen("Roll back (generation " + state.generation + ") to: " + prev, () => mutate("POST", "/v1/rollback"));
  }

  function confirmEndpoint(pool, address, to) {
    confirmThen((to === "serving" ? "Make " : "Drain ") + address + " of pool " + pool + (to === "serving" ? " serve again" : ": no new requests; in-flight ones finish") + " (generation " + state.generation + ")",
      () => mutate("PUT", "/v1/pools/" + encodeURIComponent(pool) + "/endpoints/" + encodeURIComponent(address), { state: to }));
  }

  function confirmRamp(ev) {
    ev.preventDefault();
    const pool = $("ramp-pool").value, steps = $("ramp-steps").value.split(",").map((s) => Number(s.trim()));
    const gates = {}; const er = $("ramp-error").value.trim(), p99 = $("ramp-p99").value.trim();
    gates.max_error_rate = er === "" ? null : Number(er); gates.max_p99 = p99 === "" ? null : p99;
    const body = { pool, steps, interval: $("ramp-interval").value.trim(), gates };
    const mirror = $("ramp-mirror").value.trim().replace("%", "");
    if (mirror !== "") body.mirror = { percent: Number(mirror) };
    confirmThen("Start a ramp of " + pool + (body.mirror ? " with a mirroring step of " + mirror + "%," : "") + " through " + steps.join(", ") + "% every " + body.interval + ", rolling back above error rate " + er + " or p99 " + p99 + " (generation " + state.generation + ")",
      () => mutate("POST", "/v1/ramp", body));
  }

  document.addEventListener("DOMContentLoaded", async () => {
    $("login-form").addEventListener("submit", login);
    $("logout").addEventListener("click", logout);
    $("weights-form").addEventListener("submit", confirmWeights);
    $("rollback").addEventListener("click", confirmRollback);
    $("ramp-form").addEventListener("submit", confirmRamp);
    $("ramp-pause").addEventListener("click", () => confirmThen("Pause the ramp (generation " + state.generation + ")", () => mutate("POST", "/v1/ramp/pause")));
    $("ramp-resume").addEventListener("click", () => confirmThen("Resume the ramp (generation " + state.generation + ")", () => mutate("POST", "/v1/ramp/resume")));
    $("ramp-abort").addEventListener("click", () => confirmThen("Abort the ramp and restore the weights from before it (generation " + state.generation + ")", () => mutate("DELETE", "/v1/ramp")));
    try {
      const r = await call("GET", "/v1/session");
      if (r.status === 200 && r.data && r.data.role) started(r.data); else $("login").hidden = false;
    } catch (_) { setLost(true); $("login").hidden = false; }
  });
})();
"""#
}
