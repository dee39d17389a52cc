/// The dashboard's page, style sheet and script, compiled into the binary (no CDN, no build step,
/// no third-party code). Served on the TCP admin address when `admin.dashboard` is true, with a
/// strict Content-Security-Policy: the script and style come from these files only.
enum DashboardAssets {
    static let contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        + "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

    /// Two tracks parting: the page's icon (browsers ask for one; without it they log a 401).
    static let icon = ##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><path d="M2 15 L8 8 L8 1 M8 8 L14 15" stroke="#2563eb" stroke-width="2" fill="none"/></svg>"##

    /// The answer for an asset path, or nil when `path` is not one.
    static func asset(_ path: String) -> AdminResponse? {
        let (body, type): (String, String)
        switch path {
        case "/", "/index.html": (body, type) = (html, "text/html; charset=utf-8")
        case "/dashboard.js": (body, type) = (script, "text/javascript; charset=utf-8")
        case "/dashboard.css": (body, type) = (style, "text/css; charset=utf-8")
        case "/favicon.svg", "/favicon.ico": (body, type) = (icon, "image/svg+xml")
        default: return nil
        }
        var r = AdminResponse(status: 200, body: "")
        r.raw = Array(body.utf8)
        r.headers = [("Content-Type", type), ("Content-Security-Policy", contentSecurityPolicy),
                     ("Referrer-Policy", "no-referrer"), ("Cache-Control", "no-cache")]
        return r
    }
}
