use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tollgate::cli::{Cli, Command, KeysArgs, SecretArgs, ServiceKind};
use tollgate::{DevConfig, KeysServeConfig, KeysSettings, dev, server, telemetry};
use tollgate_state::redis::RedisConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let shutdown = CancellationToken::new();
    server::cancel_on_signal(shutdown.clone());
    match cli.command {
        Command::Dev(args) => {
            let admin_token = match args.secrets.admin_token.clone() {
                Some(token) => token,
                None => dev::load_or_generate(&args.data_dir, "admin-token")?,
            };
            let key_pepper = match args.secrets.key_pepper.clone() {
                Some(pepper) => pepper,
                None => dev::load_or_generate(&args.data_dir, "key-pepper")?,
            };
            let listener = TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
            let address = listener.local_addr()?;
            println!("Tollgate dev: every service on {address} (SQLite in {})", args.data_dir.display());
            println!("admin token: {admin_token}");
            println!("try: grpcurl -plaintext -H 'authorization: Bearer {admin_token}' {address} list");
            let config = DevConfig {
                data_dir: args.data_dir,
                keys: keys_settings(&args.keys, admin_token, key_pepper),
                drain: args.shutdown_drain,
            };
            tollgate::run_dev(listener, config, shutdown).await
        }
        Command::Serve(args) => {
            let (admin_token, key_pepper) = required_secrets(&args.secrets)?;
            let listener = TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
            tracing::info!(address = %listener.local_addr()?, service = ?args.service, "serving");
            match args.service {
                ServiceKind::Keys => {
                    let config = KeysServeConfig {
                        database_url: args.database_url,
                        db_max_connections: args.db_max_connections,
                        migrate_on_start: args.migrate_on_start,
                        redis: RedisConfig {
                            url: args.redis_url,
                            prefix: args.redis_prefix,
                            op_timeout: args.redis_timeout,
                        },
                        keys: keys_settings(&args.keys, admin_token, key_pepper),
                        drain: args.shutdown_drain,
                    };
                    tollgate::run_keys(listener, config, shutdown).await
                }
            }
        }
        Command::Migrate(args) => {
            tollgate::migrate(&args.database_url).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
    }
}

fn required_secrets(secrets: &SecretArgs) -> anyhow::Result<(String, String)> {
    let admin_token = secrets.admin_token.clone().context("TOLLGATE_ADMIN_TOKEN (--admin-token) is required")?;
    anyhow::ensure!(admin_token.len() >= 16, "TOLLGATE_ADMIN_TOKEN must be at least 16 characters");
    let key_pepper = secrets.key_pepper.clone().context("TOLLGATE_KEY_PEPPER (--key-pepper) is required")?;
    Ok((admin_token, key_pepper))
}

fn keys_settings(args: &KeysArgs, admin_token: String, key_pepper: String) -> KeysSettings {
    KeysSettings {
        admin_token,
        key_pepper,
        max_rpm: args.max_rpm,
        max_tpm: args.max_tpm,
        credits_per_usd: args.credits_per_usd,
        rotation_grace: args.rotation_grace,
    }
}
