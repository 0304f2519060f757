//! Resource ids: server-chosen ones sort by creation time; caller-chosen ones follow one rule.

use std::time::{SystemTime, UNIX_EPOCH};

const CROCKFORD: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// Longest id accepted.
pub const MAX_ID_LEN: usize = 63;

/// Makes a 16-character id: 48 bits of milliseconds then 32 random bits, in lower-case
/// Crockford base32, so ids sort by creation time and keyset pagination follows it.
pub fn new_id() -> String {
    let millis = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let mut random = [0u8; 4];
    getrandom::fill(&mut random).expect("the OS random source is available");
    let value: u128 = (u128::from(millis & 0xFFFF_FFFF_FFFF) << 32) | u128::from(u32::from_be_bytes(random));
    (0..16).rev().map(|i| CROCKFORD[((value >> (i * 5)) & 31) as usize] as char).collect()
}

/// Makes a random positive 63-bit number naming one database commit: unique enough that two
/// commits a day apart never share one.
pub fn new_commit_id() -> i64 {
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).expect("the OS random source is available");
    (u64::from_be_bytes(random) >> 1).max(1) as i64
}

/// Checks a caller-chosen id: 1–63 characters of `a-z`, `0-9` and `-`, starting with a
/// letter or digit and not ending with `-`.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
        && !id.ends_with('-')
}

/// Checks a model id: 1–128 characters of letters, digits and `._:/@-`, not starting or ending
/// with `/` and without an empty segment.
pub fn is_valid_model_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'/' | b'@' | b'-'))
        && !id.starts_with('/')
        && !id.ends_with('/')
        && !id.contains("//")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_are_valid_and_sort_by_time() {
        let first = new_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = new_id();
        assert!(is_valid_id(&first));
        assert_eq!(first.len(), 16);
        assert!(first < second);
    }

    #[test]
    fn id_rules() {
        for good in ["a", "acme", "acme-prod-2", "0"] {
            assert!(is_valid_id(good), "{good}");
        }
        for bad in ["", "-a", "a-", "Acme", "a_b", "a/b", &"a".repeat(64)] {
            assert!(!is_valid_id(bad), "{bad}");
        }
        for good in ["gpt-4o", "openai/gpt-4o", "claude-3.5:sonnet@2024"] {
            assert!(is_valid_model_id(good), "{good}");
        }
        for bad in ["", "/x", "x/", "a//b", "a b", &"m".repeat(129)] {
            assert!(!is_valid_model_id(bad), "{bad}");
        }
    }
}
