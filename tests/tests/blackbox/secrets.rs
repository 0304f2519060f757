//! Secrets never reach the database or an error message.

use tollgate_proto::keys::v1 as pb;
use tollgate_tests::fixtures::{create_key, world};
use tollgate_tests::{Backend, Harness, on_both_backends};

on_both_backends!(no_secret_is_stored_in_clear, errors_never_echo_a_secret);

/// Every byte the database holds, as text: the SQLite files, or every row of every table of
/// the Postgres database as JSON.
async fn database_contents(h: &Harness) -> String {
    match h.backend {
        Backend::Embedded => {
            let mut all = Vec::new();
            for suffix in ["", "-wal", "-shm"] {
                if let Ok(bytes) = std::fs::read(format!("{}{suffix}", h.database)) {
                    all.extend(bytes);
                }
            }
            String::from_utf8_lossy(&all).into_owned()
        }
        Backend::Production => {
            use sqlx::{Connection, Row};
            let mut conn = sqlx::PgConnection::connect(&h.database).await.unwrap();
            let tables = sqlx::query("SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema NOT IN ('pg_catalog', 'information_schema')")
                .fetch_all(&mut conn)
                .await
                .unwrap();
            assert!(tables.len() >= 8, "every table of the keys schema is read");
            let mut dump = String::new();
            for table in tables {
                let schema: String = table.get("table_schema");
                let name: String = table.get("table_name");
                let sql = format!("SELECT row_to_json(t)::text AS row FROM \"{schema}\".\"{name}\" t");
                for row in sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&mut conn).await.unwrap() {
                    dump.push_str(&row.get::<String, _>("row"));
                    dump.push('\n');
                }
            }
            dump
        }
    }
}

async fn no_secret_is_stored_in_clear(h: &Harness) {
    let w = world(h, "vault").await;
    let (key, first) = create_key(h, &w, w.key("Plain")).await;
    let rotated = h
        .keys()
        .rotate_key(pb::RotateKeyRequest { name: key.name.clone(), grace_period: None })
        .await
        .unwrap()
        .into_inner()
        .created
        .unwrap();
    let hint = rotated.key.unwrap().hint;
    let rotated = rotated.secret;
    let batch = h
        .keys()
        .batch_create_keys(pb::BatchCreateKeysRequest {
            parent: w.account.clone(),
            key: Some(w.key("Idempotent")),
            quantity: 3,
            request_id: "vault-req".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut secrets = vec![first, rotated];
    secrets.extend(batch.created.into_iter().map(|c| c.secret));

    let contents = database_contents(h).await;
    assert!(contents.contains(&hint), "the dump is real: it holds the current hint");
    for secret in &secrets {
        // The random body alone (without `sk-` and the checksum) must not appear either.
        let body = &secret[3..3 + tollgate_core::key_format::BODY_LEN];
        assert!(!contents.contains(body), "a secret is stored in clear");
    }
    assert!(!contents.contains(&h.key_pepper), "the pepper is not stored");
    assert!(!contents.contains(&h.admin_token), "the admin token is not stored");
}

async fn errors_never_echo_a_secret(h: &Harness) {
    let w = world(h, "echo").await;
    let (_, secret) = create_key(h, &w, w.key("Echo")).await;
    let attempts = [
        h.keys()
            .create_key(w.create(pb::Key { ip_allowlist: vec![secret.clone()], ..w.key("Bad ip") }))
            .await
            .map(drop),
        h.keys()
            .create_key(w.create(pb::Key { allowed_models: vec![secret.clone()], ..w.key("Bad model") }))
            .await
            .map(drop),
        h.keys().create_key(w.create(pb::Key { group: secret.clone(), ..w.key("Bad group") })).await.map(drop),
        h.keys().get_key(pb::GetKeyRequest { name: secret.clone() }).await.map(drop),
        h.keys().get_key(pb::GetKeyRequest { name: format!("{}/keys/{secret}", w.account) }).await.map(drop),
        h.keys()
            .create_key(pb::CreateKeyRequest { request_id: format!("{secret} {secret}"), ..w.create(w.key("Bad id")) })
            .await
            .map(drop),
        h.key_state().get_key_state(pb::GetKeyStateRequest { secret_hash: secret.as_bytes().to_vec() }).await.map(drop),
    ];
    for attempt in attempts {
        let status = attempt.expect_err("each attempt is refused");
        let shown = format!("{} {:?}", status.message(), status.details());
        assert!(!shown.contains(&secret[3..]), "an error echoed the secret: {shown}");
    }
}
