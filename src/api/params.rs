//! The path and query parameters of the API's routes: each struct both parses a request
//! (through `extract::ApiPath`, `extract::UserScope`, `extract::ApiQuery`) and documents it
//! (`params(...)` in the handlers' `#[utoipa::path]`), so the two cannot disagree. A value
//! refused says what is wrong with it; `extract` puts the parameter's name before that.

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use utoipa::IntoParams;

/// What a path id that is not a positive 64-bit integer is told (after its name).
pub const NOT_AN_ID: &str = "must be a positive integer";

/// A path id: a positive 64-bit integer. Refused with `NOT_AN_ID`, which `extract` prefixes
/// with the parameter's name.
fn positive_id<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    struct PositiveId;
    impl Visitor<'_> for PositiveId {
        type Value = i64;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str(NOT_AN_ID)
        }
        fn visit_str<E: de::Error>(self, raw: &str) -> Result<i64, E> {
            raw.parse::<i64>()
                .ok()
                .filter(|id| *id > 0)
                .ok_or_else(|| E::custom(NOT_AN_ID))
        }
    }
    deserializer.deserialize_str(PositiveId)
}

/// `users/{uid}/pimages…`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct UserPath {
    /// The user's login
    #[param(pattern = "^[A-Za-z0-9._-]{1,64}$", example = "demo")]
    pub uid: String,
}

/// `users/{uid}/accounts/{caid}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct AccountPath {
    /// The user's login
    #[param(pattern = "^[A-Za-z0-9._-]{1,64}$", example = "demo")]
    pub uid: String,
    /// Cloud account id
    #[serde(deserialize_with = "positive_id")]
    #[param(minimum = 1, example = 1)]
    pub caid: i64,
}

/// `users/{uid}/scannedinstances/{siid}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ScannedInstancePath {
    /// The user's login
    #[param(pattern = "^[A-Za-z0-9._-]{1,64}$", example = "demo")]
    pub uid: String,
    /// Scanned instance id
    #[serde(deserialize_with = "positive_id")]
    #[param(minimum = 1, example = 1)]
    pub siid: i64,
}

/// `…/scans/{sid}` and `…/scans/{sid}/images`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ScanPath {
    /// The user's login
    #[param(pattern = "^[A-Za-z0-9._-]{1,64}$", example = "demo")]
    pub uid: String,
    /// Scanned instance id
    #[serde(deserialize_with = "positive_id")]
    #[param(minimum = 1, example = 1)]
    pub siid: i64,
    /// Scan id
    #[serde(deserialize_with = "positive_id")]
    #[param(minimum = 1, example = 1)]
    pub sid: i64,
}

/// `…/images/{itid}…`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ImagePath {
    /// The user's login
    #[param(pattern = "^[A-Za-z0-9._-]{1,64}$", example = "demo")]
    pub uid: String,
    /// Scanned instance id
    #[serde(deserialize_with = "positive_id")]
    #[param(minimum = 1, example = 1)]
    pub siid: i64,
    /// Scan id
    #[serde(deserialize_with = "positive_id")]
    #[param(minimum = 1, example = 1)]
    pub sid: i64,
    /// Image id
    #[serde(deserialize_with = "positive_id")]
    #[param(minimum = 1, example = 1)]
    pub itid: i64,
}

/// `users/{uid}/pimagegroups/{gid}…`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct GroupPath {
    /// The user's login
    #[param(pattern = "^[A-Za-z0-9._-]{1,64}$", example = "demo")]
    pub uid: String,
    /// The publication group's id (`dbId`)
    #[serde(deserialize_with = "positive_id")]
    #[param(minimum = 1, example = 1)]
    pub gid: i64,
}

/// `/api/admin/tickets/{id}…`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TicketIdPath {
    /// The ticket's id (`dbId`, the last part of its URI)
    #[serde(deserialize_with = "positive_id")]
    #[param(minimum = 1, example = 1)]
    pub id: i64,
}

/// `…/pimages/{pitid}…`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TicketPath {
    /// The user's login
    #[param(pattern = "^[A-Za-z0-9._-]{1,64}$", example = "demo")]
    pub uid: String,
    /// Scanned instance id
    #[serde(deserialize_with = "positive_id")]
    #[param(minimum = 1, example = 1)]
    pub siid: i64,
    /// Scan id
    #[serde(deserialize_with = "positive_id")]
    #[param(minimum = 1, example = 1)]
    pub sid: i64,
    /// Image id
    #[serde(deserialize_with = "positive_id")]
    #[param(minimum = 1, example = 1)]
    pub itid: i64,
    /// Publish ticket id
    #[serde(deserialize_with = "positive_id")]
    #[param(minimum = 1, example = 1)]
    pub pitid: i64,
}

impl TicketPath {
    /// Scanned instance, scan, image, ticket: as `store::tickets::find_at` takes them.
    pub fn ids(&self) -> (i64, i64, i64, i64) {
        (self.siid, self.sid, self.itid, self.pitid)
    }

    /// The path of the ticket's image.
    pub fn image(&self) -> ImagePath {
        ImagePath {
            uid: self.uid.clone(),
            siid: self.siid,
            sid: self.sid,
            itid: self.itid,
        }
    }
}

/// The query of `DELETE …/pimages/{pitid}`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct DeleteQuery {
    /// Also delete the published image from the cloud
    #[serde(default, deserialize_with = "boolean_flag")]
    #[param(value_type = bool, required = false)]
    pub delete_cloud_image: bool,
}

/// `true`/`1` or `false`/`0`.
fn boolean_flag<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    let raw = String::deserialize(deserializer)?;
    match raw.trim() {
        "false" | "0" => Ok(false),
        "true" | "1" => Ok(true),
        other => Err(de::Error::custom(format!(
            "must be true or false, not '{other}'"
        ))),
    }
}

/// A name to look for: printable, and short (Postgres refuses a NUL, which would be a 500).
fn plain_name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let raw = String::deserialize(deserializer)?;
    if raw.chars().count() > 255 || raw.chars().any(char::is_control) {
        return Err(de::Error::custom(
            "must be a name of at most 255 characters, without control characters",
        ));
    }
    Ok(Some(raw))
}

/// The query of `GET users/{uid}/scannedinstances` (the SDK's `Getall`).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct ScannedInstancesQuery {
    /// List each instance's scans too
    #[serde(default, deserialize_with = "boolean_flag")]
    #[param(value_type = bool, required = false)]
    pub include_scans: bool,
    /// Only the instances of this name
    #[serde(default, deserialize_with = "plain_name")]
    #[param(required = false)]
    pub name: Option<String>,
}

/// The optional `img` filter of the user-level lists.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ImageFilter {
    /// Only this image (its id or URI)
    #[serde(default, deserialize_with = "image_id_or_uri")]
    #[param(value_type = String, required = false)]
    pub img: Option<i64>,
}

/// An image id, or an image URI (its last segment is the id); blank is no filter.
fn image_id_or_uri<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    let raw = String::deserialize(deserializer)?;
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    let last = raw.trim_end_matches('/').rsplit('/').next().unwrap_or(raw);
    last.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .map(Some)
        .ok_or_else(|| de::Error::custom(format!("must be an image id or image URI, not '{raw}'")))
}
