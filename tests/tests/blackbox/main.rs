//! Black-box tests: every keys.v1 RPC through the generated clients, against the real
//! server on both backends.

mod accounts_and_catalog;
mod authz;
mod authz_faults;
mod cross_account;
mod envoy;
mod forward_auth;
mod key_holder_http;
mod key_state;
mod keys_api;
mod metering;
mod metrics;
mod outages;
mod secrets;
mod server;
mod service_token;
mod undecodable;
mod validation;

use tonic::Code;

/// Asserts a call failed with `code`.
#[track_caller]
pub fn assert_code<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code) -> tonic::Status {
    match result {
        Ok(value) => panic!("expected {code:?}, got Ok({value:?})"),
        Err(status) => {
            assert_eq!(status.code(), code, "unexpected status: {status:?}");
            status
        }
    }
}

/// The fields named by a status's `BadRequest` details.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .bad_request()
        .map(|bad| bad.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}
