//! HTTP forward-auth called directly, as a proxy calls it, on every backend: calls with the
//! large bodies LLM requests carry (images inlined) are read whole, and one beyond the limit
//! is answered in OpenAI's shape, not with a bare 413.

use tollgate_proto::keys::v1 as pb;
use tollgate_tests::Harness;
use tollgate_tests::fixtures::{create_key, postpaid_world};
use tollgate_tests::http::post;

tollgate_tests::on_both_backends!(large_bodies_are_read_whole_and_too_large_ones_refused_like_openai);

async fn large_bodies_are_read_whole_and_too_large_ones_refused_like_openai(h: &Harness) {
    let w = postpaid_world(h, "fwd-large").await;
    let (key, secret) = create_key(h, &w, pb::Key { ..w.key("Vision") }).await;
    let bearer = format!("Bearer {secret}");
    let headers = [
        ("Authorization", bearer.as_str()),
        ("X-Tollgate-Gateway-Token", h.admin_token.as_str()),
        ("X-Forwarded-Uri", "/v1/chat/completions"),
    ];
    let body = |image_bytes: usize| {
        let image = "A".repeat(image_bytes);
        format!(
            r#"{{"model": "{}", "max_tokens": 10, "messages": [{{"role": "user", "content": "{image}"}}]}}"#,
            w.model
        )
    };
    // Beyond axum's default 2 MB.
    let allowed = post(h.authz_server().http, "/v1/forward-auth", &headers, &body(3 << 20)).await;
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    assert_eq!(allowed.header("x-tollgate-key"), Some(key.name.as_str()));
    let refused = post(h.authz_server().http, "/v1/forward-auth", &headers, &body(33 << 20)).await;
    assert_eq!((refused.status, refused.error_code()), (413, "request_too_large".to_owned()), "{}", refused.body);
}
