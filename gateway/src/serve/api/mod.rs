//! The antivirus API server: Cloudmersive's virus-scan API
//! (`POST /virus/scan/file` and `/virus/scan/file/advanced`, a multipart
//! form with the file as `inputFile`, the key in `Apikey`) answered by the
//! scanning core, so that applications and edge gateways (`backend =
//! "api"`) can use a farm of scan servers like the cloud service.
//!
//! HTTP/1.1 with keep-alive, plain or over TLS; heads read with httparse;
//! bodies with Content-Length or chunked, streamed through the form reader
//! into the scan without being held. Answers: 200 with the JSON result,
//! 400 (malformed), 401 (key), 404, 405, 408, 411, 413, 415, 431, 503 (a
//! full server, or a scanner that could not answer: the caller's own
//! policy decides then).

mod conn;
pub mod multipart;
pub mod settings;

use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use self::settings::ApiServer as Settings;
use super::Front;
use crate::scan::Scanner;

/// The API server: settings, key, TLS, the scanning core, counters.
pub struct Server {
    cfg: Settings,
    key: Option<String>,
    tls: Option<TlsAcceptor>,
    scanner: Arc<Scanner>,
    /// Listener, cap, counters, read limits.
    pub front: Front,
}

impl Server {
    /// A server for `[api_server]` on `scanner`: reads the key file and
    /// the certificate now, so that a broken one stops the start.
    pub fn new(cfg: &Settings, scanner: Arc<Scanner>) -> anyhow::Result<Server> {
        let key = crate::scan::api::read_key(&cfg.key_file, "api_server.key_file")?;
        let tls = if cfg.tls_cert.as_os_str().is_empty() { None } else { Some(acceptor(cfg)?) };
        Ok(Server {
            cfg: cfg.clone(),
            key,
            tls,
            scanner,
            front: Front::new("API server", &cfg.listen, cfg.max_connections, limits(cfg)),
        })
    }
}

/// The TLS side: certificate chain and key from PEM files.
fn acceptor(cfg: &Settings) -> anyhow::Result<TlsAcceptor> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.tls_cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .with_context(|| format!("reading api_server.tls_cert {}", cfg.tls_cert.display()))?;
    anyhow::ensure!(!certs.is_empty(), "api_server.tls_cert {} holds no certificate", cfg.tls_cert.display());
    let key = PrivateKeyDer::from_pem_file(&cfg.tls_key)
        .with_context(|| format!("reading api_server.tls_key {}", cfg.tls_key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("api_server.tls_cert and tls_key do not make a usable certificate")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves API connections on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, server: Arc<Server>) {
    let (handle_with, refuse_with) = (server.clone(), server.clone());
    let handle = move |stream, peer| {
        let server = handle_with.clone();
        async move { handle(stream, peer, &server).await }
    };
    let refuse = move |stream| {
        let server = refuse_with.clone();
        async move { refuse(stream, &server).await }
    };
    super::accept(listener, &server.front, handle, refuse).await;
}

async fn handle(stream: TcpStream, peer: std::net::SocketAddr, server: &Server) {
    match &server.tls {
        None => conn::Conn::new(stream, peer, server).run().await,
        Some(tls) => {
            let wait = server.cfg.io_timeout.0;
            match tokio::time::timeout(wait, tls.accept(stream)).await {
                Ok(Ok(s)) => conn::Conn::new(s, peer, server).run().await,
                Ok(Err(e)) => tracing::info!("API client {peer}: TLS handshake failed: {e}"),
                Err(_) => tracing::info!("API client {peer}: TLS handshake timed out"),
            }
        }
    }
}

/// A full server: 503 (over TLS too, when configured) and close.
async fn refuse(stream: TcpStream, server: &Server) {
    let out = conn::json_response(503, "Service Unavailable", &conn::error_json("too many connections"), true);
    let wait = std::time::Duration::from_secs(5);
    let _ = tokio::time::timeout(wait, async {
        use tokio::io::AsyncWriteExt as _;
        match &server.tls {
            None => {
                let mut s = stream;
                s.write_all(&out).await
            }
            Some(tls) => {
                let mut s = tls.accept(stream).await?;
                s.write_all(&out).await?;
                s.shutdown().await
            }
        }
    })
    .await;
}

/// How the server's connections read requests.
fn limits(cfg: &Settings) -> crate::serve::read::Limits {
    crate::serve::read::Limits { max_head: cfg.max_head.0 as usize, idle: cfg.idle_timeout.0, io: cfg.io_timeout.0 }
}
