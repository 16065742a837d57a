//! The gateway's side of the server connection: TLS with the client's
//! server name, `http/1.1` only, and the server's chain and name checked
//! against `upstream_roots` (rustls' WebPKI verifier). What a failed check
//! means for the client is the caller's policy (`on_upstream_error`).

use std::{io, net::SocketAddr, path::Path, sync::Arc, time::Duration};

use rustls::{
    CertificateError, ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject as _},
};
use time::OffsetDateTime;
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};

use crate::{
    net::{ConnectError, Dialer},
    transport::{Dialing, Redial, Transport},
};

/// The one application protocol both sides negotiate.
pub const HTTP11: &[u8] = b"http/1.1";

/// Why the root store could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    /// The PEM file could not be read or holds no certificate.
    #[error("tls.upstream_roots: {path} holds no usable PEM certificate ({why})")]
    File {
        /// The file.
        path: String,
        /// Why.
        why: String,
    },
    /// The host's store is empty or unreadable.
    #[error(
        "tls.upstream_roots = \"system\", but the host's CA store gave no certificate ({0}); install ca-certificates or name a PEM file"
    )]
    System(String),
}

/// Why the server connection was not made.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP: refused, unreachable, denied by policy, out of ports.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The server's certificate failed the check; the text completes "the
    /// server's certificate …".
    #[error("the server's certificate {0}")]
    Certificate(String),
    /// The handshake failed otherwise (reset, protocol error).
    #[error("TLS handshake with the server failed: {0}")]
    Handshake(io::Error),
    /// No handshake within the timeout.
    #[error("TLS handshake with the server timed out after {0:?}")]
    Timeout(Duration),
    /// The name cannot be a TLS server name.
    #[error("{0:?} is not a valid server name")]
    Name(String),
}

/// The roots named by `upstream_roots`: `"system"` or a PEM file.
pub fn roots(spec: &str) -> Result<RootCertStore, RootsError> {
    let mut store = RootCertStore::empty();
    if spec == "system" {
        let found = rustls_native_certs::load_native_certs();
        let (added, _) = store.add_parsable_certificates(found.certs);
        if added == 0 {
            let why = found.errors.first().map_or_else(|| "none found".to_string(), ToString::to_string);
            return Err(RootsError::System(why));
        }
        return Ok(store);
    }
    let file = |why: String| RootsError::File { path: spec.to_string(), why };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(Path::new(spec))
        .map_err(|e| file(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| file(e.to_string()))?;
    let (added, _) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(file("no certificate in it".into()));
    }
    Ok(store)
}

/// A server connection after a good handshake, and what its certificate
/// says.
pub struct Connected {
    /// The TLS stream.
    pub stream: TlsStream<TcpStream>,
    /// The certificate's subject (for detection records).
    pub subject: String,
    /// The certificate's end: minted leaves end no later.
    pub not_after: OffsetDateTime,
}

/// Connects to servers with one client configuration.
pub struct Upstream {
    connector: TlsConnector,
}

impl Upstream {
    /// A connector trusting `roots`, offering only `http/1.1`.
    pub fn new(roots: RootCertStore) -> Result<Upstream, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![HTTP11.to_vec()];
        Ok(Upstream { connector: TlsConnector::from(Arc::new(config)) })
    }

    /// TCP to `dst` through the dialer, then TLS for `sni` within `wait`.
    pub async fn connect(
        &self,
        dialer: &Dialer,
        dst: SocketAddr,
        sni: &str,
        wait: Duration,
    ) -> Result<Connected, UpstreamError> {
        let name = ServerName::try_from(sni.to_string()).map_err(|_| UpstreamError::Name(sni.to_string()))?;
        let tcp = dialer.connect(dst).await?;
        let stream = match tokio::time::timeout(wait, self.connector.connect(name, tcp)).await {
            Err(_) => return Err(UpstreamError::Timeout(wait)),
            Ok(Err(e)) => return Err(classify(e, sni)),
            Ok(Ok(s)) => s,
        };
        let (subject, not_after) = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| x509_parser::parse_x509_certificate(c.as_ref()).ok())
            .map(|(_, x)| (x.subject().to_string(), x.validity().not_after.to_datetime()))
            .ok_or_else(|| UpstreamError::Certificate("could not be read".into()))?;
        Ok(Connected { stream, subject, not_after })
    }
}

/// A handshake error: the certificate check's verdict in words, or the
/// I/O error as it is.
fn classify(e: io::Error, sni: &str) -> UpstreamError {
    let Some(rustls::Error::InvalidCertificate(ce)) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
    else {
        return UpstreamError::Handshake(e);
    };
    UpstreamError::Certificate(match ce {
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => "has expired".into(),
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => "is not valid yet".into(),
        CertificateError::UnknownIssuer => {
            "is not issued by a trusted authority (self-signed or unknown issuer)".into()
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!("is not valid for {sni}")
        }
        CertificateError::Revoked => "has been revoked".into(),
        other => format!("is not acceptable ({other:?})"),
    })
}

/// Reconnects an intercepted flow: the same name, the same checks.
pub struct Origin {
    /// The connector.
    pub upstream: Arc<Upstream>,
    /// The way out.
    pub dialer: Arc<Dialer>,
    /// The client's server name.
    pub sni: String,
    /// Handshake bound.
    pub wait: Duration,
}

impl Redial for Origin {
    fn redial(&self, dst: SocketAddr) -> Dialing<'_> {
        Box::pin(async move {
            match self.upstream.connect(&self.dialer, dst, &self.sni, self.wait).await {
                Ok(c) => Ok(Box::new(c.stream) as Box<dyn Transport>),
                Err(e) => Err(io::Error::other(e)),
            }
        })
    }
}
