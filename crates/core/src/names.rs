//! Resource names, `accounts/{account}/keys/{key}` and friends: parsing and formatting.

use crate::ids::{is_valid_id, is_valid_model_id};

/// Formats `accounts/{account}`.
pub fn account(account_id: &str) -> String {
    format!("accounts/{account_id}")
}

/// Formats `accounts/{account}/applications/{application}`.
pub fn application(account_id: &str, application_id: &str) -> String {
    format!("accounts/{account_id}/applications/{application_id}")
}

/// Formats `accounts/{account}/keys/{key}`.
pub fn key(account_id: &str, key_id: &str) -> String {
    format!("accounts/{account_id}/keys/{key_id}")
}

/// Formats `groups/{group}`.
pub fn group(group_id: &str) -> String {
    format!("groups/{group_id}")
}

/// Formats `models/{model}`.
pub fn model(model_id: &str) -> String {
    format!("models/{model_id}")
}

/// Parses `accounts/{account}` into the account id.
pub fn parse_account(name: &str) -> Option<&str> {
    let id = name.strip_prefix("accounts/")?;
    is_valid_id(id).then_some(id)
}

/// Parses `accounts/{account}/applications/{application}` into both ids.
pub fn parse_application(name: &str) -> Option<(&str, &str)> {
    parse_child(name, "applications")
}

/// Parses `accounts/{account}/keys/{key}` into both ids.
pub fn parse_key(name: &str) -> Option<(&str, &str)> {
    parse_child(name, "keys")
}

/// Parses `groups/{group}` into the group id.
pub fn parse_group(name: &str) -> Option<&str> {
    let id = name.strip_prefix("groups/")?;
    is_valid_id(id).then_some(id)
}

/// Parses `models/{model}` into the model id (which may contain `/`).
pub fn parse_model(name: &str) -> Option<&str> {
    let id = name.strip_prefix("models/")?;
    is_valid_model_id(id).then_some(id)
}

fn parse_child<'a>(name: &'a str, collection: &str) -> Option<(&'a str, &'a str)> {
    let rest = name.strip_prefix("accounts/")?;
    let (account, rest) = rest.split_once('/')?;
    let child = rest.strip_prefix(collection)?.strip_prefix('/')?;
    (is_valid_id(account) && is_valid_id(child)).then_some((account, child))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        assert_eq!(parse_account(&account("acme")), Some("acme"));
        assert_eq!(parse_application(&application("acme", "web")), Some(("acme", "web")));
        assert_eq!(parse_key(&key("acme", "k1")), Some(("acme", "k1")));
        assert_eq!(parse_group(&group("pro")), Some("pro"));
        assert_eq!(parse_model(&model("openai/gpt-4o")), Some("openai/gpt-4o"));
    }

    #[test]
    fn rejects_other_shapes() {
        for bad in ["", "accounts/", "accounts/ACME", "account/acme", "accounts/a/b"] {
            assert_eq!(parse_account(bad), None, "{bad}");
        }
        for bad in ["accounts/a/keys/", "accounts/a/applications/x", "accounts/a/keys/x/y", "keys/x"] {
            assert_eq!(parse_key(bad), None, "{bad}");
        }
        assert_eq!(parse_application("accounts/a/keys/x"), None);
        assert_eq!(parse_model("models/"), None);
    }
}
