//! The console's pages, server-rendered with maud. States are written out in words with a
//! symbol (never colour alone); `data-*` attributes tell `console.js` what to update live.

use chrono::{DateTime, Utc};
use maud::{html, Markup, DOCTYPE};

use super::Admin;
use crate::store::accounts::CloudAccount;
use crate::store::attempts::Attempt;
use crate::store::console::{LastHour, TicketFilter, TicketLine};
use crate::store::workers::WorkerRow;
use crate::store::{Ticket, TicketState};

const STATES: [TicketState; 5] = [
    TicketState::Queued,
    TicketState::Running,
    TicketState::Complete,
    TicketState::Error,
    TicketState::Cancelled,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Cancel,
    Retry,
    Delete,
}

impl From<Action> for crate::api::admin::TicketAction {
    fn from(action: Action) -> Self {
        match action {
            Action::Cancel => Self::Cancel,
            Action::Retry => Self::Retry,
            Action::Delete => Self::Delete,
        }
    }
}

impl Action {
    pub fn parse(text: &str) -> Option<Action> {
        match text {
            "cancel" => Some(Action::Cancel),
            "retry" => Some(Action::Retry),
            "delete" => Some(Action::Delete),
            _ => None,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Action::Cancel => "cancel",
            Action::Retry => "retry",
            Action::Delete => "delete",
        }
    }
    fn question(self, id: i64) -> String {
        match self {
            Action::Cancel => format!("Cancel ticket {id}? A running upload stops and its partial image is deleted."),
            Action::Retry => format!("Queue ticket {id} again?"),
            Action::Delete => format!("Delete the record of ticket {id}? A running upload is cancelled first; a published image stays in the cloud."),
        }
    }
    /// The states in which the action is offered.
    fn offered_in(self) -> &'static str {
        match self {
            Action::Cancel => "queued running",
            Action::Retry => "error cancelled",
            Action::Delete => "queued running complete error cancelled",
        }
    }
}

fn symbol(state: &str) -> &'static str {
    match state {
        "queued" => "◷",
        "running" => "▶",
        "complete" => "✔",
        "error" => "✖",
        "cancelled" => "⊘",
        "partial" => "◐",
        _ => "?",
    }
}

pub(super) fn state_badge(state: &str) -> Markup {
    html! {
        span class={"state state-" (state)} data-field="state" data-state=(state) {
            span aria-hidden="true" { (symbol(state)) } " " (state)
        }
    }
}

fn time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

pub(super) fn bytes(n: i64) -> String {
    let n = n as f64;
    if n >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", n / 1024f64.powi(3))
    } else if n >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", n / 1024f64.powi(2))
    } else if n >= 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else {
        format!("{n} B")
    }
}

/// A page of the console; `after` is the event id the live feed resumes from.
pub(super) fn layout(
    title: &str,
    page: &str,
    admin: Option<&Admin>,
    after: Option<i64>,
    body: Markup,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · pimage console" }
                link rel="icon" href="/console/assets/favicon.svg" type="image/svg+xml";
                link rel="stylesheet" href="/console/assets/console.css";
                script src="/console/assets/console.js" defer {}
            }
            body data-page=(page) data-after=[after] {
                header {
                    span.brand { "pimage console" }
                    @if let Some(admin) = admin {
                        nav {
                            a href="/console" aria-current=[(page == "overview").then_some("page")] { "Overview" }
                            a href="/console/tickets" aria-current=[matches!(page, "tickets" | "ticket" | "group").then_some("page")] { "Tickets" }
                            a href="/console/workers" aria-current=[(page == "workers").then_some("page")] { "Workers" }
                            a href="/console/accounts" aria-current=[(page == "accounts").then_some("page")] { "Accounts" }
                        }
                        form.logout method="post" action="/console/logout" {
                            input type="hidden" name="csrf" value=(admin.csrf);
                            span { (admin.login) }
                            button type="submit" { "Log out" }
                        }
                        span #live data-live="connecting" { "live: connecting" }
                    }
                }
                main { (body) }
            }
        }
    }
}

pub fn error_page(status: axum::http::StatusCode, message: &str) -> Markup {
    layout(
        status.canonical_reason().unwrap_or("Error"),
        "error",
        None,
        None,
        html! {
            h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
            p.message role="alert" { (message) }
            p { a href="/console" { "Back to the console" } }
        },
    )
}

pub fn login(csrf: &str, problem: Option<&str>) -> Markup {
    layout(
        "Log in",
        "login",
        None,
        None,
        html! {
            h1 { "Log in" }
            p { "For administrators of this pimage." }
            @if let Some(problem) = problem {
                p.message role="alert" { (problem) }
            }
            form.login method="post" action="/console/login" {
                input type="hidden" name="csrf" value=(csrf);
                label { "Login " input name="login" autocomplete="username" required; }
                label { "Password " input name="password" type="password" autocomplete="current-password" required; }
                button type="submit" { "Log in" }
            }
        },
    )
}

pub fn overview(
    admin: &Admin,
    after: i64,
    counts: &[(String, i64, bool)],
    running: &[(String, i64, u32)],
    queue: Result<(u32, u32), String>,
    outbox: (i64, f64),
    hour: &LastHour,
) -> Markup {
    let count_of = |s: &str| {
        counts
            .iter()
            .find(|(n, ..)| n == s)
            .map_or((0, true), |(_, c, exact)| (*c, *exact))
    };
    layout(
        "Overview",
        "overview",
        Some(admin),
        Some(after),
        html! {
            h1 { "Overview" }
            section {
                h2 { "Tickets by state" }
                ul.cards {
                    @for state in STATES {
                        li {
                            a href={"/console/tickets?state=" (state.as_str())} {
                                (state_badge(state.as_str()))
                                @let (count, exact) = count_of(state.as_str());
                                strong data-count=(state.as_str())
                                    title=[(!exact).then_some("about: estimated from the table's statistics")] { (count) }
                            }
                        }
                    }
                }
            }
            section {
                h2 { "Uploads running per cloud" }
                @if running.is_empty() {
                    p { "No upload is running." }
                } @else {
                    table {
                        thead { tr { th { "Cloud (Glance host)" } th { "Running" } th { "Limit" } } }
                        tbody {
                            @for (cloud, n, limit) in running {
                                tr {
                                    td { (cloud) }
                                    td { (n) }
                                    td { (limit) }
                                }
                            }
                        }
                    }
                }
            }
            section {
                h2 { "Queue and outbox" }
                dl {
                    @match &queue {
                        Ok((depth, dead)) => {
                            dt { "Messages waiting in RabbitMQ" } dd #queue-depth { (depth) }
                            dt { "Dead letters" } dd #dead-letters { (dead) }
                        }
                        Err(why) => { dt { "RabbitMQ" } dd { (why) } }
                    }
                    dt { "Outbox: tickets not yet handed to RabbitMQ" } dd { (outbox.0) }
                    dt { "Outbox lag (oldest)" } dd { (format!("{:.1} s", outbox.1)) }
                }
            }
            section {
                h2 { "Last hour" }
                dl {
                    dt { "Complete" } dd { (hour.complete) }
                    dt { "Failed" } dd { (hour.error) }
                    dt { "Cancelled" } dd { (hour.cancelled) }
                    dt { "Bytes sent" } dd { (bytes(hour.bytes_sent)) " (" (bytes(hour.bytes_sent / 3600)) "/s on average)" }
                }
            }
        },
    )
}

pub fn ticket_list(
    admin: &Admin,
    after: i64,
    filter: &TicketFilter,
    lines: &[TicketLine],
    more: bool,
) -> Markup {
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    let date = |t: &Option<DateTime<Utc>>| {
        t.map(|t| t.format("%Y-%m-%dT%H:%M").to_string())
            .unwrap_or_default()
    };
    let mut next = url::form_urlencoded::Serializer::new(String::new());
    if let Some(s) = filter.state {
        next.append_pair("state", s.as_str());
    }
    for (name, value) in [("user", &filter.user), ("cloud", &filter.cloud)] {
        if let Some(v) = value {
            next.append_pair(name, v);
        }
    }
    if let Some(i) = filter.image_id {
        next.append_pair("image", &i.to_string());
    }
    for (name, value) in [("from", &filter.created_from), ("to", &filter.created_to)] {
        if let Some(t) = value {
            next.append_pair(name, &t.to_rfc3339());
        }
    }
    if let Some(last) = lines.last() {
        next.append_pair("before", &last.id.to_string());
    }
    let next = next.finish();
    layout(
        "Tickets",
        "tickets",
        Some(admin),
        Some(after),
        html! {
            h1 { "Tickets" }
            form.filters method="get" action="/console/tickets" {
                label { "State "
                    select name="state" {
                        option value="" { "any" }
                        @for s in STATES {
                            option value=(s.as_str()) selected[filter.state == Some(s)] { (s.as_str()) }
                        }
                    }
                }
                label { "User " input name="user" value=(opt(&filter.user)); }
                label { "Cloud (Keystone URL) " input name="cloud" value=(opt(&filter.cloud)); }
                label { "Image id " input name="image" inputmode="numeric" value=(filter.image_id.map(|i| i.to_string()).unwrap_or_default()); }
                label { "Created from " input name="from" type="datetime-local" value=(date(&filter.created_from)); }
                label { "to " input name="to" type="datetime-local" value=(date(&filter.created_to)); }
                button type="submit" { "Filter" }
                a href="/console/tickets" { "Clear" }
            }
            @if lines.is_empty() {
                p #no-tickets { "No ticket matches." }
            } @else {
                div.scroll {
                    table #tickets {
                        thead { tr { th { "Id" } th { "State" } th { "Progress" } th { "User" } th { "Image" } th { "Name" } th { "Cloud" } th { "Created" } th { "Message" } } }
                        tbody {
                            @for t in lines {
                                tr data-ticket=(t.id) {
                                    td { a href={"/console/tickets/" (t.id)} { (t.id) } }
                                    td { (state_badge(t.state.as_str())) }
                                    td { span data-field="percentage" { (t.percentage) } " %" }
                                    td { (t.owner_login) }
                                    td { (t.image_id) }
                                    td { (t.display_name) }
                                    td.cloud { (t.keystone_url) }
                                    td { (time(&t.created_at)) }
                                    td data-field="message" { (t.message) }
                                }
                            }
                        }
                    }
                }
            }
            nav.pages {
                @if filter.before_id.is_some() { a href="/console/tickets" { "← Newest" } }
                @if more { a #older href={"/console/tickets?" (next)} { "Older →" } }
            }
        },
    )
}

/// A line chart of bytes sent over time, as inline SVG (no script, no style attribute).
fn chart(points: &[(DateTime<Utc>, i64)], total: i64) -> Markup {
    let (w, h) = (600.0, 160.0);
    if points.len() < 2 {
        return html! { p { "No progress recorded yet." } };
    }
    let t0 = points[0].0.timestamp_millis() as f64;
    let t1 = (points[points.len() - 1].0.timestamp_millis() as f64).max(t0 + 1.0);
    let top = points
        .iter()
        .map(|p| p.1)
        .max()
        .unwrap_or(0)
        .max(total)
        .max(1) as f64;
    let line: Vec<String> = points
        .iter()
        .map(|(t, b)| {
            let x = (t.timestamp_millis() as f64 - t0) / (t1 - t0) * w;
            let y = h - (*b as f64) / top * h;
            format!("{x:.1},{y:.1}")
        })
        .collect();
    let seconds = (t1 - t0) / 1000.0;
    html! {
        figure {
            svg #chart viewBox={"0 0 " (w) " " (h)} role="img" aria-label={"bytes sent over " (format!("{seconds:.0}")) " s, up to " (bytes(top as i64))} {
                polyline points=(line.join(" ")) fill="none" stroke="currentColor" stroke-width="2" {}
                line x1="0" y1=(h) x2=(w) y2=(h) stroke="currentColor" stroke-width="1" {}
            }
            figcaption { "Bytes sent over " (format!("{seconds:.0}")) " s (top: " (bytes(top as i64)) ")" }
        }
    }
}

pub fn ticket(
    admin: &Admin,
    after: i64,
    t: &Ticket,
    tries: &[Attempt],
    points: &[(DateTime<Utc>, i64)],
) -> Markup {
    let state = t.state.as_str();
    layout(
        &format!("Ticket {}", t.id),
        "ticket",
        Some(admin),
        Some(after),
        html! {
            article #ticket data-ticket=(t.id) data-state=(state) {
                h1 { "Ticket " (t.id) " " (state_badge(state)) }
                p { progress data-field="progress" max="100" value=(t.percentage) { (t.percentage) " %" }
                    " " span data-field="percentage" { (t.percentage) } " % · "
                    span data-field="bytes" { (bytes(t.bytes_loaded)) } " of " (bytes(t.bytes_total)) }
                p.message data-field="message" { (t.message) }
                div.actions {
                    @for action in [Action::Cancel, Action::Retry, Action::Delete] {
                        form method="post" action={"/console/tickets/" (t.id) "/" (action.name())}
                             data-offered-in=(action.offered_in())
                             hidden[!action.offered_in().split(' ').any(|s| s == state)] {
                            input type="hidden" name="csrf" value=(admin.csrf);
                            button type="submit" name="action" value=(action.name()) { (action.name()) "…" }
                        }
                    }
                }
                dl.fields {
                    dt { "Name" } dd { (t.display_name) }
                    dt { "Owner" } dd { (t.owner_login) }
                    dt { "Image" } dd { (t.image_uri()) }
                    @if let Some(group) = t.group_id {
                        dt { "Group" } dd { a #group-link href={"/console/groups/" (group)} { "publication group " (group) } }
                    }
                    dt { "Cloud" } dd { (t.keystone_url) " · domain " (t.keystone_domain) " · project " (t.keystone_project) " · user " (t.cloud_login) }
                    dt { "Glance" } dd { (t.glance_url.as_deref().unwrap_or("(from the Keystone catalogue)")) }
                    dt { "Public" } dd { (if t.public_image { "yes" } else { "no" }) }
                    dt { "Glance image" } dd #glance data-src={"/console/tickets/" (t.id) "/glance"} {
                        (t.cloud_id.as_deref().unwrap_or("none yet"))
                        " " a href={"/console/tickets/" (t.id) "/glance"} { "(state)" }
                    }
                    dt { "Attempts (claims)" } dd { (t.attempts) }
                    dt { "Created" } dd { (time(&t.created_at)) }
                    dt { "Started" } dd { (t.started_at.as_ref().map(time).unwrap_or_default()) }
                    dt { "Finished" } dd { (t.finished_at.as_ref().map(time).unwrap_or_default()) }
                    dt { "Error" } dd data-field="error" { (t.error_message.as_deref().unwrap_or("")) }
                    dt { "Cloud's answer" } dd { (t.detailed_error_msg.as_deref().unwrap_or("")) }
                }
                h2 { "Bytes over time" }
                (chart(points, t.bytes_total))
                h2 { "Attempts" }
                @if tries.is_empty() {
                    p { "No attempt yet." }
                } @else {
                    ol.timeline {
                        @for a in tries {
                            li {
                                strong { "Attempt " (a.number) } " on " (a.worker) ": "
                                (time(&a.started_at))
                                @if let Some(end) = &a.ended_at { " → " (time(end)) }
                                " · " (a.outcome.as_deref().unwrap_or("running"))
                                " · " (bytes(a.bytes_sent)) " sent"
                                @if let Some(e) = &a.error { div.error { (e) } }
                            }
                        }
                    }
                }
                p.hint { "Reload the page for attempts that started since it was shown." }
            }
        },
    )
}

pub fn glance_fragment(cloud_id: Option<&str>, status: &str) -> Markup {
    html! {
        span #glance-state {
            (cloud_id.unwrap_or("none")) " · state: " strong { (status) }
        }
    }
}

pub fn confirm(admin: &Admin, t: &Ticket, action: Action) -> Markup {
    let subject = html! { "The ticket is " (state_badge(t.state.as_str())) ": " (t.display_name) };
    let at = format!("/console/tickets/{}", t.id);
    let yes = format!("Yes, {}", action.name());
    let action_url = format!("{at}/{}", action.name());
    confirm_page(
        admin,
        &action.question(t.id),
        subject,
        &action_url,
        &yes,
        &at,
    )
}

/// An action's confirmation: `question`, what it acts on, and a form posting `confirm=yes`
/// (with the session's CSRF token) to `action`; `back` leads away without acting.
pub(super) fn confirm_page(
    admin: &Admin,
    question: &str,
    subject: Markup,
    action: &str,
    yes: &str,
    back: &str,
) -> Markup {
    layout(
        "Confirm",
        "confirm",
        Some(admin),
        None,
        html! {
            h1 { "Please confirm" }
            p.message { (question) }
            p { (subject) }
            form method="post" action=(action) {
                input type="hidden" name="csrf" value=(admin.csrf);
                input type="hidden" name="confirm" value="yes";
                button type="submit" #confirm { (yes) }
                " "
                a href=(back) { "No, back" }
            }
        },
    )
}

pub fn workers(admin: &Admin, rows: &[WorkerRow]) -> Markup {
    layout(
        "Workers",
        "workers",
        Some(admin),
        None,
        html! {
            h1 { "Workers" }
            p { "Live worker processes (a heartbeat every 5 s), and every holder of a running ticket's lease." }
            div.scroll {
                table #workers {
                    thead { tr { th { "Worker" } th { "Host" } th { "PID" } th { "Version" } th { "Slots used" } th { "Current tickets" } th { "Last heartbeat" } } }
                    tbody {
                        @for w in rows {
                            tr data-worker=(w.worker) {
                                td { (w.worker) }
                                td data-field="host" { (w.host.as_deref().unwrap_or("?")) }
                                td data-field="pid" { (w.pid.map(|p| p.to_string()).unwrap_or_default()) }
                                td data-field="version" { (w.version.as_deref().unwrap_or("?")) }
                                td data-field="slots" {
                                    @match (w.slots_used, w.slots_total) {
                                        (Some(u), Some(t)) => (format!("{u} of {t}")),
                                        _ => "?",
                                    }
                                }
                                td data-field="tickets" {
                                    @for id in &w.tickets { a href={"/console/tickets/" (id)} { (id) } " " }
                                }
                                td data-field="beat" data-beat-at=[w.beat_at.map(|t| t.to_rfc3339())] {
                                    @match &w.beat_at { Some(t) => (time(t)), None => "no heartbeat (lease only)" }
                                }
                            }
                        }
                    }
                }
            }
            p #no-workers hidden[!rows.is_empty()] { "No worker is running." }
        },
    )
}

/// The cloud accounts users stored: never a password, sealed or not.
pub fn accounts(admin: &Admin, rows: &[CloudAccount]) -> Markup {
    layout(
        "Accounts",
        "accounts",
        Some(admin),
        None,
        html! {
            h1 { "Cloud accounts" }
            p { "Accounts users stored to publish with (hammr account create). Their passwords are sealed and never shown." }
            div.scroll {
                table #accounts {
                    thead { tr { th { "Id" } th { "Owner" } th { "Name" } th { "Keystone URL" } th { "Login" } th { "Created" } } }
                    tbody {
                        @for a in rows {
                            tr {
                                td { (a.id) }
                                td { (a.owner_login) }
                                td { (a.name) }
                                td { (a.keystone_url) }
                                td { (a.cloud_login) }
                                td { (time(&a.created_at)) }
                            }
                        }
                    }
                }
            }
            p #no-accounts hidden[!rows.is_empty()] { "No cloud account is stored." }
        },
    )
}
