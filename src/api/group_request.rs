//! The body of `POST …/pimagegroups` (a pimage extension UForge clients never send): a
//! policy and targets, each an ordinary publish body (`publish_request`, JSON) with an
//! optional Glance `store`. Also the body of `POST …/pimagegroups/{gid}/targets` (targets
//! only).

use serde::Deserialize;
use serde_json::Value;

use super::publish_request::{self, InvalidRequest, PublishBody};
use crate::store::groups::GroupPolicy;

/// Targets one request may name at most: each is a ticket, and the owner's quota counts them.
pub const MAX_TARGETS: usize = 16;

/// A checked group body.
#[derive(Debug)]
pub struct GroupRequest {
    pub policy: GroupPolicy,
    pub targets: Vec<TargetRequest>,
}

/// One target: a publish body and the Glance store it goes to (None: the default store).
#[derive(Debug)]
pub struct TargetRequest {
    pub body: PublishBody,
    pub store: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawGroup {
    #[serde(default)]
    policy: Option<String>,
    targets: Vec<Value>,
}

/// Reads a group body (JSON only: the extension has no UForge XML schema).
pub fn parse(body: &[u8], with_policy: bool) -> Result<GroupRequest, InvalidRequest> {
    let raw: RawGroup = publish_request::json_body(body)?;
    let policy = match raw.policy.as_deref() {
        None if with_policy => GroupPolicy::All,
        Some("all") if with_policy => GroupPolicy::All,
        Some("each") if with_policy => GroupPolicy::Each,
        Some(other) if with_policy => {
            return Err(InvalidRequest(format!(
                "policy must be 'all' or 'each', not '{}'",
                other.escape_debug()
            )))
        }
        None => GroupPolicy::Each,
        Some(_) => {
            return Err(InvalidRequest(
                "a target added to a group takes the group's policy: leave out 'policy'".into(),
            ))
        }
    };
    if raw.targets.is_empty() || raw.targets.len() > MAX_TARGETS {
        return Err(InvalidRequest(format!(
            "targets must list 1 to {MAX_TARGETS} publishes, not {}",
            raw.targets.len()
        )));
    }
    let targets = raw
        .targets
        .into_iter()
        .enumerate()
        .map(|(at, target)| target_of(target).map_err(|e| in_target(at, e)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(GroupRequest { policy, targets })
}

fn in_target(at: usize, e: InvalidRequest) -> InvalidRequest {
    InvalidRequest(format!("target {}: {}", at + 1, e.0))
}

fn target_of(target: Value) -> Result<TargetRequest, InvalidRequest> {
    let Value::Object(mut fields) = target else {
        return Err(InvalidRequest("a target must be a JSON object".into()));
    };
    let store = match fields.remove("store") {
        None | Some(Value::Null) => None,
        Some(Value::String(store)) if is_store_id(&store) => Some(store),
        Some(_) => {
            return Err(InvalidRequest(
                "store must be a Glance store id: 1 to 255 letters, digits, '_', '.' or '-'".into(),
            ))
        }
    };
    let bytes = serde_json::to_vec(&Value::Object(fields))
        .map_err(|e| InvalidRequest(format!("the target could not be read: {e}")))?;
    let body = publish_request::body_from_json(&bytes)?;
    Ok(TargetRequest { body, store })
}

/// Glance store ids as `enabled_backends` names them (and as the schema's check allows).
fn is_store_id(store: &str) -> bool {
    (1..=255).contains(&store.len())
        && store
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: &str = r#"{"keystoneDomain": "Default", "keystoneProject": "demo",
        "credAccount": {"name": "lab"}}"#;

    fn group(policy: &str, targets: &[&str]) -> String {
        format!(r#"{{{policy}"targets": [{}]}}"#, targets.join(","))
    }

    #[test]
    fn a_group_body_gives_its_policy_and_each_target_its_store() {
        let with_store = TARGET.replacen('{', r#"{"store": "cold", "#, 1);
        let body = group(r#""policy": "each", "#, &[TARGET, &with_store]);
        let request = parse(body.as_bytes(), true).unwrap();
        assert_eq!(request.policy, GroupPolicy::Each);
        let stores: Vec<_> = request.targets.iter().map(|t| t.store.clone()).collect();
        assert_eq!(stores, [None, Some("cold".to_string())]);
        assert_eq!(
            parse(group("", &[TARGET]).as_bytes(), true).unwrap().policy,
            GroupPolicy::All
        );
    }

    #[test]
    fn bad_group_bodies_are_refused_in_words_that_name_the_target() {
        let refused =
            |body: String, with_policy: bool| parse(body.as_bytes(), with_policy).unwrap_err().0;
        assert!(
            refused(group(r#""policy": "most", "#, &[TARGET]), true).contains("'all' or 'each'")
        );
        assert!(refused(group("", &[]), true).contains("1 to 16"));
        assert!(refused(group(r#""policy": "all", "#, &[TARGET]), false).contains("group's policy"));
        let bad_store = TARGET.replacen('{', r#"{"store": "../x", "#, 1);
        assert!(refused(group("", &[TARGET, &bad_store]), true).starts_with("target 2: store"));
        let no_project = r#"{"keystoneDomain": "Default", "credAccount": {"name": "lab"}}"#;
        assert!(refused(group("", &[no_project]), true).starts_with("target 1: "));
        assert!(refused(r#"{"targets": [], "extra": 1}"#.into(), true).contains("extra"));
    }
}
