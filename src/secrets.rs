//! Secrets: a string that never prints, cloud-password encryption at rest (AES-256-GCM),
//! and user-password hashing (argon2id).

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, OsRng};
use aes_gcm::{AeadCore, Aes256Gcm, Key, Nonce};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine;
use serde::Deserialize;

/// A string that must not leak: `Debug` and `Display` print `***`.
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
    #[error("a stored secret could not be decrypted (wrong secrets.key?)")]
    Undecryptable,
}

/// Encrypts and decrypts cloud passwords. Stored form: 12-byte nonce, then ciphertext+tag.
#[derive(Clone)]
pub struct SecretBox {
    cipher: Aes256Gcm,
}

impl fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBox(***)")
    }
}

const NONCE_LEN: usize = 12;

impl SecretBox {
    pub fn from_base64_key(key: &Secret) -> Result<SecretBox, SecretError> {
        if key.is_empty() {
            return Err(SecretError::MissingKey);
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(key.expose().trim())
            .map_err(|_| SecretError::BadKey)?;
        if bytes.len() != 32 {
            return Err(SecretError::BadKey);
        }
        Ok(SecretBox {
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&bytes)),
        })
    }

    pub fn seal(&self, plaintext: &Secret) -> Vec<u8> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ciphertext = self
            .cipher
            .encrypt(&nonce, plaintext.expose().as_bytes())
            // AES-GCM encryption fails only for inputs over 64 GiB.
            .expect("AES-GCM encryption of a password cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ciphertext);
        out
    }

    pub fn open(&self, sealed: &[u8]) -> Result<Secret, SecretError> {
        if sealed.len() < NONCE_LEN {
            return Err(SecretError::Undecryptable);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let plaintext = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), ciphertext)
            .map_err(|_| SecretError::Undecryptable)?;
        String::from_utf8(plaintext)
            .map(Secret)
            .map_err(|_| SecretError::Undecryptable)
    }
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
    PasswordHash::new(phc_hash)
        .map(|hash| {
            Argon2::default()
                .verify_password(password.expose().as_bytes(), &hash)
                .is_ok()
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_box() -> SecretBox {
        SecretBox::from_base64_key(&Secret::new(
            base64::engine::general_purpose::STANDARD.encode([7u8; 32]),
        ))
        .unwrap()
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
    fn password_hash_verifies_only_the_right_password() {
        let h = hash_password(&Secret::new("right"));
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(&Secret::new("right"), &h));
        assert!(!verify_password(&Secret::new("wrong"), &h));
    }
}
