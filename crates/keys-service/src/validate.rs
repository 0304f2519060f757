//! Field-by-field checks of proto input, turning it into domain values. Each function records
//! what is wrong under the field's path and returns a harmless value, so that one request
//! reports all of its violations at once.

use std::collections::BTreeSet;

use prost_types::{Duration, FieldMask, Timestamp};
use tollgate_core::capability::Capability;
use tollgate_core::ids::{is_valid_id, is_valid_model_id};
use tollgate_core::ip_allowlist::{self, MAX_ENTRIES};
use tollgate_core::money::PriceMultiplier;
use tollgate_core::time::Micros;
use tollgate_core::{Violations, names, page_token, validation};
use tollgate_store::PageRequest;

use crate::convert::{duration_micros, timestamp_micros};

/// Longest model list on a key or group.
pub const MAX_MODELS: usize = 500;
/// Furthest expiry accepted: about 100 years ahead.
const MAX_EXPIRY_AHEAD: Micros = 100 * 366 * 24 * 3600 * 1_000_000;

pub fn account_name(v: &mut Violations, field: &str, name: &str) -> String {
    match names::parse_account(name) {
        Some(id) => id.to_owned(),
        None => {
            v.add(field, "must be `accounts/{account}`");
            String::new()
        }
    }
}

/// `(account id, child id)` of `accounts/{a}/applications/{x}` or `accounts/{a}/keys/{x}`.
pub fn child_name(v: &mut Violations, field: &str, name: &str, collection: &str) -> (String, String) {
    let parsed = match collection {
        "applications" => names::parse_application(name),
        _ => names::parse_key(name),
    };
    match parsed {
        Some((account, child)) => (account.to_owned(), child.to_owned()),
        None => {
            v.add(field, format!("must be `accounts/{{account}}/{collection}/{{id}}`"));
            (String::new(), String::new())
        }
    }
}

pub fn group_name(v: &mut Violations, field: &str, name: &str) -> String {
    match names::parse_group(name) {
        Some(id) => id.to_owned(),
        None => {
            v.add(field, "must be `groups/{group}`");
            String::new()
        }
    }
}

pub fn model_name(v: &mut Violations, field: &str, name: &str) -> String {
    match names::parse_model(name) {
        Some(id) => id.to_owned(),
        None => {
            v.add(field, "must be `models/{model}`");
            String::new()
        }
    }
}

/// A caller-chosen id; empty means "let the server choose".
pub fn optional_id(v: &mut Violations, field: &str, id: &str) -> Option<String> {
    if id.is_empty() {
        return None;
    }
    v.check(is_valid_id(id), field, "must be 1–63 characters of a-z, 0-9 and '-', not starting or ending with '-'");
    Some(id.to_owned())
}

pub fn required_id(v: &mut Violations, field: &str, id: &str) -> String {
    if id.is_empty() {
        v.add(field, "is required");
    }
    optional_id(v, field, id).unwrap_or_default()
}

pub fn model_id(v: &mut Violations, field: &str, id: &str) -> String {
    v.check(
        is_valid_model_id(id),
        field,
        "must be 1–128 characters of letters, digits and ._:/@-, without empty segments",
    );
    id.to_owned()
}

pub fn display_name(v: &mut Violations, field: &str, name: &str) -> String {
    validation::check_display_name(v, field, name);
    name.to_owned()
}

pub fn text(v: &mut Violations, field: &str, text: &str, max: usize) -> String {
    validation::check_text(v, field, text, max);
    text.to_owned()
}

pub fn credits(v: &mut Violations, field: &str, credits: i64) -> i64 {
    validation::check_credits(v, field, credits);
    credits
}

pub fn optional_credits(v: &mut Violations, field: &str, credits: Option<i64>) -> Option<i64> {
    if let Some(value) = credits {
        validation::check_credits(v, field, value);
    }
    credits
}

pub fn optional_rate(v: &mut Violations, field: &str, limit: Option<i64>) -> Option<i64> {
    if let Some(value) = limit {
        validation::check_rate_limit(v, field, value);
    }
    limit
}

/// Model ids, syntax-checked and de-duplicated in order; whether they are in the catalog is
/// the service's check.
pub fn model_ids(v: &mut Violations, field: &str, ids: &[String]) -> Vec<String> {
    if ids.len() > MAX_MODELS {
        v.add(field, format!("may hold at most {MAX_MODELS} models, got {}", ids.len()));
        return Vec::new();
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        if !is_valid_model_id(id) {
            v.add(format!("{field}[{i}]"), "is not a valid model id");
        } else if seen.insert(id.as_str()) {
            out.push(id.clone());
        }
    }
    out
}

pub fn capabilities(v: &mut Violations, field: &str, numbers: &[i32]) -> Vec<Capability> {
    let mut out: Vec<Capability> = Vec::new();
    for (i, number) in numbers.iter().enumerate() {
        match Capability::from_number(*number) {
            Some(c) if !out.contains(&c) => out.push(c),
            Some(_) => {}
            None => v.add(format!("{field}[{i}]"), "is not a known capability"),
        }
    }
    out.sort();
    out
}

pub fn capability(v: &mut Violations, field: &str, number: i32) -> Capability {
    Capability::from_number(number).unwrap_or_else(|| {
        v.add(field, "must be a known capability");
        Capability::Text
    })
}

/// Allowlist entries in canonical CIDR form, de-duplicated in order.
pub fn ip_allowlist(v: &mut Violations, field: &str, entries: &[String]) -> Vec<String> {
    if entries.len() > MAX_ENTRIES {
        v.add(field, format!("may hold at most {MAX_ENTRIES} entries, got {}", entries.len()));
        return Vec::new();
    }
    let mut out: Vec<String> = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        match ip_allowlist::parse_entry(entry) {
            Some(net) => {
                let canonical = net.to_string();
                if !out.contains(&canonical) {
                    out.push(canonical);
                }
            }
            None => v.add(format!("{field}[{i}]"), "must be an IPv4 or IPv6 address or CIDR range"),
        }
    }
    out
}

pub fn multiplier(v: &mut Violations, field: &str, text: &str) -> PriceMultiplier {
    if text.is_empty() {
        return PriceMultiplier::ONE;
    }
    PriceMultiplier::parse(text).unwrap_or_else(|e| {
        v.add(field, e.to_string());
        PriceMultiplier::ONE
    })
}

/// Expiry from an absolute time or a duration from `now` (not both); in the future, at most
/// about 100 years ahead. `None` means never.
pub fn expiry(
    v: &mut Violations,
    (time_field, time): (&str, Option<&Timestamp>),
    (after_field, after): (&str, Option<&Duration>),
    now: Micros,
) -> Option<Micros> {
    let at = match (time, after) {
        (Some(_), Some(_)) => {
            v.add(after_field, format!("give either {after_field} or {time_field}, not both"));
            return None;
        }
        (None, None) => return None,
        (Some(ts), None) => match timestamp_micros(ts) {
            Some(at) => (time_field, at),
            None => {
                v.add(time_field, "is not a valid timestamp");
                return None;
            }
        },
        (None, Some(d)) => match duration_micros(d) {
            Some(d) if d > 0 => (after_field, now.saturating_add(d)),
            Some(_) => {
                v.add(after_field, "must be positive");
                return None;
            }
            None => {
                v.add(after_field, "is not a valid duration");
                return None;
            }
        },
    };
    let (field, at) = at;
    if at <= now {
        v.add(field, "must be in the future");
    } else if at - now > MAX_EXPIRY_AHEAD {
        v.add(field, "must be at most 100 years ahead");
    }
    Some(at)
}

/// The paths of a required update mask, each one of `allowed`.
pub fn update_mask(v: &mut Violations, mask: Option<&FieldMask>, allowed: &[&str]) -> Vec<String> {
    let paths = mask.map(|m| m.paths.as_slice()).unwrap_or_default();
    if paths.is_empty() {
        v.add("update_mask", format!("is required; allowed paths: {}", allowed.join(", ")));
        return Vec::new();
    }
    let mut out: Vec<String> = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        if !allowed.contains(&path.as_str()) {
            v.add(format!("update_mask.paths[{i}]"), format!("unknown path; allowed: {}", allowed.join(", ")));
        } else if !out.contains(path) {
            out.push(path.clone());
        }
    }
    out
}

/// A List request's page, checked.
pub fn page(v: &mut Violations, page_size: i32, token: &str, collection: &str) -> PageRequest {
    let limit = page_token::page_size(page_size).unwrap_or_else(|| {
        v.add("page_size", format!("must be 0 to {}", page_token::MAX_PAGE_SIZE));
        page_token::DEFAULT_PAGE_SIZE
    });
    let after = page_token::decode(collection, token).unwrap_or_else(|| {
        v.add("page_token", "is not a token this list returned");
        None
    });
    PageRequest { after, limit }
}

/// An optional idempotency id.
pub fn request_id(v: &mut Violations, field: &str, id: &str) -> Option<String> {
    if id.is_empty() {
        return None;
    }
    validation::check_request_id(v, field, id);
    Some(id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_rules() {
        let now = 1_000_000_000_000;
        let ts = |s: i64| Timestamp { seconds: s, nanos: 0 };
        let d = |s: i64| Duration { seconds: s, nanos: 0 };
        let mut v = Violations::new();
        assert_eq!(expiry(&mut v, ("t", None), ("a", Some(&d(60))), now), Some(now + 60_000_000));
        assert_eq!(expiry(&mut v, ("t", Some(&ts(1_000_100))), ("a", None), now), Some(1_000_100_000_000));
        assert_eq!(expiry(&mut v, ("t", None), ("a", None), now), None);
        assert!(v.is_empty(), "{v}");
        expiry(&mut v, ("t", Some(&ts(1))), ("a", None), now);
        expiry(&mut v, ("t", None), ("a", Some(&d(0))), now);
        expiry(&mut v, ("t", Some(&ts(2_000_000))), ("a", Some(&d(5))), now);
        expiry(&mut v, ("t", None), ("a", Some(&d(i64::MAX))), now);
        let fields: Vec<_> = v.items().iter().map(|i| i.field.as_str()).collect();
        assert_eq!(fields, ["t", "a", "a", "a"]);
    }

    #[test]
    fn masks_name_the_unknown_path() {
        let mut v = Violations::new();
        let mask = FieldMask { paths: vec!["display_name".into(), "secret".into(), "display_name".into()] };
        assert_eq!(update_mask(&mut v, Some(&mask), &["display_name"]), ["display_name"]);
        assert_eq!(v.items()[0].field, "update_mask.paths[1]");
        let mut v = Violations::new();
        update_mask(&mut v, None, &["display_name"]);
        assert_eq!(v.items()[0].field, "update_mask");
    }

    #[test]
    fn lists_are_canonical_and_bounded() {
        let mut v = Violations::new();
        let ips = ip_allowlist(&mut v, "ips", &["10.1.2.3/8".into(), "10.0.0.0/8".into(), "::1".into()]);
        assert_eq!(ips, ["10.0.0.0/8", "::1/128"]);
        assert_eq!(capabilities(&mut v, "c", &[3, 1, 3]), [Capability::Text, Capability::Embeddings]);
        assert!(v.is_empty());
        capabilities(&mut v, "c", &[0, 99]);
        ip_allowlist(&mut v, "ips", &["nope".into()]);
        model_ids(&mut v, "m", &vec!["x".to_string(); MAX_MODELS + 1]);
        let fields: Vec<_> = v.items().iter().map(|i| i.field.as_str()).collect();
        assert_eq!(fields, ["c[0]", "c[1]", "ips[0]", "m"]);
    }
}
