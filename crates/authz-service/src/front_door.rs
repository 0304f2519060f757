//! The one call every HTTP front door makes (Envoy's `Check`, forward-auth): read the proxied
//! call, decide it with the same [`Authorizer`] the gRPC `Authorize` uses, and say what the
//! proxy should do, in HTTP terms. The doors only translate this into their protocol, so they
//! can never disagree.

use crate::authorize::Authorizer;
use crate::decision::Decision;
use crate::llm_request::{self, ProxiedCall, ReadSettings};
use crate::openai::{self, ErrorAnswer};

/// How the HTTP front doors behave.
#[derive(Debug, Clone)]
pub struct FrontDoorSettings {
    pub read: ReadSettings,
    /// Take the client's key off the request before it goes upstream, so the model backend
    /// never sees a platform key.
    pub strip_key: bool,
}

impl Default for FrontDoorSettings {
    fn default() -> Self {
        Self { read: ReadSettings::default(), strip_key: true }
    }
}

/// What the proxy should do with a call.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Send it upstream with `upstream_headers` added and `remove_headers` removed, and add
    /// `response_headers` to what the client gets back.
    Allow {
        upstream_headers: Vec<(&'static str, String)>,
        remove_headers: &'static [&'static str],
        response_headers: Vec<(&'static str, String)>,
    },
    /// Answer the client with this instead.
    Deny(ErrorAnswer),
}

/// Decides on one proxied call.
pub async fn decide(authorizer: &Authorizer, call: &ProxiedCall<'_>, settings: &FrontDoorSettings) -> Verdict {
    let input = match llm_request::read(call, &settings.read) {
        Ok(input) => input,
        Err(unreadable) => return Verdict::Deny(openai::unreadable(&unreadable)),
    };
    match authorizer.authorize(&input).await {
        Ok(Decision::Allow(allowed)) => Verdict::Allow {
            upstream_headers: openai::identity_headers(&allowed, &input.request_id).into(),
            remove_headers: if settings.strip_key { &openai::KEY_HEADERS } else { &[] },
            response_headers: allowed.headroom.as_ref().map(openai::rate_limit_headers).unwrap_or_default(),
        },
        Ok(Decision::Deny(denied)) => Verdict::Deny(openai::denied(&denied)),
        Err(error) => {
            error.note();
            Verdict::Deny(openai::unavailable())
        }
    }
}
