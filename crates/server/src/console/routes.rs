//! The routes and models page: per endpoint its circuit breaker and load,
//! per endpoint and route the last hour's calls, error rate, latency
//! P50/P95/P99 and today's cost, per tenant today's cost — with per-minute
//! charts drawn by the server as SVG (no script, no charting library).

use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::Response;
use baton_metrics::live::{Kind, MinuteView, SeriesView};
use baton_routing::{BreakerSnapshot, BreakerState};
use baton_runtime::RuntimeHandle;

use super::html::{self, esc, respond};
use crate::console_session::ConsoleSignIn;

const W: f64 = 180.0;
const H: f64 = 36.0;

fn ms(v: Option<f64>) -> String {
    match v {
        None => "—".into(),
        Some(v) if v < 10.0 => format!("{v:.1} ms"),
        Some(v) if v < 10_000.0 => format!("{v:.0} ms"),
        Some(v) => format!("{:.1} s", v / 1000.0),
    }
}

fn usd(v: f64) -> String {
    if v == 0.0 {
        "$0".into()
    } else if v < 0.01 {
        format!("${v:.6}")
    } else {
        format!("${v:.2}")
    }
}

fn percent(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

/// Calls per minute as bars (errors in red over them) and the minute's P95
/// latency as a line, over the last hour; the numbers are in the SVG's
/// title for screen readers and on hover.
pub(crate) fn chart(name: &str, minutes: &[MinuteView]) -> String {
    let n = minutes.len().max(1) as f64;
    let bar = W / n;
    let max_calls = minutes.iter().map(|m| m.calls).max().unwrap_or(0).max(1) as f64;
    let max_p95 = minutes
        .iter()
        .filter_map(|m| m.p95_ms)
        .fold(0.0f64, f64::max)
        .max(1.0);
    let mut bars = String::new();
    let mut line = Vec::new();
    for (i, m) in minutes.iter().enumerate() {
        let x = i as f64 * bar;
        if m.calls > 0 {
            let h = (m.calls as f64 / max_calls) * (H - 2.0);
            bars.push_str(&format!(
                r#"<rect class="calls" x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}"/>"#,
                H - h,
                (bar - 0.5).max(0.5)
            ));
        }
        if m.errors > 0 {
            let h = (m.errors as f64 / max_calls) * (H - 2.0);
            bars.push_str(&format!(
                r#"<rect class="errors" x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}"/>"#,
                H - h,
                (bar - 0.5).max(0.5)
            ));
        }
        if let Some(p) = m.p95_ms {
            line.push(format!(
                "{:.1},{:.1}",
                x + bar / 2.0,
                H - 1.0 - (p / max_p95) * (H - 2.0)
            ));
        }
    }
    let total: u64 = minutes.iter().map(|m| m.calls).sum();
    let errors: u64 = minutes.iter().map(|m| m.errors).sum();
    let title = format!(
        "{name}, last hour: {total} calls, {errors} errors; bars are calls per minute (errors in red), the line the minute's P95 latency (peak {})",
        ms(Some(max_p95)).trim()
    );
    let path = if line.len() > 1 {
        format!(r#"<polyline class="p95" points="{}"/>"#, line.join(" "))
    } else {
        String::new()
    };
    format!(
        r#"<svg class="chart" role="img" viewBox="0 0 {W} {H}" width="{W}" height="{H}" aria-label="{t}"><title>{t}</title><line class="axis" x1="0" y1="{H}" x2="{W}" y2="{H}"/>{bars}{path}</svg>"#,
        t = esc(&title)
    )
}

fn stats_cells(s: Option<&SeriesView>) -> String {
    match s {
        None => r#"<td>0</td><td>—</td><td>—</td><td>—</td><td>—</td>"#.into(),
        Some(s) => format!(
            "<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
            s.calls,
            if s.calls == 0 {
                "—".into()
            } else {
                percent(s.error_rate())
            },
            ms(s.p50_ms),
            ms(s.p95_ms),
            ms(s.p99_ms),
        ),
    }
}

fn breaker_cell(b: Option<&BreakerSnapshot>) -> String {
    let Some(b) = b else {
        return "<td>—</td>".into();
    };
    let (class, label) = match b.state {
        BreakerState::Closed => ("ok", "closed"),
        BreakerState::HalfOpen => ("warn", "half-open"),
        BreakerState::Open => ("bad", "open"),
    };
    let since = b
        .opened_at_unix_ms
        .map(|t| format!(", opened {}", esc(&html::time(t))))
        .unwrap_or_default();
    format!(
        r#"<td><span class="state {class}">{label}</span><br><small>{} consecutive failures, {} of the window failed{since}</small></td>"#,
        b.consecutive_failures,
        percent(b.error_rate)
    )
}

fn find<'a>(list: &'a [SeriesView], name: &str) -> Option<&'a SeriesView> {
    list.iter().find(|s| s.name == name)
}

fn chart_cell(name: &str, s: Option<&SeriesView>) -> String {
    match s {
        Some(s) => format!("<td>{}</td>", chart(name, &s.minutes)),
        None => "<td><small>no calls in the last hour</small></td>".into(),
    }
}

/// `GET /ui/routes`: every endpoint and route (server-wide), and today's
/// cost per tenant (an operator: its own tenant's).
pub(crate) async fn page(
    State(rt): State<RuntimeHandle>,
    Extension(sign_in): Extension<ConsoleSignIn>,
) -> Response {
    let router = rt.router();
    let live = baton_metrics::metrics().live();
    let ep_live = live.snapshot(Kind::Endpoint);
    let route_live = live.snapshot(Kind::Route);
    let breakers = router.breakers();
    let mut endpoints = String::new();
    for e in router.endpoint_stats() {
        let s = find(&ep_live, &e.endpoint);
        endpoints.push_str(&format!(
            r#"<tr data-endpoint="{name}"><th scope="row">{name}</th>{breaker}<td>{} / {}</td>{stats}<td>{cost}</td>{chart}</tr>"#,
            e.in_flight,
            e.queued,
            name = esc(&e.endpoint),
            breaker = breaker_cell(breakers.iter().find(|b| b.endpoint == e.endpoint)),
            stats = stats_cells(s),
            cost = usd(s.map(|s| s.cost_today_usd).unwrap_or(0.0)),
            chart = chart_cell(&e.endpoint, s),
        ));
    }
    let mut routes = String::new();
    for r in router.routes() {
        let s = find(&route_live, &r.name);
        let budget = match r.budget_usd {
            Some(b) => format!("{} of {}", usd(r.spent_usd), usd(b)),
            None => format!("{} (no budget)", usd(r.spent_usd)),
        };
        routes.push_str(&format!(
            r#"<tr data-route="{name}"><th scope="row">{name}</th><td>{strategy}</td><td>{endpoints}</td>{stats}<td>{cost}</td><td>{budget}</td>{chart}</tr>"#,
            name = esc(&r.name),
            strategy = esc(&r.strategy),
            endpoints = esc(&r.endpoints.join(", ")),
            stats = stats_cells(s),
            cost = usd(s.map(|s| s.cost_today_usd).unwrap_or(0.0)),
            chart = chart_cell(&r.name, s),
        ));
    }
    let tenants: String = live
        .snapshot(Kind::Tenant)
        .iter()
        .filter(|t| sign_in.who.sees_tenant(&t.name))
        .map(|t| {
            format!(
                r#"<tr data-tenant="{name}"><th scope="row">{name}</th><td>{}</td></tr>"#,
                usd(t.cost_today_usd),
                name = esc(&t.name)
            )
        })
        .collect();
    let tenants = if tenants.is_empty() {
        r#"<tr><td colspan="2" class="empty">Nothing spent today.</td></tr>"#.into()
    } else {
        tenants
    };
    let stats_head = r#"<th scope="col">Calls</th><th scope="col">Error rate</th><th scope="col">P50</th><th scope="col">P95</th><th scope="col">P99</th>"#;
    let body = format!(
        r#"<h1>Routes and models</h1><p>Calls, errors and latency over the last hour (since the server started, if later), cost since 00:00 UTC, from this server's own measurements; Prometheus has the longer history at <code>/metrics</code>.</p>
<section aria-labelledby="eps"><h2 id="eps">Endpoints</h2><div class="scroll"><table class="list"><caption>Every model endpoint: its circuit breaker, load and attempts</caption><thead><tr><th scope="col">Endpoint</th><th scope="col">Breaker</th><th scope="col">In flight / queued</th>{stats_head}<th scope="col">Cost today</th><th scope="col">Last hour</th></tr></thead><tbody>{endpoints}</tbody></table></div></section>
<section aria-labelledby="rts"><h2 id="rts">Routes</h2><div class="scroll"><table class="list"><caption>Every route: routed calls, fallbacks and retries included</caption><thead><tr><th scope="col">Route</th><th scope="col">Strategy</th><th scope="col">Endpoints</th>{stats_head}<th scope="col">Cost today</th><th scope="col">Budget spent</th><th scope="col">Last hour</th></tr></thead><tbody>{routes}</tbody></table></div></section>
<section aria-labelledby="tns"><h2 id="tns">Cost today by tenant</h2><table class="list narrow"><caption>Model answers' cost since 00:00 UTC</caption><thead><tr><th scope="col">Tenant</th><th scope="col">Cost</th></tr></thead><tbody>{tenants}</tbody></table></section>"#
    );
    respond(StatusCode::OK, html::page("Routes", Some(&sign_in), &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_draws_each_busy_minute_and_names_its_numbers() {
        let minutes: Vec<MinuteView> = (0..60)
            .map(|i| MinuteView {
                start_unix_ms: i * 60_000,
                calls: if i % 2 == 0 { 4 } else { 0 },
                errors: u64::from(i == 10),
                cost_usd: 0.0,
                p95_ms: (i % 2 == 0).then_some(20.0 + i as f64),
            })
            .collect();
        let svg = chart("fast <b>", &minutes);
        assert_eq!(svg.matches(r#"class="calls""#).count(), 30);
        assert_eq!(svg.matches(r#"class="errors""#).count(), 1);
        assert!(svg.contains("120 calls, 1 errors"), "{svg}");
        assert!(svg.contains("fast &lt;b&gt;") && !svg.contains("<b>"));
        assert!(svg.contains("<polyline"));
    }
}
