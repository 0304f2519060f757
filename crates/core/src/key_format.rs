//! The `sk-…` key format: a prefix, a random base62 body and a CRC32 checksum, so that a
//! malformed or mistyped key is recognised without any lookup.
//!
//! `sk-` + 36 base62 characters from the OS CSPRNG (36 × log2 62 ≈ 214 bits) + 6 base62
//! characters of CRC32 over the body. A CRC detects every single-character change in the body;
//! a changed checksum character decodes to another value (or an impossible one), so any
//! single-character change is rejected.

use std::fmt;

/// Every key starts with this.
pub const PREFIX: &str = "sk-";
/// Random base62 characters after the prefix.
pub const BODY_LEN: usize = 36;
/// Base62 characters of checksum at the end.
pub const CHECKSUM_LEN: usize = 6;
/// Total length of a well-formed key.
pub const KEY_LEN: usize = PREFIX.len() + BODY_LEN + CHECKSUM_LEN;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Why a string is not a well-formed key. Never carries the key itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MalformedKey {
    #[error("key does not start with `sk-`")]
    WrongPrefix,
    #[error("key has the wrong length")]
    WrongLength,
    #[error("key holds a character outside base62")]
    BadCharacter,
    #[error("key checksum does not match")]
    BadChecksum,
}

/// A full key secret. Its `Debug` and `Display` never show it; use [`ApiKeySecret::expose`]
/// where the secret must leave the process (the one response that returns it).
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeySecret(String);

impl ApiKeySecret {
    /// Generates a new key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut body = String::with_capacity(BODY_LEN);
        let mut pool = [0u8; 64];
        while body.len() < BODY_LEN {
            getrandom::fill(&mut pool).expect("the OS random source is available");
            // 248 = 4 × 62: rejecting bytes at or above it keeps every character equally likely.
            for &byte in pool.iter().filter(|&&b| b < 248) {
                if body.len() == BODY_LEN {
                    break;
                }
                body.push(BASE62[usize::from(byte % 62)] as char);
            }
        }
        let mut key = String::with_capacity(KEY_LEN);
        key.push_str(PREFIX);
        key.push_str(&body);
        key.push_str(&encode_checksum(checksum(body.as_bytes())));
        Self(key)
    }

    /// Parses a caller-supplied string, checking prefix, length, alphabet and checksum.
    pub fn parse(candidate: &str) -> Result<Self, MalformedKey> {
        validate(candidate)?;
        Ok(Self(candidate.to_owned()))
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The masked form shown in lists: `sk-` + the first four body characters + `…` + the
    /// last four characters.
    pub fn hint(&self) -> String {
        hint_of(&self.0)
    }
}

impl fmt::Debug for ApiKeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeySecret({})", self.hint())
    }
}

/// Checks that `candidate` is a well-formed key without copying it.
pub fn validate(candidate: &str) -> Result<(), MalformedKey> {
    let Some(rest) = candidate.strip_prefix(PREFIX) else {
        return Err(MalformedKey::WrongPrefix);
    };
    if rest.len() != BODY_LEN + CHECKSUM_LEN {
        return Err(MalformedKey::WrongLength);
    }
    if !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(MalformedKey::BadCharacter);
    }
    let (body, sum) = rest.split_at(BODY_LEN);
    match decode_checksum(sum) {
        Some(value) if value == checksum(body.as_bytes()) => Ok(()),
        _ => Err(MalformedKey::BadChecksum),
    }
}

fn hint_of(key: &str) -> String {
    let body = &key[PREFIX.len()..];
    format!("{PREFIX}{}…{}", &body[..4], &key[key.len() - 4..])
}

fn checksum(body: &[u8]) -> u32 {
    crc32fast::hash(body)
}

fn encode_checksum(mut value: u32) -> String {
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(value % 62) as usize];
        value /= 62;
    }
    String::from_utf8(out.to_vec()).expect("base62 is ASCII")
}

fn decode_checksum(text: &str) -> Option<u32> {
    let mut value: u64 = 0;
    for byte in text.bytes() {
        let digit = match byte {
            b'0'..=b'9' => byte - b'0',
            b'A'..=b'Z' => byte - b'A' + 10,
            b'a'..=b'z' => byte - b'a' + 36,
            _ => return None,
        };
        value = value * 62 + u64::from(digit);
    }
    u32::try_from(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn generated_keys_have_the_documented_shape() {
        let key = ApiKeySecret::generate();
        assert_eq!(key.expose().len(), KEY_LEN);
        assert!(key.expose().starts_with(PREFIX));
        assert_eq!(validate(key.expose()), Ok(()));
        assert_ne!(ApiKeySecret::generate(), key);
    }

    #[test]
    fn hint_masks_the_middle_and_debug_hides_the_secret() {
        let key = ApiKeySecret::generate();
        let hint = key.hint();
        assert!(hint.starts_with(&key.expose()[..7]));
        assert!(hint.ends_with(&key.expose()[KEY_LEN - 4..]));
        assert_eq!(hint.chars().count(), 3 + 4 + 1 + 4);
        assert!(!format!("{key:?}").contains(key.expose()));
    }

    #[test]
    fn rejects_each_kind_of_malformation() {
        let key = ApiKeySecret::generate();
        let text = key.expose();
        assert_eq!(validate(&text.replacen("sk-", "pk-", 1)), Err(MalformedKey::WrongPrefix));
        assert_eq!(validate(&text[..KEY_LEN - 1]), Err(MalformedKey::WrongLength));
        assert_eq!(validate(&format!("{text}x")), Err(MalformedKey::WrongLength));
        let mut bad_char = text.to_owned();
        bad_char.replace_range(10..11, "_");
        assert_eq!(validate(&bad_char), Err(MalformedKey::BadCharacter));
        assert_eq!(validate(""), Err(MalformedKey::WrongPrefix));
        // A checksum field that decodes past u32::MAX is impossible, not a panic.
        let overflow = format!("{}zzzzzz", &text[..KEY_LEN - CHECKSUM_LEN]);
        assert_eq!(validate(&overflow), Err(MalformedKey::BadChecksum));
    }

    proptest! {
        #[test]
        fn generate_then_parse_round_trips(_seed in 0u8..32) {
            let key = ApiKeySecret::generate();
            let parsed = ApiKeySecret::parse(key.expose()).expect("a generated key parses");
            prop_assert_eq!(parsed, key);
        }

        #[test]
        fn any_single_character_change_is_rejected(position in 0usize..KEY_LEN, replacement in 0usize..62) {
            let key = ApiKeySecret::generate();
            let original = key.expose().as_bytes()[position];
            let new = BASE62[replacement];
            prop_assume!(new != original);
            let mut changed = key.expose().as_bytes().to_vec();
            changed[position] = new;
            let changed = String::from_utf8(changed).unwrap();
            prop_assert!(validate(&changed).is_err());
        }

        #[test]
        fn arbitrary_input_never_panics(input in ".{0,80}") {
            let _ = validate(&input);
        }
    }
}
