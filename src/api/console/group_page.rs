//! The console's page of a publication group, `/console/groups/{id}`: its aggregate and one
//! row per target, live; its summary as a fragment (what the page re-reads as events come);
//! "Cancel group" (confirmed on a page of its own, as ticket actions are).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};

use super::pages::{bytes, confirm_page, layout, state_badge};
use super::{csrf_refused, page_error, same_token, ticket_id, ActionForm, Admin, PageResult};
use crate::api::wire::PublishGroup;
use crate::api::AppState;
use crate::store::groups::{self, Group};
use crate::store::{events, Ticket};

/// The group `raw` names and its tickets (None: no such group).
async fn group_of(
    state: &AppState,
    raw: &str,
) -> Result<Option<(Group, Vec<Ticket>)>, sqlx::Error> {
    let Some(id) = ticket_id(raw) else {
        return Ok(None);
    };
    let Some(group) = groups::get(&state.pool, id).await? else {
        return Ok(None);
    };
    let children = groups::children(&state.pool, id).await?;
    Ok(Some((group, children)))
}

fn no_group() -> Response {
    page_error(StatusCode::NOT_FOUND, "no such group")
}

pub(super) async fn group_page(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> PageResult {
    // The feed resumes from before the read, so no change falls between the two.
    let newest = events::newest_id(&state.pool).await?;
    let Some((group, children)) = group_of(&state, &id).await? else {
        return Ok(no_group());
    };
    Ok(page(&admin, newest, &group, &children).into_response())
}

/// The group's summary and targets as they are now (the page replaces its own with it).
pub(super) async fn group_summary(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> PageResult {
    let Some((group, children)) = group_of(&state, &id).await? else {
        return Ok(no_group());
    };
    Ok(summary(&admin, &group, &children).into_response())
}

/// Cancels every unfinished target (`groups::cancel`), once confirmed.
pub(super) async fn group_cancel(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
) -> PageResult {
    if !same_token(&admin.csrf, &form.csrf) {
        return Ok(csrf_refused());
    }
    let Some((group, children)) = group_of(&state, &id).await? else {
        return Ok(no_group());
    };
    let unfinished: Vec<i64> = children
        .iter()
        .filter(|t| !t.state.is_final())
        .map(|t| t.id)
        .collect();
    if unfinished.is_empty() {
        let why = format!("group {} has no unfinished target to cancel", group.id);
        return Ok(page_error(StatusCode::CONFLICT, &why));
    }
    if form.confirm.as_deref() != Some("yes") {
        return Ok(confirm(&admin, &group, unfinished.len()).into_response());
    }
    let asked = groups::cancel(&state.pool, group.id).await?;
    for id in unfinished {
        // The next status read sees the cancel, before the NOTIFY arrives.
        state.live.statuses().changed(id);
    }
    tracing::info!(
        group_id = group.id,
        targets = asked,
        by = admin.login,
        "administrator cancelled a publication group from the console"
    );
    Ok(Redirect::to(&format!("/console/groups/{}", group.id)).into_response())
}

fn page(admin: &Admin, after: i64, group: &Group, children: &[Ticket]) -> Markup {
    layout(
        &format!("Group {}", group.id),
        "group",
        Some(admin),
        Some(after),
        html! {
            article #group data-group=(group.id) {
                h1 { "Publication group " (group.id) }
                dl.fields {
                    dt { "Owner" } dd { (group.owner_login) }
                    dt { "Image" } dd { (group.image_id) }
                    dt { "Policy" } dd #policy { (group.policy.as_str()) }
                }
                (summary(admin, group, children))
            }
        },
    )
}

/// The aggregate (as `GET …/pimagegroups/{gid}` computes it), the cancel button and one
/// row per target.
fn summary(admin: &Admin, group: &Group, children: &[Ticket]) -> Markup {
    let aggregate = PublishGroup::document(group, children).0.body;
    let unfinished = children.iter().any(|t| !t.state.is_final());
    html! {
        section #group-summary data-src={"/console/groups/" (group.id) "/summary"} {
            p { "Group " (state_badge(&aggregate.state)) " · "
                progress max="100" value=(aggregate.percentage) { (aggregate.percentage) " %" }
                " " span #group-percentage { (aggregate.percentage) } " % · "
                span #group-bytes { (bytes(aggregate.bytes_loaded)) } " of " (bytes(aggregate.bytes_total))
                " · " (aggregate.complete) " of " (aggregate.total) " complete" }
            @if unfinished {
                form.actions method="post" action={"/console/groups/" (group.id) "/cancel"} {
                    input type="hidden" name="csrf" value=(admin.csrf);
                    button type="submit" #cancel-group { "Cancel group…" }
                }
            }
            div.scroll {
                table #targets {
                    thead { tr { th { "Ticket" } th { "State" } th { "Progress" } th { "Region" } th { "Message" } th { "Cloud image" } } }
                    tbody {
                        @for t in children {
                            tr data-ticket=(t.id) {
                                td { a href={"/console/tickets/" (t.id)} { (t.id) } }
                                td { (state_badge(t.state.as_str())) }
                                td { span data-field="percentage" { (t.percentage) } " %" }
                                td { (t.publish_location.as_deref().unwrap_or("(the account's)"))
                                     @if let Some(store) = &t.glance_store { " · store " (store) } }
                                td data-field="message" { (t.message) }
                                td data-field="cloud-id" { (t.cloud_id.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn confirm(admin: &Admin, group: &Group, unfinished: usize) -> Markup {
    let withdrawn = match group.policy {
        groups::GroupPolicy::All => "; under policy all, its complete targets are withdrawn too",
        groups::GroupPolicy::Each => "",
    };
    let question = format!(
        "Cancel group {}? Its {unfinished} unfinished target(s) stop and their partial \
         images are deleted{withdrawn}.",
        group.id
    );
    let subject = html! { "Policy " (group.policy.as_str()) ", owner " (group.owner_login) };
    let at = format!("/console/groups/{}", group.id);
    let action = format!("{at}/cancel");
    confirm_page(
        admin,
        &question,
        subject,
        &action,
        "Yes, cancel the group",
        &at,
    )
}
