"""The dashboard (admin.dashboard: true), driven by headless Chromium through chromedriver
(Debian chromium, chromium-driver; selenium), against a real Turnout and real upstreams. Plus its
access rules, checked with plain HTTP."""
import http.client
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from urllib.parse import urlsplit

import pytest

from harness import ROOT, Turnout, Upstream, admin_call, free_port, run_cli, wait_for

TOKEN = "dashboard-admin-token-0123456789"
RO_TOKEN = "dashboard-read-only-token-98765"


def dashboard_turnout(cleanup, pools=None, **kw):
    d = tempfile.mkdtemp(prefix="turnout-dash-")
    tf, rf = os.path.join(d, "token"), os.path.join(d, "ro-token")
    for path, value in ((tf, TOKEN), (rf, RO_TOKEN)):
        with open(path, "w") as f:
            f.write(value + "\n")
        os.chmod(path, 0o600)
    port = free_port()
    if pools is None:
        blue, green = Upstream("blue"), Upstream("green")
        cleanup.extend([blue, green])
        pools = {"blue": [blue.address], "green": [green.address]}
    t = Turnout(pools, admin_extra=f"  address: 127.0.0.1:{port}\n  token_file: {tf}\n  dashboard: true\n"
                                   f"  read_only_token_file: {rf}\n", **kw)
    cleanup.append(t)
    t.admin_port = port
    return t


def request(t, method, path, body=None, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", t.admin_port, timeout=10)
    h = dict(headers or {})
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        h["Content-Type"] = "application/json"
    c.request(method, path, body=data, headers=h)
    r = c.getresponse()
    text = r.read()
    try:
        return r.status, json.loads(text), r
    except ValueError:
        return r.status, text, r


def login(t, token):
    status, body, r = request(t, "POST", "/v1/session", {"token": token})
    assert status == 200, body
    cookie = r.getheader("Set-Cookie")
    return cookie.split(";")[0], body["csrf"], cookie


def test_access_rules_without_a_browser(cleanup):
    t = dashboard_turnout(cleanup)
    # The page and its assets load without a session, with a strict policy.
    status, page, r = request(t, "GET", "/")
    assert status == 200 and b"<script src=\"/dashboard.js\"" in page
    csp = r.getheader("Content-Security-Policy")
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert r.getheader("X-Frame-Options") == "DENY"
    assert request(t, "GET", "/dashboard.js")[2].getheader("Content-Type").startswith("text/javascript")
    # Without a session every data endpoint and every action is 401.
    for method, path in [("GET", "/v1/state"), ("GET", "/v1/stats"), ("GET", "/v1/events"), ("GET", "/metrics"),
                         ("GET", "/v1/ramp"), ("GET", "/v1/drain?pool=blue"),
                         ("POST", "/v1/switch"), ("PUT", "/v1/weights"), ("POST", "/v1/rollback"), ("POST", "/v1/ramp"),
                         ("DELETE", "/v1/ramp"), ("POST", "/v1/reload"), ("PUT", "/v1/pools/blue/endpoints/127.0.0.1:1")]:
        assert request(t, method, path, {} if method != "GET" else None)[0] == 401, (method, path)
    assert request(t, "GET", "/v1/session")[1] == {"role": None, "csrf": None}
    # A wrong token does not log in.
    assert request(t, "POST", "/v1/session", {"token": "not-the-token-at-all"})[0] == 401
    # An admin session: the cookie is HttpOnly and SameSite=Strict; changes need the CSRF token.
    cookie, csrf, raw = login(t, TOKEN)
    assert "HttpOnly" in raw and "SameSite=Strict" in raw
    assert request(t, "GET", "/v1/state", headers={"Cookie": cookie})[0] == 200
    assert request(t, "GET", "/v1/session", headers={"Cookie": cookie})[1] == {"role": "admin", "csrf": csrf}
    status, body, _ = request(t, "POST", "/v1/switch", {"pool": "green"}, headers={"Cookie": cookie})
    assert (status, body["code"]) == (403, "csrf_required")
    status, body, _ = request(t, "POST", "/v1/switch", {"pool": "green"}, headers={"Cookie": cookie, "X-CSRF-Token": csrf[:-1] + ("1" if csrf[-1] == "0" else "0")})
    assert status == 403
    assert admin_call(t, "GET", "/v1/state")[1]["live"] == "blue", "a refused change changed nothing"
    status, body, _ = request(t, "POST", "/v1/switch", {"pool": "green"}, headers={"Cookie": cookie, "X-CSRF-Token": csrf})
    assert status == 200 and body["live"] == "green"
    # A forged cookie is refused.
    forged = cookie.replace("admin", "read_only") if "admin" in cookie else cookie + "0"
    assert request(t, "GET", "/v1/state", headers={"Cookie": forged})[0] == 401
    # The read-only token, as a session or as a bearer token, reads but changes nothing.
    ro_cookie, ro_csrf, _ = login(t, RO_TOKEN)
    assert request(t, "GET", "/v1/state", headers={"Cookie": ro_cookie})[0] == 200
    status, body, _ = request(t, "POST", "/v1/switch", {"pool": "blue"}, headers={"Cookie": ro_cookie, "X-CSRF-Token": ro_csrf})
    assert (status, body["code"]) == (403, "read_only")
    status, body, _ = request(t, "PUT", "/v1/weights", {"weights": {"blue": 50, "green": 50}}, headers={"Authorization": "Bearer " + RO_TOKEN})
    assert (status, body["code"]) == (403, "read_only")
    assert request(t, "GET", "/metrics", headers={"Authorization": "Bearer " + RO_TOKEN})[0] == 200
    # Logging out ends the session.
    assert request(t, "DELETE", "/v1/session", headers={"Cookie": cookie, "X-CSRF-Token": csrf})[0] == 200
    assert request(t, "GET", "/v1/state", headers={"Cookie": cookie})[0] == 401
    # The dashboard needs a TCP admin address; a TCP address still needs its token file.
    bad = tempfile.mkdtemp()
    with open(os.path.join(bad, "t.yaml"), "w") as f:
        f.write('listeners: [{ address: "127.0.0.1:0" }]\nadmin: { dashboard: true }\npools: { blue: { endpoints: ["127.0.0.1:1"] } }\n')
    out = run_cli("check-config", os.path.join(bad, "t.yaml"))
    assert out.returncode == 1 and "admin.dashboard" in out.stderr


# ---- the browser ----

def chromium_paths():
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None)
    return browser, driver


@pytest.fixture
def browser(cleanup):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    binary, driver_path = chromium_paths()
    if not binary or not driver_path:
        pytest.skip("chromium and chromium-driver are installed by make test-deps")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1600",
                "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-default-apps", "--disable-extensions", f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    d = webdriver.Chrome(options=options, service=Service(driver_path))
    cleanup.append(type("Quit", (), {"stop": lambda self: d.quit()})())
    return d


def by_css(d, css):
    from selenium.webdriver.common.by import By
    return d.find_elements(By.CSS_SELECTOR, css)


def until(d, predicate, timeout=10, what="the page"):
    """Waits for the condition; the page re-renders its tables every refresh, so an element
    found a moment ago may be gone (stale): that is asked again."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(d, timeout, poll_frequency=0.05, ignored_exceptions=[StaleElementReferenceException, IndexError]).until(
        lambda _: predicate(), message=f"waiting for {what}")


def click(d, css):
    """Clicks the first element matching `css`, finding it again if a re-render replaced it."""
    from selenium.common.exceptions import StaleElementReferenceException

    def attempt():
        try:
            by_css(d, css)[0].click()
            return True
        except StaleElementReferenceException:
            return False
    until(d, attempt, what=f"a click on {css}")


def text(d, element_id):
    """The element's text; the page re-renders every 2 s, so an element found a moment before it
    was replaced is found again."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    for _ in range(20):
        try:
            return d.find_element(By.ID, element_id).text
        except StaleElementReferenceException:
            continue
    return d.find_element(By.ID, element_id).text


def open_and_log_in(d, t, token=TOKEN):
    from selenium.webdriver.common.by import By
    d.get(f"http://127.0.0.1:{t.admin_port}/")
    until(d, lambda: d.find_element(By.ID, "login").is_displayed(), what="the login form")
    d.find_element(By.ID, "token").send_keys(token)
    d.find_element(By.CSS_SELECTOR, "#login-form button").click()
    until(d, lambda: "generation" in text(d, "summary"), what="the state after login")


def confirm(d, expect_in_text):
    from selenium.webdriver.common.by import By
    until(d, lambda: d.find_element(By.ID, "confirm").is_displayed(), what="the confirmation")
    shown = d.find_element(By.ID, "confirm-text").text
    assert expect_in_text in shown, shown
    d.find_element(By.ID, "confirm-ok").click()
    return shown


def screenshot(d, name):
    """With TURNOUT_SCREENSHOTS=DIR, keeps a screenshot for README (docs/images is where they live)."""
    target = os.environ.get("TURNOUT_SCREENSHOTS")
    if target:
        os.makedirs(target, exist_ok=True)
        d.save_screenshot(os.path.join(target, name))


def served(t, n):
    c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
    out = Counter()
    for _ in range(n):
        c.request("GET", "/")
        r = c.getresponse()
        r.read()
        out[r.getheader("X-Served-By")] += 1
    return out


def check_browser_logs(d, t, expected_statuses=()):
    """No console error (apart from the refusals a test provoked on purpose, which Chromium logs
    as failed loads), and no request to any host but Turnout's admin address."""
    errors = [e for e in d.get_log("browser") if e["level"] == "SEVERE"
              and not any(f"status of {s} " in e["message"] for s in expected_statuses)]
    hosts = set()
    for entry in d.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            url = message["params"]["request"]["url"]
            # chrome:// and data: URLs are the browser's own, not requests to a host.
            if urlsplit(url).scheme in ("http", "https", "ws", "wss"):
                hosts.add(urlsplit(url).netloc)
    return errors, hosts


def test_the_page_shows_live_state_and_changes_weights_with_confirmation(cleanup, browser):
    from selenium.webdriver.common.by import By
    t = dashboard_turnout(cleanup)
    d = browser
    open_and_log_in(d, t)
    until(d, lambda: {r.get_attribute("data-pool") for r in by_css(d, "#pools tbody tr")} == {"blue", "green"}, what="both pools")
    assert len(by_css(d, "#endpoints tbody tr")) == 2
    until(d, lambda: by_css(d, "#endpoints tbody tr .health")[0].text == "healthy", what="endpoint health")
    assert "admin" in text(d, "role")
    # A switch from the CLI shows on the open page without a reload (the event stream).
    started = time.monotonic()
    assert run_cli("switch", "green", "--admin", t.admin_socket).returncode == 0
    until(d, lambda: "live green" in text(d, "summary"), timeout=5, what="the CLI's switch on the page")
    print(f"CLI switch visible on the page after {time.monotonic() - started:.3f} s")
    # A weights change made on the page, after its confirmation, takes effect.
    for pool, value in (("blue", "70"), ("green", "30")):
        box = d.find_element(By.ID, f"weight-{pool}")
        box.clear()
        box.send_keys(value)
    d.find_element(By.CSS_SELECTOR, "#weights-form button[type=submit]").click()
    shown = confirm(d, "blue=0 green=100 → blue=70 green=30")
    until(d, lambda: admin_call(t, "GET", "/v1/state")[1]["weights"] == {"blue": 70, "green": 30}, what="the new weights")
    assert served(t, 100) == Counter({"blue": 70, "green": 30})
    until(d, lambda: by_css(d, "#pools tbody tr[data-pool=blue] .set")[0].text == "70%", what="the set weight on the page")
    until(d, lambda: by_css(d, "#pools tbody tr[data-pool=blue] .observed")[0].text not in ("–", ""), timeout=15,
          what="the observed share")
    screenshot(d, "dashboard.png")
    # A stale page: the confirmation shows generation G; a change made elsewhere meanwhile makes it 412.
    d.find_element(By.ID, "rollback").click()
    until(d, lambda: d.find_element(By.ID, "confirm").is_displayed(), what="the rollback confirmation")
    assert run_cli("weights", "blue=50", "green=50", "--admin", t.admin_socket).returncode == 0
    d.find_element(By.ID, "confirm-ok").click()
    until(d, lambda: "412" in text(d, "error") and "generation" in text(d, "error"), what="the 412 text")
    assert admin_call(t, "GET", "/v1/state")[1]["weights"] == {"blue": 50, "green": 50}
    # Draining the only endpoint of a pool that carries traffic: the page shows the 409 text.
    click(d, "#endpoints tbody tr[data-pool=blue] button")
    confirm(d, "Drain ")
    until(d, lambda: "409 last_endpoint" in text(d, "error"), what="the 409 text")
    # With blue out of rotation (weights from the CLI), the drain goes through.
    assert run_cli("switch", "green", "--admin", t.admin_socket).returncode == 0
    until(d, lambda: "live green" in text(d, "summary"), what="the switch")
    click(d, "#endpoints tbody tr[data-pool=blue] button")
    confirm(d, "Drain ")
    until(d, lambda: admin_call(t, "GET", "/v1/state")[1]["pools"]["blue"]["endpoints"][0]["state"] == "draining", what="the drain")
    until(d, lambda: by_css(d, "#endpoints tbody tr[data-pool=blue] .state")[0].text == "draining", what="draining on the page")
    errors, hosts = check_browser_logs(d, t, expected_statuses=(412, 409))
    assert errors == [], errors
    assert hosts == {f"127.0.0.1:{t.admin_port}"}, hosts


def test_a_ramp_advances_and_rolls_back_on_the_page(cleanup, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    fail = os.path.join(tempfile.mkdtemp(), "fail")
    blue, green = Upstream("blue"), Upstream("green", fail_file=fail)
    cleanup.extend([blue, green])
    t = dashboard_turnout(cleanup, pools={"blue": [blue.address], "green": [green.address]})
    d = browser
    open_and_log_in(d, t)
    stop = threading.Event()

    def load():
        c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
        while not stop.is_set():
            try:
                c.request("GET", "/")
                c.getresponse().read()
            except (OSError, http.client.HTTPException):
                c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)

    th = threading.Thread(target=load)
    th.start()
    try:
        Select(d.find_element(By.ID, "ramp-pool")).select_by_value("green")
        for field, value in (("ramp-steps", "10,20,50,100"), ("ramp-interval", "2s"), ("ramp-error", "0.05"), ("ramp-p99", "")):
            box = d.find_element(By.ID, field)
            box.clear()
            if value:
                box.send_keys(value)
        d.find_element(By.CSS_SELECTOR, "#ramp-form button[type=submit]").click()
        confirm(d, "Start a ramp of green through 10, 20, 50, 100%")
        until(d, lambda: "step 1 of 4" in text(d, "ramp-status"), what="the ramp's first step")
        until(d, lambda: "step 2 of 4" in text(d, "ramp-status"), timeout=15, what="the timeline advancing")
        assert by_css(d, ".steps li.passed"), "the first step shows its verdict"
        screenshot(d, "dashboard-ramp.png")
        with open(fail, "w") as f:
            f.write("0.5")
        until(d, lambda: "rolled_back" in text(d, "ramp-status"), timeout=20, what="the rollback")
        reason = text(d, "ramp-reason")
        assert "Reason:" in reason and "error rate" in reason, reason
        screenshot(d, "dashboard-rollback.png")
    finally:
        stop.set()
        th.join()
    errors, _ = check_browser_logs(d, t)
    assert errors == [], errors


def test_unhealthy_endpoints_and_the_lost_connection_banner(cleanup, browser):
    from selenium.webdriver.common.by import By
    blue, green = Upstream("blue"), Upstream("green")
    cleanup.extend([blue, green])
    t = dashboard_turnout(cleanup, pools={"blue": [blue.address], "green": [green.address]})
    d = browser
    open_and_log_in(d, t)
    until(d, lambda: [e.text for e in by_css(d, "#endpoints .health")] == ["healthy", "healthy"], what="both healthy")
    green.kill()
    until(d, lambda: by_css(d, "#endpoints tbody tr[data-pool=green] .health")[0].text == "unhealthy", what="green unhealthy")
    until(d, lambda: "failed" in by_css(d, "#endpoints tbody tr[data-pool=green] td")[3].text, what="the failed probe's detail")
    t.stop()
    until(d, lambda: d.find_element(By.ID, "banner").is_displayed(), what="the lost-connection banner")
    # Back with the same tokens: the signed session cookie still holds, the page recovers by itself.
    t.start()
    until(d, lambda: not d.find_element(By.ID, "banner").is_displayed(), timeout=20, what="the page to recover")
    until(d, lambda: "generation" in text(d, "summary"), what="the state again")
    assert d.find_element(By.ID, "main").is_displayed()


def test_the_read_only_token_sees_the_page_without_actions(cleanup, browser):
    t = dashboard_turnout(cleanup)
    d = browser
    open_and_log_in(d, t, token=RO_TOKEN)
    assert "read-only" in text(d, "role")
    until(d, lambda: by_css(d, "#pools tbody tr button"), what="the pool rows")
    assert all(not b.is_enabled() for b in by_css(d, "button.action"))
    # Forcing a request from the page's own session is refused by the server as well.
    result = d.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch('/v1/session').then(r => r.json()).then(s => fetch('/v1/switch', {method: 'POST',
            headers: {'Content-Type': 'application/json', 'X-CSRF-Token': s.csrf}, body: '{"pool":"green"}'}))
          .then(r => done(r.status));""")
    assert result == 403
    # A phone's width: nothing but the tables' own scroll boxes is wider than the screen.
    d.set_window_size(390, 844)
    until(d, lambda: d.execute_script("return document.documentElement.scrollWidth <= window.innerWidth"),
          what="the page to fit a narrow screen")
    screenshot(d, "dashboard-phone.png")


def test_a_cross_site_form_post_with_the_session_cookie_is_refused(cleanup, browser):
    """Another page (here on another port of the same host, so the browser sends the SameSite
    cookie along) posts a switch with the logged-in user's cookie: without the CSRF token it is
    refused and nothing changes."""
    import http.server
    t = dashboard_turnout(cleanup)
    d = browser
    open_and_log_in(d, t)
    attack = (f'<!doctype html><form id="f" method="POST" action="http://127.0.0.1:{t.admin_port}/v1/switch" enctype="text/plain">'
              '<input name=\'{"pool":"green","x":"\' value=\'"}\'></form>'
              '<script>document.getElementById("f").submit()</script>').encode()

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(attack)))
            self.end_headers()
            self.wfile.write(attack)

        def log_message(self, *args):
            pass

    # Threaded: an idle connection the browser opened ahead of need must not hold up shutdown.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    server.daemon_threads = True
    th = threading.Thread(target=server.serve_forever, daemon=True)
    th.start()
    cleanup.append(type("Stop", (), {"stop": lambda self: server.shutdown()})())
    d.get(f"http://127.0.0.1:{server.server_address[1]}/")
    until(d, lambda: "csrf_required" in d.page_source or "unsupported_media_type" in d.page_source, what="the refusal")
    assert "csrf_required" in d.page_source
    assert admin_call(t, "GET", "/v1/state")[1]["live"] == "blue"
