//! Opaque page tokens for keyset pagination, and page-size rules shared by every List RPC.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Page size when the request gives 0.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Largest page size accepted.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// Turns a request's `page_size` into a limit; `None` when it is out of range.
pub fn page_size(requested: i32) -> Option<u32> {
    match requested {
        0 => Some(DEFAULT_PAGE_SIZE),
        n if n < 0 => None,
        n => u32::try_from(n).ok().filter(|n| *n <= MAX_PAGE_SIZE),
    }
}

/// Encodes the sort key of the last item of a page, tagged with the collection it is for.
pub fn encode(collection: &str, last_sort_key: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{collection}\u{0}{last_sort_key}"))
}

/// Decodes a token made by [`encode`] for `collection`; an empty token is the first page
/// (`Some(None)`), a token that is not ours is `None`.
pub fn decode(collection: &str, token: &str) -> Option<Option<String>> {
    if token.is_empty() {
        return Some(None);
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (tag, key) = text.split_once('\u{0}')?;
    (tag == collection).then(|| Some(key.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_are_bound_to_their_collection() {
        let token = encode("keys", "0abc");
        assert_eq!(decode("keys", &token), Some(Some("0abc".to_owned())));
        assert_eq!(decode("accounts", &token), None);
        assert_eq!(decode("keys", ""), Some(None));
        assert_eq!(decode("keys", "!!!"), None);
    }

    #[test]
    fn page_sizes() {
        assert_eq!(page_size(0), Some(DEFAULT_PAGE_SIZE));
        assert_eq!(page_size(1), Some(1));
        assert_eq!(page_size(1000), Some(1000));
        assert_eq!(page_size(1001), None);
        assert_eq!(page_size(-1), None);
    }
}
