//! Tollgate behind real proxies, configured with the files the docs ship
//! (`deploy/proxies/`): nginx with njs and Caddy, each in front of a small upstream this test
//! runs, and the OpenAI Python SDK pointed at nginx. An allowed call reaches the upstream with
//! the identity headers and without the key; an unknown key is 401, a model the key may not
//! use 403, a used-up RPM 429 with `Retry-After`, each with OpenAI's error body. Each proxy
//! and the SDK is skipped with a message when missing (a failure with `CI=true`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tollgate::AuthzSettings;
use tollgate_proto::keys::v1 as pb;
use tollgate_tests::fixtures::{World, create_key, postpaid_world};
use tollgate_tests::http::post as http;
use tollgate_tests::{Harness, Options};

const GATEWAY_TOKEN: &str = "gateway-token-for-the-proxy-tests";

/// The model backend: records each request's headers, answers a chat completion.
#[derive(Clone, Default)]
struct Upstream(Arc<Mutex<Vec<HashMap<String, String>>>>);

impl Upstream {
    async fn start(&self) -> SocketAddr {
        let seen = self.0.clone();
        let app = axum::Router::new().fallback(move |headers: http::HeaderMap| {
            let seen = seen.clone();
            async move {
                let headers = headers
                    .iter()
                    .map(|(name, value)| (name.as_str().to_owned(), value.to_str().unwrap_or_default().to_owned()))
                    .collect();
                seen.lock().unwrap().push(headers);
                let completion = serde_json::json!({
                    "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "upstream",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
                });
                ([(http::header::CONTENT_TYPE, "application/json")], completion.to_string())
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        address
    }

    fn last(&self) -> HashMap<String, String> {
        self.0.lock().unwrap().last().cloned().expect("the upstream was called")
    }

    fn calls(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

fn free_address() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

async fn wait_listening(address: SocketAddr, child: &mut tokio::process::Child, what: &str) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(address).await.is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited: {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not listen on {address}");
}

/// Whether `program` runs here; a missing one skips, or fails under `CI=true`.
fn available(program: &str, args: &[&str]) -> bool {
    let found = std::process::Command::new(program).args(args).output().is_ok_and(|o| o.status.success());
    if !found {
        tollgate_test_support::unavailable(program, format!("`{program} {}` did not run", args.join(" ")));
    }
    found
}

fn repo_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// A server with a gateway token, trusting loopback proxies, and a world with keys.
struct Setup {
    h: Harness,
    w: World,
    key: pb::Key,
    secret: String,
    /// RPM 1.
    once: String,
}

async fn setup() -> Setup {
    let authz = AuthzSettings {
        gateway_token: Some(GATEWAY_TOKEN.into()),
        trusted_proxies: vec!["127.0.0.0/8".parse().unwrap()],
        ..Default::default()
    };
    let h = Harness::embedded(Options { authz, ..Default::default() }).await;
    let w = postpaid_world(&h, "proxied").await;
    let (key, secret) = create_key(&h, &w, w.key("Proxied")).await;
    let (_, once) = create_key(&h, &w, pb::Key { rpm_limit: Some(1), ..w.key("Once a minute") }).await;
    Setup { h, w, key, secret, once }
}

/// The checks every proxy passes, calling `path` with the model given as `with_model` does.
async fn denials_and_allow(
    s: &Setup,
    proxy: SocketAddr,
    upstream: &Upstream,
    call: impl Fn(&str, &str) -> (String, Vec<(String, String)>, String),
) {
    let send = |secret: &str, model: &str| {
        let (path, headers, body) = call(secret, model);
        async move {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            http(proxy, &path, &headers, &body).await
        }
    };
    let before = upstream.calls();
    let allowed = send(&s.secret, &s.w.model).await;
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    assert!(allowed.body.contains("chat.completion"));
    let seen = upstream.last();
    assert_eq!(seen.get("x-tollgate-key"), Some(&s.key.name), "{seen:?}");
    assert_eq!(seen.get("x-tollgate-account"), Some(&s.w.account));
    assert_eq!(seen.get("x-tollgate-application"), Some(&s.w.application));
    assert!(seen.get("x-tollgate-request-id").is_some_and(|id| !id.is_empty()));
    assert!(!seen.contains_key("authorization"), "the key went upstream: {seen:?}");
    assert!(seen.values().all(|v| !v.contains(&s.secret)));

    let unknown = send("sk-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGH", &s.w.model).await;
    assert_eq!((unknown.status, unknown.error_code()), (401, "invalid_api_key".into()), "{}", unknown.body);
    let model = send(&s.secret, "not-in-the-catalog").await;
    assert_eq!((model.status, model.error_code()), (403, "model_not_allowed".into()), "{}", model.body);
    assert_eq!(send(&s.once, &s.w.model).await.status, 200);
    let limited = send(&s.once, &s.w.model).await;
    assert_eq!((limited.status, limited.error_code()), (429, "rate_limit_exceeded".into()), "{}", limited.body);
    assert!(limited.headers.get("retry-after").and_then(|s| s.parse::<u64>().ok()).is_some_and(|s| s >= 1));
    assert_eq!(upstream.calls(), before + 2, "only the allowed calls reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_with_njs_passes_allowed_calls_and_answers_denials_like_openai() {
    if !available("nginx", &["-v"]) {
        return;
    }
    let njs = Path::new("/usr/lib/nginx/modules/ngx_http_js_module.so");
    if !njs.exists() {
        tollgate_test_support::unavailable("nginx's njs module", format!("{} is missing", njs.display()));
        return;
    }
    let s = setup().await;
    let upstream = Upstream::default();
    let upstream_address = upstream.start().await;
    let dir = tempfile::tempdir().unwrap();
    let listen = free_address();
    let js = dir.path().join("tollgate.js");
    std::fs::write(&js, repo_file("deploy/proxies/nginx/tollgate.js")).unwrap();
    let conf = repo_file("deploy/proxies/nginx/tollgate.conf")
        .replace("${TOLLGATE_HTTP}", &s.h.authz_server().http.to_string())
        .replace("${TOLLGATE_GATEWAY_TOKEN}", GATEWAY_TOKEN)
        .replace("${UPSTREAM}", &upstream_address.to_string())
        .replace("${LISTEN}", &listen.to_string())
        .replace("${TOLLGATE_JS}", &js.display().to_string());
    std::fs::write(dir.path().join("tollgate.conf"), conf).unwrap();
    let root = dir.path().display();
    let main = format!(
        "daemon off;\nmaster_process off;\nuser root;\npid {root}/nginx.pid;\nerror_log {root}/error.log warn;\n\
         load_module {njs};\nevents {{ worker_connections 64; }}\n\
         http {{\n access_log off;\n client_body_temp_path {root}/body;\n proxy_temp_path {root}/proxy;\n\
         fastcgi_temp_path {root}/fastcgi;\n uwsgi_temp_path {root}/uwsgi;\n scgi_temp_path {root}/scgi;\n\
         include {root}/tollgate.conf;\n}}\n",
        njs = njs.display()
    );
    std::fs::write(dir.path().join("nginx.conf"), main).unwrap();
    let mut nginx = tokio::process::Command::new("nginx")
        .args(["-p", &root.to_string(), "-c", &format!("{root}/nginx.conf")])
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("nginx runs");
    wait_listening(listen, &mut nginx, "nginx").await;

    // OpenAI-style: the model is in the body, which the njs script passes to Tollgate.
    let chat = |secret: &str, model: &str| {
        let body =
            format!(r#"{{"model": "{model}", "max_tokens": 5, "messages": [{{"role": "user", "content": "hi"}}]}}"#);
        ("/v1/chat/completions".to_owned(), vec![("Authorization".to_owned(), format!("Bearer {secret}"))], body)
    };
    denials_and_allow(&s, listen, &upstream, chat).await;
    // The client also gets OpenAI's rate-limit headers (the world's group has RPM 60).
    let allowed = http(
        listen,
        "/v1/chat/completions",
        &[("Authorization", &format!("Bearer {}", s.secret))],
        &chat("", &s.w.model).2,
    )
    .await;
    assert_eq!(
        allowed.headers.get("x-ratelimit-limit-requests").map(String::as_str),
        Some("60"),
        "{:?}",
        allowed.headers
    );
    // No model anywhere: 400, never an allow.
    let no_model =
        http(listen, "/v1/chat/completions", &[("Authorization", &format!("Bearer {}", s.secret))], "{}").await;
    assert_eq!((no_model.status, no_model.error_code()), (400, "invalid_request".into()));

    // The OpenAI Python SDK raises what its users expect.
    if std::process::Command::new("python3").args(["-c", "import openai"]).output().is_ok_and(|o| o.status.success()) {
        let (_, limited) = create_key(&s.h, &s.w, pb::Key { rpm_limit: Some(1), ..s.w.key("SDK") }).await;
        let script = repo_file("tests/openai_sdk_check.py");
        let output = tokio::process::Command::new("python3")
            .args(["-c", &script, &format!("http://{listen}/v1"), &s.secret, &limited, &s.w.model])
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    } else {
        tollgate_test_support::unavailable("the openai Python package", "python3 -c 'import openai' failed");
    }
    // Tollgate away: nginx denies (fail closed) in OpenAI's shape.
    let before = upstream.calls();
    s.h.stop().await;
    let away = http(
        listen,
        "/v1/chat/completions",
        &[("Authorization", &format!("Bearer {}", s.secret))],
        &chat("", &s.w.model).2,
    )
    .await;
    assert_eq!((away.status, away.error_code()), (503, "service_unavailable".into()), "{}", away.body);
    assert_eq!(upstream.calls(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_forward_auth_passes_allowed_calls_and_answers_denials_like_openai() {
    if !available("caddy", &["version"]) {
        return;
    }
    let s = setup().await;
    let upstream = Upstream::default();
    let upstream_address = upstream.start().await;
    let dir = tempfile::tempdir().unwrap();
    let listen = free_address();
    // The shipped site, after the test's own global options (no admin API, no HTTPS).
    let caddyfile = format!("{{\n\tadmin off\n\tauto_https off\n}}\n\n{}", repo_file("deploy/proxies/caddy/Caddyfile"));
    std::fs::write(dir.path().join("Caddyfile"), caddyfile).unwrap();
    let mut caddy = tokio::process::Command::new("caddy")
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(dir.path().join("Caddyfile"))
        .env("LISTEN", format!("http://{listen}"))
        .env("TOLLGATE_HTTP", s.h.authz_server().http.to_string())
        .env("TOLLGATE_GATEWAY_TOKEN", GATEWAY_TOKEN)
        .env("UPSTREAM", upstream_address.to_string())
        .env("XDG_DATA_HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("caddy runs");
    wait_listening(listen, &mut caddy, "caddy").await;
    // forward_auth sends no body: the model comes in the model header.
    let chat = |secret: &str, model: &str| {
        let headers = vec![
            ("Authorization".to_owned(), format!("Bearer {secret}")),
            ("X-Tollgate-Model".to_owned(), model.to_owned()),
            ("X-Tollgate-Estimated-Tokens".to_owned(), "10".to_owned()),
        ];
        ("/v1/chat/completions".to_owned(), headers, format!(r#"{{"model": "{model}"}}"#))
    };
    denials_and_allow(&s, listen, &upstream, chat).await;
    // Tollgate away: Caddy denies (fail closed).
    let before = upstream.calls();
    let (path, headers, body) = chat(&s.secret, &s.w.model);
    s.h.stop().await;
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert!(http(listen, &path, &headers, &body).await.status >= 500);
    assert_eq!(upstream.calls(), before);
}
