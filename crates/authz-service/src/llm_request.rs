//! Reading an LLM API call as a proxy passes it on (headers, path, and the body when the
//! proxy sends it) into what Authorize decides on. Shared by Envoy's `Check` and the HTTP
//! forward-auth endpoint, so both read a call the same way. No I/O.
//!
//! | what | where it is read from, first found wins |
//! |---|---|
//! | key | `Authorization: Bearer …`, `x-api-key` (Anthropic), `api-key` (Azure), `x-goog-api-key` or `?key=` (Gemini) |
//! | capability | the path (below), else `x-tollgate-capability` |
//! | model | the JSON body's `model`, else the path (Gemini `/models/{model}:…`, Azure `/deployments/{model}/…`), else the model header (`x-tollgate-model`) |
//! | estimated tokens | the body's `max_tokens` / `max_completion_tokens` / `max_output_tokens` (Gemini: `generationConfig.maxOutputTokens`) plus the body's size / 4 for the prompt; else `x-tollgate-estimated-tokens` (the whole call); else the configured default plus the body's size / 4 |
//! | request id | `x-request-id`, else a new one |

use std::net::IpAddr;

use http::HeaderMap;
use serde_json::value::RawValue;
use tollgate_core::{Capability, validation};

use crate::authorize::AuthorizeInput;

/// Bytes of a request body counted as one prompt token: a deliberately generous estimate (JSON
/// syntax and field names count too), so a hold rarely falls short of the call.
pub const BODY_BYTES_PER_TOKEN: i64 = 4;
/// Largest estimate a call can carry (as the gRPC `Authorize` accepts).
const MAX_ESTIMATED_TOKENS: i64 = 1_000_000_000;
/// Longest model id accepted; longer ones cannot be in the catalog.
const MAX_MODEL_LEN: usize = 128;

/// How calls are read.
#[derive(Debug, Clone)]
pub struct ReadSettings {
    /// The header a model may come in when neither body nor path names one.
    pub model_header: String,
    /// Tokens held for a call nothing says the size of.
    pub default_estimated_tokens: i64,
}

impl Default for ReadSettings {
    fn default() -> Self {
        Self { model_header: "x-tollgate-model".into(), default_estimated_tokens: 1000 }
    }
}

/// A call's headers, looked up by lower-case name: an `http::HeaderMap` (forward-auth), or
/// the map Envoy sends in `Check` (lower-case names already), read in place.
pub trait Headers: Sync + std::fmt::Debug {
    fn header(&self, name: &str) -> Option<&str>;
}

impl Headers for HeaderMap {
    fn header(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| v.to_str().ok())
    }
}

impl<S: std::hash::BuildHasher + Sync> Headers for std::collections::HashMap<String, String, S> {
    fn header(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

/// A call as a proxy passes it on.
#[derive(Debug, Clone, Copy)]
pub struct ProxiedCall<'a> {
    /// The path and query the client asked for (`/v1/chat/completions?x=1`).
    pub path: &'a str,
    pub headers: &'a dyn Headers,
    /// The body, when the proxy sends it (Envoy with `with_request_body`).
    pub body: Option<&'a [u8]>,
    /// The client's address, as the adapter established it.
    pub client_ip: Option<IpAddr>,
}

/// A call that cannot be decided on: the client's fault, answered 400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub message: String,
    /// The request part at fault (`model`, `body`, …), as OpenAI's error `param`.
    pub param: &'static str,
}

fn unreadable(param: &'static str, message: impl Into<String>) -> Unreadable {
    Unreadable { message: message.into(), param }
}

/// The key a call carries; empty when it carries none (which Authorize denies as malformed).
pub fn api_key(headers: &dyn Headers, query: Option<&str>) -> String {
    let header = |name: &str| headers.header(name).map(str::trim);
    if let Some(token) = header("authorization").and_then(tollgate_auth::bearer_token) {
        return token.to_owned();
    }
    for name in ["x-api-key", "api-key", "x-goog-api-key"] {
        if let Some(key) = header(name).filter(|key| !key.is_empty()) {
            return key.to_owned();
        }
    }
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("key="))
        .map(str::to_owned)
        .unwrap_or_default()
}

/// What the path says the call does: OpenAI's, Anthropic's, Gemini's and Azure's paths.
pub fn capability_of_path(path: &str) -> Option<Capability> {
    let path = path.trim_end_matches('/');
    let ends = |suffix: &str| path.ends_with(suffix);
    if path.contains("/audio/transcriptions") || path.contains("/audio/translations") {
        Some(Capability::Stt)
    } else if path.contains("/audio/speech") {
        Some(Capability::Tts)
    } else if path.contains("/images/") || ends("/images") {
        Some(Capability::Image)
    } else if ends("/embeddings") || ends(":embedContent") || ends(":batchEmbedContents") {
        Some(Capability::Embeddings)
    } else if ends("/chat/completions")
        || ends("/completions")
        || ends("/responses")
        || ends("/messages")
        || ends(":generateContent")
        || ends(":streamGenerateContent")
    {
        Some(Capability::Text)
    } else {
        None
    }
}

/// The model a path names: Gemini's `/models/{model}:{method}`, Azure's
/// `/deployments/{model}/…`.
pub fn model_of_path(path: &str) -> Option<&str> {
    let segments: Vec<&str> = path.split('/').collect();
    segments.windows(2).find_map(|pair| match pair {
        ["models", rest] => rest.split_once(':').map(|(model, _)| model).filter(|m| !m.is_empty()),
        ["deployments", model] if !model.is_empty() => Some(*model),
        _ => None,
    })
}

/// What a JSON body says of the call.
#[derive(Debug, Default, PartialEq, Eq)]
struct BodyFacts {
    model: Option<String>,
    max_output_tokens: Option<i64>,
}

/// The fields of a body that matter, each kept unparsed until it is read: the rest of the
/// body (the messages, mostly) is skipped without being built.
#[derive(serde::Deserialize)]
struct RawBody<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(borrow, default)]
    max_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    max_completion_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    max_output_tokens: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "generationConfig")]
    generation_config: Option<RawGeneration<'a>>,
}

#[derive(serde::Deserialize)]
struct RawGeneration<'a> {
    #[serde(borrow, default, rename = "maxOutputTokens")]
    max_output_tokens: Option<&'a RawValue>,
}

fn body_facts(body: &[u8]) -> Result<BodyFacts, Unreadable> {
    // serde would also read a struct from an array: only an object is a call's body.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        let json = serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok();
        return Err(unreadable(
            "body",
            if json { "the request body is not a JSON object" } else { "the request body is not JSON" },
        ));
    }
    let raw: RawBody<'_> = serde_json::from_slice(body).map_err(|error| match error.classify() {
        serde_json::error::Category::Data => unreadable("body", "the request body is not a JSON object"),
        _ => unreadable("body", "the request body is not JSON"),
    })?;
    let model = match raw.model.map(|m| serde_json::from_str::<Option<std::borrow::Cow<'_, str>>>(m.get())) {
        None | Some(Ok(None)) => None,
        Some(Ok(Some(model))) => Some(model.into_owned()),
        Some(Err(_)) => return Err(unreadable("model", "model must be a string")),
    };
    let generation = raw.generation_config.and_then(|g| g.max_output_tokens);
    let limits = [raw.max_tokens, raw.max_completion_tokens, raw.max_output_tokens, generation];
    let mut max_output_tokens = None;
    for value in limits.into_iter().flatten() {
        let tokens = match serde_json::from_str::<Option<i64>>(value.get()) {
            Ok(None) => continue,
            Ok(Some(tokens)) if (0..=MAX_ESTIMATED_TOKENS).contains(&tokens) => tokens,
            _ => return Err(unreadable("max_tokens", "max_tokens must be a whole number of tokens")),
        };
        max_output_tokens = Some(max_output_tokens.unwrap_or(0).max(tokens));
    }
    Ok(BodyFacts { model, max_output_tokens })
}

/// Reads `call` into what Authorize decides on.
pub fn read(call: &ProxiedCall<'_>, settings: &ReadSettings) -> Result<AuthorizeInput, Unreadable> {
    let (path, query) = call.path.split_once('?').map_or((call.path, None), |(p, q)| (p, Some(q)));
    let header = |name: &str| call.headers.header(name).map(str::trim);
    let capability = match capability_of_path(path) {
        Some(capability) => capability,
        None => match header("x-tollgate-capability") {
            Some(name) => Capability::from_name(name).ok_or_else(|| {
                unreadable("capability", format!("x-tollgate-capability {name:?} is not a capability"))
            })?,
            None => {
                return Err(unreadable(
                    "capability",
                    "the path is not a model call Tollgate knows; name it in x-tollgate-capability",
                ));
            }
        },
    };
    let facts = match call.body {
        Some(body) if !body.is_empty() => body_facts(body)?,
        _ => BodyFacts::default(),
    };
    let model = facts
        .model
        .or_else(|| model_of_path(path).map(str::to_owned))
        .or_else(|| header(&settings.model_header).map(str::to_owned))
        .filter(|model| !model.is_empty())
        .ok_or_else(|| unreadable("model", "the request names no model"))?;
    if model.len() > MAX_MODEL_LEN {
        return Err(unreadable("model", format!("model must be at most {MAX_MODEL_LEN} characters")));
    }
    let prompt = call.body.map_or(0, |body| body.len() as i64 / BODY_BYTES_PER_TOKEN);
    let whole_call = |value: &str| {
        value.parse::<i64>().ok().filter(|t| (0..=MAX_ESTIMATED_TOKENS).contains(t)).ok_or_else(|| {
            unreadable("x-tollgate-estimated-tokens", "x-tollgate-estimated-tokens must be a whole number")
        })
    };
    let estimated_tokens = match (facts.max_output_tokens, header("x-tollgate-estimated-tokens")) {
        (Some(output), _) => output.saturating_add(prompt),
        (None, Some(value)) => whole_call(value)?,
        (None, None) => settings.default_estimated_tokens.saturating_add(prompt),
    }
    .min(MAX_ESTIMATED_TOKENS);
    let request_id = match header("x-request-id").filter(|id| !id.is_empty()) {
        Some(id) => {
            let mut v = tollgate_core::Violations::new();
            validation::check_request_id(&mut v, "x-request-id", id);
            if v.into_result().is_err() {
                return Err(unreadable("x-request-id", "x-request-id must be at most 100 printable characters"));
            }
            id.to_owned()
        }
        None => tollgate_core::ids::new_id(),
    };
    Ok(AuthorizeInput {
        api_key: api_key(call.headers, query),
        model,
        capability,
        client_ip: call.client_ip,
        estimated_tokens,
        request_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        map
    }

    fn read_call(path: &str, pairs: &[(&str, &str)], body: Option<&str>) -> Result<AuthorizeInput, Unreadable> {
        let headers = headers(pairs);
        let call = ProxiedCall { path, headers: &headers, body: body.map(str::as_bytes), client_ip: None };
        read(&call, &ReadSettings::default())
    }

    #[test]
    fn keys_come_from_every_vendor_s_place() {
        let key = |pairs: &[(&str, &str)], query: Option<&str>| api_key(&headers(pairs), query);
        assert_eq!(key(&[("authorization", "Bearer sk-a")], None), "sk-a");
        assert_eq!(key(&[("authorization", "bearer  sk-a ")], None), "sk-a");
        assert_eq!(key(&[("x-api-key", "sk-b")], None), "sk-b");
        assert_eq!(key(&[("api-key", "sk-c")], None), "sk-c");
        assert_eq!(key(&[("x-goog-api-key", "sk-d")], None), "sk-d");
        assert_eq!(key(&[], Some("alt=sse&key=sk-e")), "sk-e");
        assert_eq!(key(&[("authorization", "Basic abc")], None), "");
        assert_eq!(key(&[], None), "");
    }

    #[test]
    fn paths_say_what_a_call_does() {
        let cases = [
            ("/v1/chat/completions", Some(Capability::Text)),
            ("/v1/completions", Some(Capability::Text)),
            ("/v1/responses", Some(Capability::Text)),
            ("/v1/messages", Some(Capability::Text)),
            ("/v1beta/models/gemini-pro:generateContent", Some(Capability::Text)),
            ("/v1/images/generations", Some(Capability::Image)),
            ("/v1/embeddings", Some(Capability::Embeddings)),
            ("/v1/audio/speech", Some(Capability::Tts)),
            ("/v1/audio/transcriptions", Some(Capability::Stt)),
            ("/v1/audio/translations", Some(Capability::Stt)),
            ("/v1/models", None),
        ];
        for (path, capability) in cases {
            assert_eq!(capability_of_path(path), capability, "{path}");
        }
    }

    #[test]
    fn the_body_names_the_model_before_the_path_and_the_header() {
        let body = r#"{"model": "from-body", "max_tokens": 100}"#;
        let input = read_call("/v1/chat/completions", &[("x-tollgate-model", "from-header")], Some(body)).unwrap();
        assert_eq!(input.model, "from-body");
        assert_eq!(input.estimated_tokens, 100 + body.len() as i64 / BODY_BYTES_PER_TOKEN);
        let gemini = read_call("/v1beta/models/gemini-pro:generateContent", &[], None).unwrap();
        assert_eq!(gemini.model, "gemini-pro");
        let azure = read_call("/openai/deployments/gpt-4o/chat/completions", &[], None).unwrap();
        assert_eq!(azure.model, "gpt-4o");
        let header = read_call("/v1/chat/completions", &[("x-tollgate-model", "m")], None).unwrap();
        assert_eq!((header.model.as_str(), header.estimated_tokens), ("m", 1000));
    }

    #[test]
    fn no_model_or_an_unreadable_body_is_a_bad_request() {
        assert_eq!(read_call("/v1/chat/completions", &[], None).unwrap_err().param, "model");
        assert_eq!(read_call("/v1/chat/completions", &[], Some("{not json")).unwrap_err().param, "body");
        assert_eq!(read_call("/v1/chat/completions", &[], Some(r#"{"model": 3}"#)).unwrap_err().param, "model");
        let null = read_call("/v1/chat/completions", &[], Some(r#"{"model": "m", "max_tokens": null}"#)).unwrap();
        assert_eq!(null.model, "m");
        assert_eq!(read_call("/v1/chat/completions", &[], Some("[1]")).unwrap_err().param, "body");
        let negative = r#"{"model": "m", "max_tokens": -1}"#;
        assert_eq!(read_call("/v1/chat/completions", &[], Some(negative)).unwrap_err().param, "max_tokens");
        assert_eq!(read_call("/v1/models", &[("x-tollgate-model", "m")], None).unwrap_err().param, "capability");
    }

    #[test]
    fn estimates_and_request_ids_fall_back_in_order() {
        let estimated =
            read_call("/v1/embeddings", &[("x-tollgate-estimated-tokens", "42"), ("x-tollgate-model", "m")], None);
        assert_eq!(estimated.unwrap().estimated_tokens, 42);
        let gemini = r#"{"generationConfig": {"maxOutputTokens": 10}}"#;
        let input = read_call("/v1beta/models/g:generateContent", &[("x-request-id", "abc")], Some(gemini)).unwrap();
        assert_eq!(input.estimated_tokens, 10 + gemini.len() as i64 / BODY_BYTES_PER_TOKEN);
        assert_eq!(input.request_id, "abc");
        assert!(!read_call("/v1/embeddings", &[("x-tollgate-model", "m")], None).unwrap().request_id.is_empty());
    }
}
