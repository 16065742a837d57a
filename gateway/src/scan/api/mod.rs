//! Antivirus-API backend: Cloudmersive's virus-scan API (or the gateway's
//! own API server, [`crate::serve::api`]). The body goes as the
//! `inputFile` part of a multipart form, chunked as it arrives, to
//! `POST {url}/virus/scan/file` with the key in `Apikey`; the answer is
//! `{"CleanResult": bool, "FoundViruses": [{"FileName", "VirusName"}]}`.
//!
//! HTTPS with the system's certificate authorities (plus `ca_file`) and
//! the usual checks of name and chain; connections are kept for the next
//! scan. Errors, refusals and timeouts are error verdicts (`on_error`).

mod http;
pub mod settings;

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio_rustls::TlsConnector;

use self::http::Stream;
use super::{
    ScanMeta,
    backend::{Backend, Body, BoxFuture, Slots},
    idle::Idle,
};
use crate::verdict::{ErrorKind, Verdict};

/// A base URL that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Neither `https://` nor `http://`.
    #[error("API URL {0:?} must start with https:// (or http:// on a trusted network)")]
    Scheme(String),
    /// No host, or a bad port.
    #[error("API URL {0:?} needs a host (and a numeric port, if any)")]
    Host(String),
}

/// A parsed base URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiUrl {
    /// As configured.
    pub url: String,
    /// Whether TLS is used.
    pub tls: bool,
    /// Host name or address (without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path prefix without a trailing `/` (often empty).
    pub base: String,
}

impl ApiUrl {
    /// Parses `https://host[:port][/path]`.
    pub fn parse(url: &str) -> Result<ApiUrl, UrlError> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(UrlError::Scheme(url.into()));
        };
        let (authority, base) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        let bad = || UrlError::Host(url.into());
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(bad)?;
            (h, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port = match port {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if tls => 443,
            None => 80,
        };
        if host.is_empty() {
            return Err(bad());
        }
        let base = base.trim_end_matches('/');
        let base = if base.is_empty() { String::new() } else { format!("/{base}") };
        Ok(ApiUrl { url: url.into(), tls, host: host.into(), port, base })
    }

    /// The Host header value.
    fn authority(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        let default = if self.tls { 443 } else { 80 };
        if self.port == default { host } else { format!("{host}:{}", self.port) }
    }
}

/// One API endpoint: a member of the scanner pool.
pub struct ApiClient {
    url: ApiUrl,
    key: Option<String>,
    tls: Option<TlsConnector>,
    timeout: Duration,
    io_timeout: Duration,
    slots: Slots,
    max: usize,
    idle: Idle<Stream>,
}

/// The TLS client configuration: the system's authorities and `ca_file`.
fn connector(ca_file: &Path) -> anyhow::Result<TlsConnector> {
    use rustls::pki_types::{CertificateDer, pem::PemObject as _};
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(native.certs);
    if !ca_file.as_os_str().is_empty() {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca_file)
            .and_then(|it| it.collect::<Result<_, _>>())
            .with_context(|| format!("reading scan.api.ca_file {}", ca_file.display()))?;
        let (ok, _) = roots.add_parsable_certificates(certs);
        anyhow::ensure!(ok > 0, "scan.api.ca_file {} holds no usable certificate", ca_file.display());
    } else {
        anyhow::ensure!(
            added > 0,
            "no system certificate authorities found (install ca-certificates or set scan.api.ca_file)"
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The API key in `path` (`key` names the setting): none for an empty
/// path or an empty file.
pub fn read_key(path: &Path, key: &str) -> anyhow::Result<Option<String>> {
    if path.as_os_str().is_empty() {
        return Ok(None);
    }
    let k = std::fs::read_to_string(path).with_context(|| format!("reading {key} {}", path.display()))?;
    Ok(Some(k.trim().to_string()).filter(|k| !k.is_empty()))
}

/// One member per `[scan.api] url`.
pub fn members(cfg: &crate::scan::settings::Scan) -> anyhow::Result<Vec<Box<dyn Backend>>> {
    let api = &cfg.api;
    anyhow::ensure!(!api.url.is_empty(), "scan.api.url lists no URL");
    let key = read_key(&api.key_file, "scan.api.key_file")?;
    let urls: Vec<ApiUrl> = api.url.iter().map(|u| ApiUrl::parse(u)).collect::<Result<_, _>>()?;
    let tls = if urls.iter().any(|u| u.tls) { Some(connector(&api.ca_file)?) } else { None };
    let max = if cfg.max_scans > 0 { cfg.max_scans.min(api.max_connections) } else { api.max_connections };
    Ok(urls
        .into_iter()
        .map(|url| {
            Box::new(ApiClient {
                tls: if url.tls { tls.clone() } else { None },
                url,
                key: key.clone(),
                timeout: api.timeout.0,
                io_timeout: cfg.io_timeout.0,
                slots: Slots::new(cfg.queue_timeout.0),
                max: max.max(1),
                idle: Idle::new(max.max(1), Duration::MAX),
            }) as Box<dyn Backend>
        })
        .collect())
}

impl ApiClient {
    async fn connect(&self) -> Result<Stream, Verdict> {
        let addr = format!("{}:{}", self.url.authority_host(), self.url.port);
        http::connect(&addr, &self.url, self.tls.as_ref(), self.io_timeout).await
    }

    async fn scan_body(&self, meta: &ScanMeta, body: &mut Body) -> Verdict {
        let max = self.max;
        let _slot = match self.slots.acquire(|| async move { max }).await {
            Ok(s) => s,
            Err(v) => return v,
        };
        let run = async {
            loop {
                let (mut stream, reused) = match self.idle.take_or(self.connect()).await {
                    Ok(s) => s,
                    Err(v) => return v,
                };
                let req = http::Request {
                    url: &self.url,
                    key: self.key.as_deref(),
                    name: &meta.name,
                    io_timeout: self.io_timeout,
                };
                match http::scan(&mut stream, &req, body).await {
                    Ok((verdict, keep)) => {
                        if keep {
                            self.idle.put(stream);
                        }
                        return verdict;
                    }
                    // A kept connection the server closed meanwhile.
                    Err(http::Failed::Unanswered(_)) if reused && body.rewind() => {}
                    Err(http::Failed::Unanswered(v) | http::Failed::Answered(v)) => return v,
                }
            }
        };
        match tokio::time::timeout(self.timeout, run).await {
            Ok(v) => v,
            Err(_) => Verdict::error(
                ErrorKind::Timeout,
                format!("the API at {} did not answer within {:?} (scan.api.timeout)", self.url.url, self.timeout),
            ),
        }
    }
}

impl ApiUrl {
    fn authority_host(&self) -> String {
        if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() }
    }
}

impl Backend for ApiClient {
    fn describe(&self) -> String {
        format!("API {}", self.url.url)
    }

    fn health(&self) -> BoxFuture<'_, Result<String, String>> {
        // The API has no status call and scans may be billed: a connection
        // (and its TLS handshake) is the check.
        Box::pin(async {
            match self.connect().await {
                Ok(s) => {
                    self.idle.put(s);
                    Ok(format!("{} reachable", self.url.url))
                }
                Err(Verdict::Error { message, .. }) => Err(message),
                Err(other) => Err(other.name()),
            }
        })
    }

    fn scan<'a>(&'a self, meta: &'a ScanMeta, body: &'a mut Body) -> BoxFuture<'a, Verdict> {
        Box::pin(self.scan_body(meta, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = ApiUrl::parse("https://api.cloudmersive.com").unwrap();
        assert_eq!((u.tls, u.host.as_str(), u.port, u.base.as_str()), (true, "api.cloudmersive.com", 443, ""));
        let u = ApiUrl::parse("http://127.0.0.1:8080/av/").unwrap();
        assert_eq!((u.tls, u.port, u.base.as_str(), u.authority().as_str()), (false, 8080, "/av", "127.0.0.1:8080"));
        let u = ApiUrl::parse("https://[::1]:8443").unwrap();
        assert_eq!((u.host.as_str(), u.authority().as_str()), ("::1", "[::1]:8443"));
        assert!(ApiUrl::parse("ftp://x").is_err());
        assert!(ApiUrl::parse("https://x:port").is_err());
        assert!(ApiUrl::parse("https://").is_err());
    }
}
