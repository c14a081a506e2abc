//! `cairn-broker`: the credential broker (see `cairn_engine::broker`), served over TLS.
//!
//! Thin by design: flags, TLS, HTTP routing and logs; verification, mapping and minting are the
//! engine's. It never logs a token, a credential or a key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cairn_engine::broker::Broker;
use clap::Parser;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Serve short-lived, workspace-scoped store credentials to pods that present a projected
/// service-account token.
#[derive(Parser, Debug)]
#[command(name = "cairn-broker", version)]
struct Args {
    /// The broker's configuration (JSON: issuer, audience, jwks_file, store, role_arn,
    /// session_seconds, key_dir, namespaces).
    #[arg(long, env = "CAIRN_BROKER_CONFIG")]
    config: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "CAIRN_BROKER_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// TLS certificate chain (PEM).
    #[arg(long, env = "CAIRN_BROKER_TLS_CERT")]
    tls_cert: PathBuf,
    /// TLS private key (PEM).
    #[arg(long, env = "CAIRN_BROKER_TLS_KEY")]
    tls_key: PathBuf,
    /// Log format on stderr: text or json.
    #[arg(long, env = "CAIRN_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

/// Connections served at once.
const MAX_CONNECTIONS: usize = 1024;

fn tls_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig> {
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("--tls-cert {}", cert.display()))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .with_context(|| format!("--tls-cert {}: not PEM certificates", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("--tls-key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not match")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn refuse(status: u16, message: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, Json(serde_json::json!({ "error": message }))).into_response()
}

async fn credentials(
    State(broker): State<Arc<Broker>>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: HeaderMap,
) -> Response {
    // `?key=false`: a refresh, which needs credentials only.
    let with_key = query
        .as_deref()
        .is_none_or(|q| !q.split('&').any(|kv| kv == "key=false"));
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        tracing::warn!("refused: no bearer token");
        return refuse(
            401,
            "send the pod's projected service-account token as Authorization: Bearer",
        );
    };
    match broker.issue_with(token, with_key).await {
        Ok(issued) => Json(issued).into_response(),
        Err(r) => {
            tracing::warn!(status = r.status, reason = %r.message, "refused");
            refuse(r.status, &r.message)
        }
    }
}

async fn serve(args: Args) -> Result<()> {
    let broker = Arc::new(Broker::from_file(&args.config).await?);
    let tls = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(&args.tls_cert, &args.tls_key)?));
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/v1/credentials", post(credentials))
        .with_state(broker);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}", args.listen))?;
    tracing::info!(listen = %args.listen, "serving");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // At most this many connections at once; more wait in the listen queue.
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = slots.clone().acquire_owned().await?;
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors or memory, for now: never a reason to stop serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = term.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let (tls, app) = (tls.clone(), app.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let stream = match tokio::time::timeout(Duration::from_secs(10), tls.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let conn = hyper::server::conn::http1::Builder::new()
                .header_read_timeout(Duration::from_secs(10))
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_format == "json" {
        builder.json().init();
    } else {
        builder.with_target(false).init();
    }
    cairn_engine::no_core_dumps();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cairn-broker: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairn-broker: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
