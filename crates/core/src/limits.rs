//! Rate limits: a key's own value, else its group's default, never above the system cap.

/// Highest RPM and TPM any key may have; `None` means no cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SystemCaps {
    pub max_rpm: Option<i64>,
    pub max_tpm: Option<i64>,
}

/// A requested limit that the cap lowered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clamp {
    /// The field as an update-mask path.
    pub field: &'static str,
    pub requested: i64,
    pub applied: i64,
}

/// Lowers `value` to `cap`, reporting when it had to.
pub fn clamp(field: &'static str, value: Option<i64>, cap: Option<i64>) -> (Option<i64>, Option<Clamp>) {
    match (value, cap) {
        (Some(requested), Some(cap)) if requested > cap => (Some(cap), Some(Clamp { field, requested, applied: cap })),
        (value, _) => (value, None),
    }
}

/// The limit that applies to a key: its own, else the group default, capped. `None` means
/// unlimited.
pub fn effective(own: Option<i64>, group_default: Option<i64>, cap: Option<i64>) -> Option<i64> {
    let chosen = own.or(group_default);
    match (chosen, cap) {
        (Some(v), Some(c)) => Some(v.min(c)),
        (Some(v), None) => Some(v),
        (None, cap) => cap,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_then_group_then_cap() {
        assert_eq!(effective(Some(10), Some(20), Some(100)), Some(10));
        assert_eq!(effective(None, Some(20), Some(100)), Some(20));
        assert_eq!(effective(Some(500), Some(20), Some(100)), Some(100));
        assert_eq!(effective(None, None, Some(100)), Some(100));
        assert_eq!(effective(None, None, None), None);
        assert_eq!(effective(None, Some(7), None), Some(7));
    }

    #[test]
    fn clamps_only_above_the_cap() {
        assert_eq!(clamp("rpm_limit", Some(50), Some(60)), (Some(50), None));
        let (value, notice) = clamp("rpm_limit", Some(70), Some(60));
        assert_eq!(value, Some(60));
        assert_eq!(notice, Some(Clamp { field: "rpm_limit", requested: 70, applied: 60 }));
        assert_eq!(clamp("rpm_limit", Some(70), None), (Some(70), None));
    }
}
