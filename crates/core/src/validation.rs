//! Field validation: every rule names the field it checks, and all violations of a request are
//! reported together.

use std::fmt;

/// One field that is wrong and why, as `google.rpc.BadRequest.FieldViolation` carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field, e.g. `key.ip_allowlist[2]`.
    pub field: String,
    /// What is wrong, in lower case without the value when the value could be a secret.
    pub description: String,
}

/// Collects violations while a request is checked.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// An empty collection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `field` is wrong.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation { field: field.into(), description: description.into() });
    }

    /// Records a violation when `ok` is false.
    pub fn check(&mut self, ok: bool, field: impl Into<String>, description: impl Into<String>) {
        if !ok {
            self.add(field, description);
        }
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Ok when nothing was recorded, else every violation.
    pub fn into_result(self) -> Result<(), Violations> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }

    /// The violations recorded.
    pub fn items(&self) -> &[FieldViolation] {
        &self.0
    }

    /// Adds all of `other`.
    pub fn extend(&mut self, other: Violations) {
        self.0.extend(other.0);
    }
}

impl From<FieldViolation> for Violations {
    fn from(violation: FieldViolation) -> Self {
        Self(vec![violation])
    }
}

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", v.field, v.description)?;
        }
        Ok(())
    }
}

/// Display names are 2–50 characters with no control characters.
pub fn check_display_name(v: &mut Violations, field: &str, name: &str) {
    let count = name.chars().count();
    if !(2..=50).contains(&count) {
        v.add(field, format!("must be 2 to 50 characters, got {count}"));
    } else if name.chars().any(char::is_control) {
        v.add(field, "must not contain control characters");
    } else if name.trim().chars().count() < 2 {
        v.add(field, "must not be blank");
    }
}

/// Free text of at most `max` characters with no control characters except newlines.
pub fn check_text(v: &mut Violations, field: &str, text: &str, max: usize) {
    if text.chars().count() > max {
        v.add(field, format!("must be at most {max} characters"));
    } else if text.chars().any(|c| c.is_control() && c != '\n') {
        v.add(field, "must not contain control characters");
    }
}

/// Idempotency ids: at most 100 printable ASCII characters.
pub fn check_request_id(v: &mut Violations, field: &str, id: &str) {
    if id.len() > 100 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        v.add(field, "must be at most 100 printable ASCII characters without spaces");
    }
}

/// Credit amounts: 0 to [`crate::money::MAX_CREDITS`].
pub fn check_credits(v: &mut Violations, field: &str, credits: i64) {
    if credits < 0 {
        v.add(field, "must not be negative");
    } else if credits > crate::money::MAX_CREDITS {
        v.add(field, format!("must be at most {}", crate::money::MAX_CREDITS));
    }
}

/// Largest rate limit accepted (per minute).
pub const MAX_RATE_LIMIT: i64 = 1_000_000_000_000;

/// Rate limits: 1 to [`MAX_RATE_LIMIT`] per minute.
pub fn check_rate_limit(v: &mut Violations, field: &str, limit: i64) {
    if limit < 1 {
        v.add(field, "must be at least 1");
    } else if limit > MAX_RATE_LIMIT {
        v.add(field, format!("must be at most {MAX_RATE_LIMIT}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names() {
        let mut v = Violations::new();
        check_display_name(&mut v, "a", "ok");
        check_display_name(&mut v, "b", &"x".repeat(50));
        check_display_name(&mut v, "c", "ü€");
        assert!(v.is_empty(), "{v}");
        check_display_name(&mut v, "d", "x");
        check_display_name(&mut v, "e", &"x".repeat(51));
        check_display_name(&mut v, "f", "a\u{0}");
        check_display_name(&mut v, "g", "  ");
        let fields: Vec<_> = v.items().iter().map(|i| i.field.as_str()).collect();
        assert_eq!(fields, ["d", "e", "f", "g"]);
    }

    #[test]
    fn numbers_and_ids() {
        let mut v = Violations::new();
        check_credits(&mut v, "ok", 0);
        check_rate_limit(&mut v, "ok", 1);
        check_request_id(&mut v, "ok", "req-1");
        assert!(v.is_empty());
        check_credits(&mut v, "neg", -1);
        check_credits(&mut v, "big", crate::money::MAX_CREDITS + 1);
        check_rate_limit(&mut v, "zero", 0);
        check_request_id(&mut v, "space", "a b");
        check_request_id(&mut v, "long", &"a".repeat(101));
        assert_eq!(v.items().len(), 5);
    }
}
