extension DashboardAssets {
    static let html = #"""
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Turnout</title>
<link rel="stylesheet" href="/dashboard.css">
<link rel="icon" href="/favicon.svg" type="image/svg+xml">
<script src="/dashboard.js" defer></script>
</head>
<body>
<header>
  <h1>Turnout</h1>
  <span id="summary"></span>
  <span id="role" class="badge"></span>
  <button id="logout" type="button" hidden>Log out</button>
</header>
<div id="banner" class="banner" hidden>Connection to Turnout lost. Retrying…</div>
<div id="error" class="error" hidden></div>
<section id="login" hidden>
  <h2>Log in</h2>
  <form id="login-form">
    <label for="token">Admin token (or read-only token)</label>
    <input id="token" type="password" autocomplete="current-password" required>
    <button type="submit">Log in</button>
    <p id="login-error" class="error-text"></p>
  </form>
</section>
<main id="main" hidden>
  <section>
    <h2>Pools</h2>
    <table id="pools"><thead><tr><th>Pool</th><th>Set</th><th>Observed</th><th>Req/s</th><th>Errors</th><th></th></tr></thead><tbody></tbody></table>
    <form id="weights-form" class="actions">
      <span id="weight-inputs"></span>
      <button type="submit" class="action">Set weights</button>
      <button type="button" id="rollback" class="action">Roll back</button>
    </form>
  </section>
  <section>
    <h2>Traffic (last 5 minutes)</h2>
    <div id="charts"></div>
  </section>
  <section>
    <h2>Ramp</h2>
    <div id="ramp"></div>
    <div class="actions">
      <button type="button" id="ramp-pause" class="action">Pause</button>
      <button type="button" id="ramp-resume" class="action">Resume</button>
      <button type="button" id="ramp-abort" class="action">Abort</button>
    </div>
    <form id="ramp-form" class="actions">
      <label>Pool <select id="ramp-pool"></select></label>
      <label>Steps <input id="ramp-steps" value="1,5,25,50,100" size="14"></label>
      <label>Interval <input id="ramp-interval" value="30s" size="5"></label>
      <label>Max error rate <input id="ramp-error" value="0.01" size="5"></label>
      <label>Max p99 <input id="ramp-p99" value="500ms" size="6"></label>
      <label>Mirror first % <input id="ramp-mirror" value="" size="4" placeholder="off"></label>
      <button type="submit" class="action">Start ramp</button>
    </form>
  </section>
  <section>
    <h2>Endpoints</h2>
    <table id="endpoints"><thead><tr><th>Pool</th><th>Endpoint</th><th>Health</th><th>Last probe</th><th>State</th><th>In flight</th><th>Tunnels</th><th>Last request</th><th></th></tr></thead><tbody></tbody></table>
  </section>
  <section id="cluster-section" hidden>
    <h2>Replicas</h2>
    <table id="replicas"><thead><tr><th>Replica</th><th>Address</th><th>Applied</th><th>Stale</th><th>Last seen</th></tr></thead><tbody></tbody></table>
  </section>
  <section>
    <h2>Events</h2>
    <ol id="events"></ol>
  </section>
</main>
<dialog id="confirm">
  <form method="dialog">
    <p id="confirm-text"></p>
    <div class="actions">
      <button value="cancel" id="confirm-cancel">Cancel</button>
      <button value="ok" id="confirm-ok" class="action">Confirm</button>
    </div>
  </form>
</dialog>
</body>
</html>
"""#
}
