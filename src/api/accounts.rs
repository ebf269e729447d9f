//! Cloud accounts stored per user, as hammr keeps them (`hammr account create|list|delete`):
//! `…/users/{uid}/accounts[/{caid}]` and `…/users/{uid}/targetplatforms`. An account's
//! password is tried once against Keystone (an unscoped login: the account names no project)
//! before anything is stored, then kept sealed and never answered. A publish may name a
//! stored account instead of giving a password (`stored_account_named`).

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::auth::Caller;
use super::doc_parts::{
    AccountCreateErrors, AccountDeleteErrors, Cached, NewAccountBody, ReadErrors,
};
use super::error::ApiError;
use super::extract::{self, PublishToken, UserScope};
use super::params::{AccountPath, UserPath};
use super::paths;
use super::publish_request::{
    self, check_keystone_version, check_platform, json_body, openstack_type, password_field,
    raw_account, text_field, url_field, AccountRef, BodyError, InvalidRequest, Media, RawAccount,
};
use super::wire::{CredAccounts, Format, StoredAccount, TargetPlatforms};
use super::xml;
use super::AppState;
use crate::cloud::{CloudError, Keystone};
use crate::secrets::Secret;
use crate::store::accounts::{self, CloudAccount, Created, Deleted, NewAccount};

/// The Keystone domain of a stored account's user: the account has no field for it.
const USER_DOMAIN: &str = "Default";

/// A checked `POST …/accounts` body.
struct AccountRequest {
    name: String,
    keystone_url: String,
    glance_url: Option<String>,
    login: String,
    password: Secret,
}

fn account_from_xml(body: &[u8]) -> Result<AccountRequest, InvalidRequest> {
    let root = xml::parse(body).map_err(|e| InvalidRequest(e.to_string()))?;
    if root.name != "credAccount" {
        return Err(InvalidRequest(format!(
            "the XML root element must be credAccount, not {}",
            root.name
        )));
    }
    openstack_type(&root, "CredAccountOpenStack")?;
    check_account(raw_account(&root))
}

fn check_account(raw: RawAccount) -> Result<AccountRequest, InvalidRequest> {
    check_platform(raw.target_platform.as_ref())?;
    check_keystone_version(raw.keystone_version.as_deref())?;
    Ok(AccountRequest {
        name: text_field("credAccount/name", raw.name, true)?.expect("required"),
        keystone_url: url_field("credAccount/keystoneUrl", raw.keystone_url, true)?
            .expect("required"),
        glance_url: url_field("credAccount/glanceUrl", raw.glance_url, false)?,
        login: text_field("credAccount/login", raw.login, true)?.expect("required"),
        password: password_field(raw.password)?,
    })
}

fn parse_account_body(headers: &HeaderMap, body: &[u8]) -> Result<AccountRequest, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let parsed = match publish_request::media_type(content_type, "credAccount") {
        Ok(Media::Xml) => account_from_xml(body),
        Ok(Media::Json) => json_body(body).and_then(check_account),
        Err(BodyError::UnsupportedMediaType(m)) => return Err(ApiError::UnsupportedMediaType(m)),
        Err(BodyError::Invalid(e)) => Err(e),
    };
    parsed.map_err(|e| ApiError::BadRequest(e.0))
}

/// A cloud failure in words a user can act on: the summary, and the cloud's detail where it
/// adds something.
fn cloud_reason(e: &CloudError) -> String {
    match &e.detail {
        Some(detail) if !e.summary.contains(detail.as_str()) => format!("{}: {detail}", e.summary),
        _ => e.summary.clone(),
    }
}

/// Refuses, before calling it, a cloud URL this service may not call.
pub(super) fn check_cloud_urls(
    state: &AppState,
    keystone_url: &str,
    glance_url: Option<&str>,
) -> Result<(), ApiError> {
    let urls = [
        ("credAccount/keystoneUrl", Some(keystone_url)),
        ("credAccount/glanceUrl", glance_url),
    ];
    for (name, url) in urls {
        let Some(Ok(url)) = url.map(url::Url::parse) else {
            continue;
        };
        state
            .cloud_policy
            .check_url(&url)
            .map_err(|why| ApiError::BadRequest(format!("{name} {why}")))?;
    }
    Ok(())
}

#[utoipa::path(
    get,
    path = paths::ACCOUNTS,
    operation_id = "listAccounts",
    summary = "The cloud accounts of a user (never their passwords)",
    params(UserPath),
    responses(Cached<CredAccounts>, ReadErrors)
)]
pub async fn list_accounts(
    State(state): State<AppState>,
    _caller: Caller,
    format: Format,
    UserScope { path, .. }: UserScope<UserPath>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let list = accounts::list_of_user(&state.pool, &path.uid).await?;
    let (doc, digest) = CredAccounts::document(&list);
    Ok(doc.render_cached(format, &digest, &headers))
}

/// `POST …/accounts`: checks the password with one Keystone login, then stores the account.
#[utoipa::path(
    post,
    path = paths::ACCOUNTS,
    operation_id = "createAccount",
    summary = "Store a cloud account, once Keystone accepted its password (unscoped login, user domain Default)",
    params(UserPath),
    request_body(content(
        (NewAccountBody = "application/json"), (NewAccountBody = "application/xml"))),
    responses(
        (status = 201, description = "The account, stored (without its password)",
            headers(("Location" = String)),
            content((StoredAccount = "application/json"), (StoredAccount = "application/xml"))),
        AccountCreateErrors,
    )
)]
pub async fn create_account(
    State(state): State<AppState>,
    _caller: Caller,
    format: Format,
    // Each try calls a Keystone the caller names and says whether the password worked: it
    // spends the publish budget, or it would guess passwords (and probe addresses) unbounded.
    _: PublishToken,
    UserScope { path, .. }: UserScope<UserPath>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = extract::body_bytes(&state, body).await?;
    let new = parse_account_body(&headers, &bytes)?;
    check_cloud_urls(&state, &new.keystone_url, new.glance_url.as_deref())?;
    let owner = crate::store::users::find_by_login(&state.pool, &path.uid)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no user '{}'", path.uid)))?;
    // Asked first so that a taken name costs no Keystone login; `create` checks again.
    if accounts::find_by_name(&state.pool, &path.uid, &new.name)
        .await?
        .is_some()
    {
        return Err(name_taken(&path.uid, &new.name));
    }
    Keystone::check_password(
        &new.keystone_url,
        &new.login,
        USER_DOMAIN,
        &new.password,
        &state.cloud_policy,
    )
    .await
    .map_err(|e| {
        ApiError::BadRequest(format!(
            "the cloud account '{}' was not stored: {}",
            new.name,
            cloud_reason(&e)
        ))
    })?;
    let sealed = state.secrets.seal(&new.password);
    let stored = accounts::create(
        &state.pool,
        &NewAccount {
            user_id: owner.id,
            name: &new.name,
            keystone_url: &new.keystone_url,
            keystone_version: "v3",
            glance_url: new.glance_url.as_deref(),
            cloud_login: &new.login,
            cloud_password_enc: &sealed,
        },
    )
    .await?;
    let Created::Created(account) = stored else {
        return Err(name_taken(&path.uid, &new.name));
    };
    tracing::info!(account_id = account.id, owner = %path.uid, "cloud account stored");
    let (doc, _) = StoredAccount::document(&account);
    let mut response = doc.render(format, StatusCode::CREATED);
    if let Ok(location) = HeaderValue::from_str(&format!("/api/{}", account.uri())) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

fn name_taken(owner: &str, name: &str) -> ApiError {
    ApiError::Conflict(format!(
        "user '{owner}' already has a cloud account named '{name}': choose another name, or \
         delete that account first"
    ))
}

#[utoipa::path(
    get,
    path = paths::ACCOUNT,
    operation_id = "getAccount",
    summary = "One cloud account (never its password)",
    params(AccountPath),
    responses(Cached<StoredAccount>, ReadErrors)
)]
pub async fn get_account(
    State(state): State<AppState>,
    _caller: Caller,
    format: Format,
    UserScope { path, .. }: UserScope<AccountPath>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let account = accounts::find_of_user(&state.pool, &path.uid, path.caid)
        .await?
        .ok_or_else(|| no_account(&path))?;
    let (doc, digest) = StoredAccount::document(&account);
    Ok(doc.render_cached(format, &digest, &headers))
}

fn no_account(path: &AccountPath) -> ApiError {
    ApiError::NotFound(format!(
        "no cloud account {} for user '{}'",
        path.caid, path.uid
    ))
}

#[utoipa::path(
    delete,
    path = paths::ACCOUNT,
    operation_id = "deleteAccount",
    summary = "Delete a cloud account no queued or running ticket uses",
    params(AccountPath),
    responses((status = 204, description = "Deleted"), AccountDeleteErrors)
)]
pub async fn delete_account(
    State(state): State<AppState>,
    _caller: Caller,
    UserScope { path, .. }: UserScope<AccountPath>,
) -> Result<Response, ApiError> {
    match accounts::delete(&state.pool, &path.uid, path.caid).await? {
        Deleted::Deleted => Ok(StatusCode::NO_CONTENT.into_response()),
        Deleted::NotFound => Err(no_account(&path)),
        Deleted::InUse(tickets) => Err(ApiError::Conflict(format!(
            "cloud account {} is used by {tickets} queued or running publish ticket(s): wait \
             for them to end (or cancel them), then delete it",
            path.caid
        ))),
    }
}

#[utoipa::path(
    get,
    path = paths::TARGET_PLATFORMS,
    operation_id = "listTargetPlatforms",
    summary = "The cloud platforms accounts can be made for: OpenStack",
    params(UserPath),
    responses(
        (status = 200, description = "OK",
            content((TargetPlatforms = "application/json"), (TargetPlatforms = "application/xml"))),
        ReadErrors,
    )
)]
pub async fn list_target_platforms(
    _caller: Caller,
    format: Format,
    _scope: UserScope<UserPath>,
) -> Result<Response, ApiError> {
    Ok(TargetPlatforms::document().render(format, StatusCode::OK))
}

/// The account of `owner` a publish names: by its `uri`, else its `dbId`, else its `name`.
pub(super) async fn stored_account_named(
    state: &AppState,
    owner: &str,
    reference: &AccountRef,
) -> Result<CloudAccount, ApiError> {
    let (found, named) = if let Some(uri) = &reference.uri {
        let id = id_in_uri(uri, owner);
        let found = match id {
            Some(id) => accounts::find_of_user(&state.pool, owner, id).await?,
            None => None,
        };
        (found, format!("at '{uri}'"))
    } else if let Some(id) = reference.db_id {
        let found = accounts::find_of_user(&state.pool, owner, id).await?;
        (found, format!("with dbId {id}"))
    } else {
        let name = reference.name.as_deref().unwrap_or_default();
        let found = accounts::find_by_name(&state.pool, owner, name).await?;
        (found, format!("named '{name}'"))
    };
    let found = found.ok_or_else(|| {
        ApiError::NotFound(format!(
            "no cloud account {named} for user '{owner}': create it first (hammr account \
             create), or give credAccount/password"
        ))
    })?;
    check_same_cloud(&found, reference)?;
    Ok(found)
}

/// What the body says of the stored account it names must be what is stored (409 if not).
fn check_same_cloud(stored: &CloudAccount, reference: &AccountRef) -> Result<(), ApiError> {
    let same_url = |a: &str, b: &str| a.trim_end_matches('/') == b.trim_end_matches('/');
    let fields = [
        (
            "keystoneUrl",
            reference.keystone_url.as_deref(),
            Some(stored.keystone_url.as_str()),
        ),
        (
            "glanceUrl",
            reference.glance_url.as_deref(),
            stored.glance_url.as_deref(),
        ),
        (
            "login",
            reference.login.as_deref(),
            Some(stored.cloud_login.as_str()),
        ),
    ];
    for (field, said, kept) in fields {
        let Some(said) = said else { continue };
        if !kept.is_some_and(|kept| same_url(said, kept)) {
            return Err(ApiError::Conflict(format!(
                "the stored cloud account '{}' has {field} {}, not '{said}': publish with the \
                 account as it is stored, or give credAccount/password to use another cloud",
                stored.name,
                kept.map_or("none".to_string(), |k| format!("'{k}'"))
            )));
        }
    }
    Ok(())
}

/// The account id in `[/][api/]users/{owner}/accounts/{caid}`; `None` for another user's.
fn id_in_uri(uri: &str, owner: &str) -> Option<i64> {
    let path = uri.trim_start_matches('/');
    let path = path.strip_prefix("api/").unwrap_or(path);
    match path.trim_end_matches('/').split('/').collect::<Vec<_>>()[..] {
        ["users", user, "accounts", id] if user == owner => {
            id.parse::<i64>().ok().filter(|id| *id > 0)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_uri_names_an_account_of_its_owner_only() {
        assert_eq!(id_in_uri("users/alice/accounts/7", "alice"), Some(7));
        assert_eq!(id_in_uri("/api/users/alice/accounts/7/", "alice"), Some(7));
        assert_eq!(id_in_uri("users/bob/accounts/7", "alice"), None);
        assert_eq!(id_in_uri("users/alice/accounts/x", "alice"), None);
        assert_eq!(id_in_uri("users/alice/pimages/7", "alice"), None);
    }

    #[test]
    fn an_account_body_needs_a_name_and_a_password() {
        let body = |json: &str| json_body(json.as_bytes()).and_then(check_account);
        let ok = body(r#"{"name":"os","keystoneUrl":"http://k:5000","login":"u","password":"p"}"#);
        assert_eq!(ok.unwrap().name, "os");
        let err = |json: &str| body(json).err().unwrap().0;
        assert_eq!(
            err(r#"{"keystoneUrl":"http://k:5000","login":"u","password":"p"}"#),
            "credAccount/name is required"
        );
        assert_eq!(
            err(r#"{"name":"os","keystoneUrl":"http://k:5000","login":"u"}"#),
            "credAccount/password is required"
        );
        assert!(err(r#"{"name":"os","keystoneVersion":"v2.0","keystoneUrl":"http://k","login":"u","password":"p"}"#).contains("only Keystone v3"));
        let xml = br#"<ns1:credAccount xmlns:ns1="http://www.usharesoft.com/uforge" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="ns1:CredAccountAws"><name>a</name></ns1:credAccount>"#;
        assert!(account_from_xml(xml)
            .err()
            .unwrap()
            .0
            .contains("only OpenStack"));
    }
}
