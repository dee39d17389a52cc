extension DashboardAssets {
    static let style = #"""
:root { --blue: #2563eb; --green: #16a34a; --bad: #dc2626; --warn: #d97706; --muted: #6b7280; --line: #e5e7eb; }
* { box-sizing: border-box; }
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #111827; background: #f9fafb; }
header { display: flex; flex-wrap: wrap; gap: 12px; align-items: center; padding: 10px 16px; background: #111827; color: #fff; }
header h1 { font-size: 18px; margin: 0; }
.badge { font-size: 12px; padding: 2px 8px; border-radius: 10px; background: #374151; }
main, #login { padding: 8px 16px 32px; max-width: 1200px; margin: 0 auto; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 8px 12px; margin: 12px 0; overflow-x: auto; }
h2 { font-size: 15px; margin: 4px 0 8px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line); white-space: nowrap; }
th { font-weight: 600; color: var(--muted); font-size: 12px; }
.banner { background: var(--bad); color: #fff; padding: 8px 16px; font-weight: 600; }
.error { background: #fef2f2; color: var(--bad); border: 1px solid var(--bad); padding: 8px 16px; margin: 8px 16px; border-radius: 6px; }
.error-text { color: var(--bad); }
.actions { display: flex; flex-wrap: wrap; gap: 8px; align-items: center; margin: 8px 0; }
button { font: inherit; padding: 4px 10px; border: 1px solid #9ca3af; border-radius: 6px; background: #fff; cursor: pointer; }
button.action { border-color: var(--blue); color: var(--blue); }
button:disabled { opacity: .4; cursor: default; }
input, select { font: inherit; padding: 3px 6px; }
.healthy { color: var(--green); font-weight: 600; }
.unhealthy { color: var(--bad); font-weight: 600; }
.unknown { color: var(--muted); }
.live { font-weight: 700; }
.charts-row { display: flex; flex-wrap: wrap; gap: 8px; }
.chart { border: 1px solid var(--line); border-radius: 6px; }
.chart text { font-size: 10px; fill: var(--muted); }
.chart .series { fill: none; stroke: var(--blue); stroke-width: 1.5; }
.chart .limit { stroke: var(--bad); stroke-dasharray: 4 3; }
.steps { display: flex; flex-wrap: wrap; gap: 6px; list-style: none; padding: 0; }
.steps li { border: 1px solid var(--line); border-radius: 6px; padding: 4px 8px; }
.steps li.current { border-color: var(--blue); background: #eff6ff; }
.steps li.breached, .steps li.health { border-color: var(--bad); background: #fef2f2; }
.steps li.passed { border-color: var(--green); }
#events { font-family: ui-monospace, monospace; font-size: 12px; max-height: 320px; overflow-y: auto; padding-left: 20px; }
dialog { border: 1px solid var(--line); border-radius: 8px; max-width: 90vw; }
@media (max-width: 640px) { th, td { padding: 3px 4px; } header { padding: 8px; } main { padding: 4px 6px; } }
"""#
}
