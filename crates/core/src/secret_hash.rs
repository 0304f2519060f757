//! Keyed hashing of key secrets: only HMAC-SHA256(pepper, secret) is ever stored or sent
//! between services, so a leaked database or cache does not leak usable keys.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The server-side secret every key hash is keyed with. `Debug` never shows it.
#[derive(Clone)]
pub struct KeyPepper(Vec<u8>);

/// Shortest pepper accepted, in bytes.
pub const MIN_PEPPER_LEN: usize = 32;

impl KeyPepper {
    /// Wraps a pepper of at least [`MIN_PEPPER_LEN`] bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, PepperTooShort> {
        let bytes = bytes.into();
        if bytes.len() < MIN_PEPPER_LEN {
            return Err(PepperTooShort(bytes.len()));
        }
        Ok(Self(bytes))
    }

    /// Hashes a key secret (already checked for well-formedness by the caller).
    pub fn hash(&self, secret: &str) -> SecretHash {
        SecretHash(self.mac(b"key-secret:v1", secret.as_bytes()))
    }

    /// Derives a 32-byte subkey for another purpose, so one pepper serves several uses
    /// without the outputs of one being usable for another.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        self.mac(b"derive:v1", purpose.as_bytes())
    }

    fn mac(&self, domain: &[u8], message: &[u8]) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(domain);
        mac.update(message);
        mac.finalize().into_bytes().into()
    }
}

impl fmt::Debug for KeyPepper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyPepper(..)")
    }
}

/// The pepper given was shorter than [`MIN_PEPPER_LEN`].
#[derive(Debug, thiserror::Error)]
#[error("key pepper must be at least {MIN_PEPPER_LEN} bytes, got {0}")]
pub struct PepperTooShort(usize);

/// HMAC-SHA256 of a key secret: what the stores, caches and internal RPCs identify it by.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretHash(pub [u8; 32]);

impl SecretHash {
    /// Lower-case hex, as stored in databases and cache keys.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses lower- or upper-case hex of 32 bytes.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(Self(bytes))
    }

    /// Takes exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        Some(Self(bytes.try_into().ok()?))
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretHash({}…)", &self.to_hex()[..12])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashing_is_keyed_and_deterministic() {
        let a = KeyPepper::new(vec![1u8; 32]).unwrap();
        let b = KeyPepper::new(vec![2u8; 32]).unwrap();
        assert_eq!(a.hash("sk-x"), a.hash("sk-x"));
        assert_ne!(a.hash("sk-x"), b.hash("sk-x"));
        assert_ne!(a.hash("sk-x"), a.hash("sk-y"));
        assert_ne!(a.derive("x"), a.hash("x").0);
    }

    #[test]
    fn short_peppers_are_refused_and_never_printed() {
        assert!(KeyPepper::new(vec![0u8; 31]).is_err());
        let pepper = KeyPepper::new(b"0123456789abcdef0123456789abcdef".to_vec()).unwrap();
        assert_eq!(format!("{pepper:?}"), "KeyPepper(..)");
    }

    #[test]
    fn hex_round_trips() {
        let pepper = KeyPepper::new(vec![7u8; 40]).unwrap();
        let hash = pepper.hash("sk-anything");
        assert_eq!(SecretHash::from_hex(&hash.to_hex()), Some(hash));
        assert_eq!(SecretHash::from_hex("zz"), None);
        assert_eq!(SecretHash::from_slice(&[0u8; 31]), None);
    }
}
