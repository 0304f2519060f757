//! Sealing the secrets of a create request, so that a retry with the same request id can be
//! answered with the same secrets without any secret being stored in clear.
//!
//! ChaCha20-Poly1305 under a key derived from the key pepper; the account and request id are
//! bound in as associated data, so a sealed blob cannot be replayed for another request.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use tollgate_core::KeyPepper;

const NONCE_LEN: usize = 12;

/// Seals and opens lists of secrets.
#[derive(Clone)]
pub struct Sealer {
    cipher: ChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// A sealer keyed by the pepper.
    pub fn new(pepper: &KeyPepper) -> Self {
        let key = pepper.derive("create-request-secrets:v1");
        Self { cipher: ChaCha20Poly1305::new(&key.into()) }
    }

    /// Encrypts `secrets`, bound to `context`.
    pub fn seal(&self, context: &str, secrets: &[&str]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the OS random source is available");
        let plaintext = serde_json::to_vec(secrets).expect("strings serialise");
        let ciphertext = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: &plaintext, aad: context.as_bytes() })
            .expect("encryption of a small message cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ciphertext);
        STANDARD.encode(out)
    }

    /// Decrypts what [`Sealer::seal`] made for the same `context`; `None` if it was tampered
    /// with, sealed under another pepper or for another context.
    pub fn open(&self, context: &str, sealed: &str) -> Option<Vec<String>> {
        let bytes = STANDARD.decode(sealed).ok()?;
        if bytes.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let plaintext =
            self.cipher.decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad: context.as_bytes() }).ok()?;
        serde_json::from_slice(&plaintext).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_only_for_the_same_context_and_pepper() {
        let sealer = Sealer::new(&KeyPepper::new(vec![1u8; 32]).unwrap());
        let sealed = sealer.seal("acme/req-1", &["sk-one", "sk-two"]);
        assert!(!sealed.contains("sk-one"));
        assert_eq!(sealer.open("acme/req-1", &sealed), Some(vec!["sk-one".into(), "sk-two".into()]));
        assert_eq!(sealer.open("acme/req-2", &sealed), None);
        let other = Sealer::new(&KeyPepper::new(vec![2u8; 32]).unwrap());
        assert_eq!(other.open("acme/req-1", &sealed), None);
        assert_eq!(sealer.open("acme/req-1", "not base64!"), None);
    }
}
