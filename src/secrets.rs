//! Secrets: a string that never prints and is zeroed when dropped, encryption at rest of
//! stored secrets (AES-256-GCM under a key ring, so keys can be rotated), and user-password
//! hashing (argon2id, checked in reusable working memory).

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload};
use aes_gcm::{AeadCore, Aes256Gcm, Key, Nonce};
use argon2::password_hash::{Output, PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use zeroize::{Zeroize, Zeroizing};

/// A string that must not leak: `Debug` and `Display` print `***`, and its bytes are
/// overwritten when it is dropped.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secrets.key is not set: set PIMAGE__SECRETS__KEY to base64 of 32 random bytes (openssl rand -base64 32), or PIMAGE_ENV=dev for the development profile")]
    MissingKey,
    #[error("secrets.key must be base64 of exactly 32 bytes")]
    BadKey,
    #[error("secrets.previous_keys[{0}] must be base64 of exactly 32 bytes")]
    BadPreviousKey(usize),
    #[error("a stored secret could not be decrypted (wrong secrets.key, or its old key missing from secrets.previous_keys?)")]
    Undecryptable,
}

/// Names a sealing key in what it sealed: the start of a digest of the key, so it needs no
/// configuration and reveals nothing usable about the key.
type KeyId = [u8; 4];

struct SealingKey {
    id: KeyId,
    cipher: Aes256Gcm,
    /// Signs image links (web-download); derived, so a leaked link key opens nothing.
    link_key: Zeroizing<[u8; 32]>,
}

/// Encrypts and decrypts stored secrets (cloud passwords, API-key secrets).
///
/// Sealed form: `pk1`, the key id (4 bytes), a 12-byte nonce, then ciphertext+tag, with
/// `pk1` and the key id authenticated. Values sealed before key ids existed (nonce, then
/// ciphertext+tag) still open, under any key of the ring.
#[derive(Clone)]
pub struct SecretBox {
    /// The current key first (it seals), then the previous ones (they only open).
    keys: Arc<[SealingKey]>,
}

impl fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBox(***)")
    }
}

const NONCE_LEN: usize = 12;
const SEALED_TAG: &[u8; 3] = b"pk1";
/// Length of the authenticated header: tag and key id.
pub const SEALED_HEADER_LEN: usize = SEALED_TAG.len() + 4;

impl SecretBox {
    /// A box with one key, which seals and opens.
    pub fn from_base64_key(key: &Secret) -> Result<SecretBox, SecretError> {
        SecretBox::new(key, &[])
    }

    /// `key` seals and opens; `previous_keys` only open (what was sealed before a rotation).
    pub fn new(key: &Secret, previous_keys: &[Secret]) -> Result<SecretBox, SecretError> {
        if key.is_empty() {
            return Err(SecretError::MissingKey);
        }
        let mut keys = vec![sealing_key(key).ok_or(SecretError::BadKey)?];
        for (index, previous) in previous_keys.iter().enumerate() {
            let previous = sealing_key(previous).ok_or(SecretError::BadPreviousKey(index))?;
            if keys.iter().all(|k| k.id != previous.id) {
                keys.push(previous);
            }
        }
        Ok(SecretBox { keys: keys.into() })
    }

    /// The header every value sealed under the current key starts with.
    pub fn current_header(&self) -> [u8; SEALED_HEADER_LEN] {
        header(&self.keys[0].id)
    }

    pub fn seal(&self, plaintext: &Secret) -> Vec<u8> {
        let header = self.current_header();
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let payload = Payload {
            msg: plaintext.expose().as_bytes(),
            aad: &header,
        };
        let ciphertext = self.keys[0]
            .cipher
            .encrypt(&nonce, payload)
            // AES-GCM encryption fails only for inputs over 64 GiB.
            .expect("AES-GCM encryption of a password cannot fail");
        let mut out = header.to_vec();
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        out
    }

    pub fn open(&self, sealed: &[u8]) -> Result<Secret, SecretError> {
        let tagged = sealed
            .strip_prefix(SEALED_TAG)
            .filter(|rest| rest.len() >= 4 + NONCE_LEN)
            .and_then(|rest| {
                let (id, body) = rest.split_at(4);
                let key = self.keys.iter().find(|k| k.id == id)?;
                let (nonce, ciphertext) = body.split_at(NONCE_LEN);
                let payload = Payload {
                    msg: ciphertext,
                    aad: &sealed[..SEALED_HEADER_LEN],
                };
                key.cipher.decrypt(Nonce::from_slice(nonce), payload).ok()
            });
        // Untagged (sealed before key ids): whichever key opens it.
        let plaintext = tagged
            .or_else(|| {
                let (nonce, ciphertext) = sealed.split_at_checked(NONCE_LEN)?;
                self.keys.iter().find_map(|key| {
                    key.cipher
                        .decrypt(Nonce::from_slice(nonce), ciphertext)
                        .ok()
                })
            })
            .ok_or(SecretError::Undecryptable)?;
        String::from_utf8(plaintext).map(Secret).map_err(|e| {
            drop(Zeroizing::new(e.into_bytes()));
            SecretError::Undecryptable
        })
    }

    /// `sealed` opened and sealed again under the current key; `None` if it already is.
    pub fn reseal(&self, sealed: &[u8]) -> Result<Option<Vec<u8>>, SecretError> {
        if sealed.starts_with(&self.current_header()) {
            return Ok(None);
        }
        Ok(Some(self.seal(&self.open(sealed)?)))
    }
}

fn sealing_key(key: &Secret) -> Option<SealingKey> {
    let bytes = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(key.expose().trim())
            .ok()?,
    );
    if bytes.len() != 32 {
        return None;
    }
    let digest = Sha256::new()
        .chain_update(b"pimage sealing key id\0")
        .chain_update(&*bytes)
        .finalize();
    Some(SealingKey {
        id: digest[..4]
            .try_into()
            .expect("a SHA-256 digest has 4 bytes"),
        cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&bytes)),
        link_key: Zeroizing::new(
            Sha256::new()
                .chain_update(b"pimage image link key\0")
                .chain_update(&*bytes)
                .finalize()
                .into(),
        ),
    })
}

impl SecretBox {
    /// HMAC-SHA256 (hex) of an image link's `message` under the current key's link key.
    fn sign_link(&self, message: &str) -> String {
        hex::encode(link_mac(&self.keys[0], message).finalize().into_bytes())
    }

    /// The web-download link to ticket `ticket`'s image file under `base` (the API's root
    /// URL), valid until `expires` (Unix seconds). The one place of the link's format.
    pub fn image_link(&self, base: &str, ticket: i64, expires: u64) -> String {
        let signature = self.sign_link(&image_link_message(&ticket.to_string(), expires));
        format!(
            "{}/image-links/{ticket}?expires={expires}&signature={signature}",
            base.trim_end_matches('/')
        )
    }

    /// Whether `signature` signs the link of `ticket` (as written in the URL) until `expires`.
    pub fn image_link_valid(&self, ticket: &str, expires: u64, signature: &str) -> bool {
        self.verify_link(&image_link_message(ticket, expires), signature)
    }

    /// Whether `signature` (hex) signs `message` under any key of the ring (a rotation does
    /// not break links already handed out); compared in constant time.
    fn verify_link(&self, message: &str, signature: &str) -> bool {
        let Ok(signature) = hex::decode(signature) else {
            return false;
        };
        self.keys
            .iter()
            .any(|k| link_mac(k, message).verify_slice(&signature).is_ok())
    }
}

fn image_link_message(ticket: &str, expires: u64) -> String {
    format!("image-link\0{ticket}\0{expires}")
}

fn link_mac(key: &SealingKey, message: &str) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&*key.link_key)
        .expect("HMAC takes a key of any length");
    mac.update(message.as_bytes());
    mac
}

fn header(id: &KeyId) -> [u8; SEALED_HEADER_LEN] {
    let mut header = [0u8; SEALED_HEADER_LEN];
    header[..SEALED_TAG.len()].copy_from_slice(SEALED_TAG);
    header[SEALED_TAG.len()..].copy_from_slice(id);
    header
}

/// Hashes a user password with argon2id and a random salt (PHC string).
pub fn hash_password(password: &Secret) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.expose().as_bytes(), &salt)
        .expect("argon2 hashing with default parameters cannot fail")
        .to_string()
}

/// Checks a password against a PHC hash. Slow on purpose: call it off the async runtime.
pub fn verify_password(password: &Secret, phc_hash: &str) -> bool {
    verify_password_in(password, phc_hash, &mut Vec::new())
}

/// Checks a password against a PHC hash in `memory` (grown to the hash's memory cost if
/// needed, and zeroed after use).
fn verify_password_in(password: &Secret, phc_hash: &str, memory: &mut Vec<Block>) -> bool {
    let Ok(hash) = PasswordHash::new(phc_hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) =
        (Algorithm::try_from(hash.algorithm), Params::try_from(&hash))
    else {
        return false;
    };
    let version = hash
        .version
        .map_or(Ok(Version::default()), Version::try_from);
    let Ok(version) = version else {
        return false;
    };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    if memory.len() < params.block_count() {
        memory.resize(params.block_count(), Block::default());
    }
    let mut computed = Zeroizing::new(vec![0u8; expected.len()]);
    let hashed = Argon2::new(algorithm, version, params).hash_password_into_with_memory(
        password.expose().as_bytes(),
        salt,
        &mut computed,
        &mut memory[..],
    );
    memory.iter_mut().for_each(Zeroize::zeroize);
    // `Output` compares in constant time.
    hashed.is_ok() && Output::new(&computed).is_ok_and(|computed| computed == expected)
}

/// Argon2 working memory for password checks: a fixed number of slots, each allocated once
/// and reused, so that a flood of logins cannot grow the process (each check needs ~19 MiB,
/// which the allocator would otherwise keep per thread after a burst).
pub struct PasswordChecker {
    slots: Arc<Semaphore>,
    free: Mutex<Vec<Vec<Block>>>,
}

impl PasswordChecker {
    /// At most `slots` checks run at once (more than the cores only adds memory).
    pub fn new(slots: usize) -> Arc<PasswordChecker> {
        Arc::new(PasswordChecker {
            slots: Arc::new(Semaphore::new(slots.max(1))),
            free: Mutex::new(Vec::new()),
        })
    }

    /// Checks `password` against `phc_hash` on the blocking pool, once a slot is free;
    /// `None` if none was within `wait` (the caller should ask the client to retry).
    pub async fn check(
        self: &Arc<Self>,
        password: Secret,
        phc_hash: String,
        wait: Duration,
    ) -> anyhow::Result<Option<bool>> {
        let Ok(permit) = tokio::time::timeout(wait, self.slots.clone().acquire_owned()).await
        else {
            return Ok(None);
        };
        let permit = permit?;
        let checker = self.clone();
        // The slot is held until the check ends, even if the request is dropped meanwhile:
        // there are never more checks (or memory blocks) than slots.
        let valid = tokio::task::spawn_blocking(move || {
            let mut memory = checker.take_memory();
            let valid = verify_password_in(&password, &phc_hash, &mut memory);
            checker.give_back(memory);
            drop(permit);
            valid
        })
        .await?;
        Ok(Some(valid))
    }

    fn take_memory(&self) -> Vec<Block> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        free.pop().unwrap_or_default()
    }

    fn give_back(&self, memory: Vec<Block>) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        free.push(memory);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_image_link_holds_only_for_its_ticket_and_expiry() {
        let key = Secret::new(base64::engine::general_purpose::STANDARD.encode([7u8; 32]));
        let other = Secret::new(base64::engine::general_purpose::STANDARD.encode([8u8; 32]));
        let sealer = SecretBox::new(&key, &[]).unwrap();
        let link = sealer.image_link("http://api:8080/", 12, 1000);
        let signature = link.rsplit("signature=").next().unwrap();
        assert!(link.starts_with("http://api:8080/image-links/12?expires=1000&signature="));
        assert!(sealer.image_link_valid("12", 1000, signature));
        assert!(!sealer.image_link_valid("13", 1000, signature));
        assert!(!sealer.image_link_valid("12", 1001, signature));
        assert!(!sealer.image_link_valid("12", 1000, &signature[1..]));
        assert!(!sealer.image_link_valid("12", 1000, "not hex"));
        // Another key does not sign it; after a rotation, the old key still does.
        assert!(!SecretBox::new(&other, &[])
            .unwrap()
            .image_link_valid("12", 1000, signature));
        let rotated = SecretBox::new(&other, &[key]).unwrap();
        assert!(rotated.image_link_valid("12", 1000, signature));
    }

    use super::*;

    fn key(byte: u8) -> Secret {
        Secret::new(base64::engine::general_purpose::STANDARD.encode([byte; 32]))
    }

    fn test_box() -> SecretBox {
        SecretBox::from_base64_key(&key(7)).unwrap()
    }

    /// The stored form before key ids: nonce, then ciphertext+tag, no associated data.
    fn sealed_untagged(key_byte: u8, plaintext: &str) -> Vec<u8> {
        let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&[key_byte; 32]));
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let mut out = nonce.to_vec();
        out.extend(cipher.encrypt(&nonce, plaintext.as_bytes()).unwrap());
        out
    }

    #[test]
    fn sealed_values_name_their_key_and_previous_keys_still_open_them() {
        let old = SecretBox::from_base64_key(&key(1)).unwrap();
        let sealed_old = old.seal(&Secret::new("cloud-pw"));
        assert!(sealed_old.starts_with(&old.current_header()));

        let rotated = SecretBox::new(&key(2), &[key(1)]).unwrap();
        assert_ne!(rotated.current_header(), old.current_header());
        assert_eq!(rotated.open(&sealed_old).unwrap().expose(), "cloud-pw");
        // Without the old key it no longer opens.
        let new_only = SecretBox::from_base64_key(&key(2)).unwrap();
        assert!(matches!(
            new_only.open(&sealed_old),
            Err(SecretError::Undecryptable)
        ));

        let resealed = rotated.reseal(&sealed_old).unwrap().expect("re-sealed");
        assert!(resealed.starts_with(&rotated.current_header()));
        assert_eq!(new_only.open(&resealed).unwrap().expose(), "cloud-pw");
        // Already under the current key: nothing to do.
        assert_eq!(rotated.reseal(&resealed).unwrap(), None);
    }

    #[test]
    fn values_sealed_before_key_ids_still_open_and_reseal() {
        let legacy = sealed_untagged(1, "api-key-secret");
        let rotated = SecretBox::new(&key(2), &[key(1)]).unwrap();
        assert_eq!(rotated.open(&legacy).unwrap().expose(), "api-key-secret");
        assert_eq!(
            SecretBox::from_base64_key(&key(1))
                .unwrap()
                .open(&legacy)
                .unwrap()
                .expose(),
            "api-key-secret"
        );
        let resealed = rotated.reseal(&legacy).unwrap().unwrap();
        assert!(resealed.starts_with(&rotated.current_header()));
    }

    #[test]
    fn the_key_id_is_authenticated() {
        let ring = SecretBox::new(&key(2), &[key(1)]).unwrap();
        let mut sealed = ring.seal(&Secret::new("pw"));
        // Claim it was sealed under the other key of the ring: refused, not misread.
        let other = SecretBox::from_base64_key(&key(1))
            .unwrap()
            .current_header();
        sealed[..SEALED_HEADER_LEN].copy_from_slice(&other);
        assert!(ring.open(&sealed).is_err());
    }

    #[test]
    fn a_bad_previous_key_is_named() {
        assert!(matches!(
            SecretBox::new(&key(2), &[key(1), Secret::new("c2hvcnQ=")]),
            Err(SecretError::BadPreviousKey(1))
        ));
    }

    #[test]
    fn sealed_password_round_trips_and_is_not_clear_text() {
        let sb = test_box();
        let sealed = sb.seal(&Secret::new("hunter2-password"));
        assert!(!sealed.windows(8).any(|w| w == b"hunter2-"));
        assert_eq!(sb.open(&sealed).unwrap().expose(), "hunter2-password");
    }

    #[test]
    fn tampered_ciphertext_is_refused() {
        let sb = test_box();
        let mut sealed = sb.seal(&Secret::new("pw"));
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(sb.open(&sealed).is_err());
    }

    #[test]
    fn missing_or_short_key_is_refused() {
        assert!(matches!(
            SecretBox::from_base64_key(&Secret::default()),
            Err(SecretError::MissingKey)
        ));
        assert!(matches!(
            SecretBox::from_base64_key(&Secret::new("c2hvcnQ=")),
            Err(SecretError::BadKey)
        ));
    }

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("topsecret");
        assert_eq!(format!("{s} {s:?}"), "*** \"***\"");
    }

    #[test]
    fn reused_hashing_memory_gives_the_same_answers() {
        let h = hash_password(&Secret::new("right"));
        let mut memory = Vec::new();
        for _ in 0..2 {
            assert!(verify_password_in(&Secret::new("right"), &h, &mut memory));
            assert!(!verify_password_in(&Secret::new("wrong"), &h, &mut memory));
        }
        assert_eq!(memory.len(), Params::DEFAULT.block_count());
        assert!(!verify_password_in(
            &Secret::new("right"),
            "not a hash",
            &mut memory
        ));
    }

    #[tokio::test]
    async fn the_password_checker_holds_one_memory_block_per_slot() {
        let h = hash_password(&Secret::new("right"));
        let checker = PasswordChecker::new(2);
        let checks = (0..6).map(|i| {
            let password = Secret::new(if i % 2 == 0 { "right" } else { "wrong" });
            checker.check(password, h.clone(), Duration::from_secs(30))
        });
        let answers: Vec<_> = futures::future::join_all(checks)
            .await
            .into_iter()
            .map(|a| a.unwrap())
            .collect();
        assert_eq!(
            answers,
            [true, false, true, false, true, false].map(Some).to_vec()
        );
        assert!(checker.free.lock().unwrap().len() <= 2);
        // No slot within the wait: no answer rather than a queue.
        let busy = PasswordChecker::new(1);
        let _held = busy.slots.clone().acquire_owned().await.unwrap();
        assert_eq!(
            busy.check(Secret::new("x"), h, Duration::from_millis(10))
                .await
                .unwrap(),
            None
        );
    }

    #[test]
    fn password_hash_verifies_only_the_right_password() {
        let h = hash_password(&Secret::new("right"));
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(&Secret::new("right"), &h));
        assert!(!verify_password(&Secret::new("wrong"), &h));
    }
}
