//! Opt-in TLS interception (issue 14): flows to the TLS ports arrive on
//! their own listener; the ClientHello is peeked ([`hello`]) and the policy
//! ([`route`]) intercepts, splices or refuses. An interception connects to
//! the original destination with the client's server name and checks the
//! server's certificate ([`upstream`]); a bad one gets the client a block
//! page over TLS ([`block`]) or a splice, as configured. Then a leaf for the
//! name is minted ([`mint`]), the client's handshake completed, and both
//! TLS streams go to the HTTP proxy — the same exchanges as cleartext.

pub mod block;
pub mod hello;
pub mod mint;
pub mod route;
pub mod settings;
pub mod upstream;

use std::{net::SocketAddr, sync::Arc, sync::atomic::Ordering, time::Duration};

use rustls::{
    ServerConfig,
    server::{Acceptor, ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use time::OffsetDateTime;
use tokio::net::TcpStream;
use tokio_rustls::{LazyConfigAcceptor, server::TlsStream};

use self::{
    mint::{CaError, Mint},
    route::Route,
    settings::{SpliceOrBlock, Tls},
    upstream::{Origin, RootsError, Upstream, UpstreamError},
};
use super::{Proxy, http, relay, relay::Counts};
use crate::{net::reset_on_close, transport::Secure};

/// Why interception could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The CA files.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// `upstream_roots`.
    #[error(transparent)]
    Roots(#[from] RootsError),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Why the client's handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// Not within the handshake timeout.
    #[error("the client did not complete its TLS handshake within {0:?}")]
    Timeout(Duration),
    /// The client refused (e.g. it does not trust the gateway's CA) or
    /// sent garbage.
    #[error("TLS handshake with the client failed: {0}")]
    Failed(std::io::Error),
    /// No leaf for the name (reset).
    #[error(transparent)]
    Mint(#[from] mint::MintError),
}

/// What interception needs, built once at start.
pub struct TlsContext {
    /// `[tls]`.
    pub cfg: Tls,
    /// Leaves for server names.
    pub mint: Mint,
    /// Connections to servers.
    pub upstream: Arc<Upstream>,
    /// The client-side configuration every connection's is cloned from
    /// (shared session cache); only the certificate differs.
    base: ServerConfig,
}

impl TlsContext {
    /// Loads the CA and the roots and builds both TLS configurations.
    pub fn new(cfg: &Tls) -> Result<TlsContext, SetupError> {
        let ca = mint::Ca::load(&cfg.ca_cert, &cfg.ca_key)?;
        let mint = Mint::new(ca, cfg.leaf_cache_entries, cfg.leaf_cache_ttl.0)?;
        let upstream = Arc::new(Upstream::new(upstream::roots(&cfg.upstream_roots)?)?);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut base = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Leaf(None)));
        base.alpn_protocols = vec![upstream::HTTP11.to_vec()];
        Ok(TlsContext { cfg: cfg.clone(), mint, upstream, base })
    }

    /// Completes the client's handshake with the leaf for `sni` (from the
    /// cache, or minted to end no later than `bound`). A leaf that cannot
    /// be minted resets the client.
    pub async fn terminate(
        &self,
        tcp: TcpStream,
        sni: &str,
        bound: Option<OffsetDateTime>,
    ) -> Result<TlsStream<TcpStream>, AcceptError> {
        let leaf = match self.mint.leaf(sni, bound) {
            Ok(l) => l,
            Err(e) => {
                reset_on_close(&tcp);
                return Err(AcceptError::Mint(e));
            }
        };
        let wait = self.cfg.handshake_timeout.0;
        let mut config = self.base.clone();
        config.cert_resolver = Arc::new(Leaf(Some(leaf)));
        let handshake = async {
            let start = LazyConfigAcceptor::new(Acceptor::default(), tcp).await?;
            start.into_stream(Arc::new(config)).await
        };
        match tokio::time::timeout(wait, handshake).await {
            Err(_) => Err(AcceptError::Timeout(wait)),
            Ok(r) => r.map_err(AcceptError::Failed),
        }
    }
}

/// The one certificate of a connection.
#[derive(Debug)]
struct Leaf(Option<Arc<CertifiedKey>>);

impl ResolvesServerCert for Leaf {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.clone()
    }
}

/// Serves a flow from the TLS listener; returns how it ended, for the
/// flow log line.
pub async fn serve(client: TcpStream, peer: SocketAddr, dst: SocketAddr, ctx: &Proxy, counts: &Counts) -> String {
    let Some(tls) = ctx.tls.as_deref() else {
        reset_on_close(&client);
        return "reset: TLS interception is off".into();
    };
    let hello = match hello::peek(&client, tls.cfg.handshake_timeout.0).await {
        Ok(h) => h,
        Err(e) => {
            crate::metrics::events().tls_handshake("failed");
            reset_on_close(&client);
            return format!("reset: {e}");
        }
    };
    match route::choose(&tls.cfg, &hello) {
        Route::Splice(why) => splice(client, dst, ctx, counts, &why).await,
        Route::Refuse(why) => refuse(client, &why).await,
        Route::Intercept(sni) if hello.ech => {
            let end = intercept(client, peer, dst, sni, tls, ctx, counts).await;
            format!("{end} (its Encrypted Client Hello extension was rejected)")
        }
        Route::Intercept(sni) => intercept(client, peer, dst, sni, tls, ctx, counts).await,
    }
}

/// Decrypts, connects, checks, mints and hands both streams to HTTP.
async fn intercept(
    client: TcpStream,
    peer: SocketAddr,
    dst: SocketAddr,
    sni: String,
    tls: &TlsContext,
    ctx: &Proxy,
    counts: &Counts,
) -> String {
    let wait = tls.cfg.handshake_timeout.0;
    let up = match tls.upstream.connect(&ctx.shared.dialer, dst, &sni, wait).await {
        Ok(up) => up,
        Err(UpstreamError::Certificate(why)) if tls.cfg.on_upstream_error == SpliceOrBlock::Splice => {
            let why = format!("{sni}: the server's certificate {why} (on_upstream_error = \"splice\")");
            return splice(client, dst, ctx, counts, &why).await;
        }
        Err(UpstreamError::Certificate(why)) => {
            crate::metrics::events().tls_handshake("upstream_refused");
            return block::serve(client, peer, &sni, &why, tls, &ctx.http).await;
        }
        Err(e) => {
            ctx.shared.stats.upstream_failures.fetch_add(1, Ordering::Relaxed);
            reset_on_close(&client);
            return format!("reset: {sni}: {e}");
        }
    };
    let stream = match tls.terminate(client, &sni, Some(up.not_after)).await {
        Ok(s) => s,
        Err(e) => {
            crate::metrics::events().tls_handshake("failed");
            return format!("closed: {sni}: {e}");
        }
    };
    crate::metrics::events().tls_handshake("intercepted");
    let redial =
        Arc::new(Origin { upstream: tls.upstream.clone(), dialer: ctx.shared.dialer.clone(), sni: sni.clone(), wait });
    let secure = Secure { sni, upstream_subject: up.subject, redial };
    let tls = http::Intercepted { upstream: Box::new(up.stream), secure };
    http::serve(Box::new(stream), (peer, dst), Some(tls), &ctx.http, counts).await
}

/// Relays the flow unread; the ClientHello is still in the socket (it was
/// only peeked), so the server gets every byte.
async fn splice(client: TcpStream, dst: SocketAddr, ctx: &Proxy, counts: &Counts, why: &str) -> String {
    crate::metrics::events().tls_handshake("spliced");
    match ctx.shared.dialer.connect(dst).await {
        Err(e) => {
            ctx.shared.stats.upstream_failures.fetch_add(1, Ordering::Relaxed);
            reset_on_close(&client);
            format!("reset: spliced ({why}) but {e}")
        }
        Ok(up) => {
            let end = relay::relay(&client, &up, ctx.config.relay_pipe_size, counts).await;
            format!("spliced ({why}), {end}")
        }
    }
}

/// A fatal `handshake_failure` alert, then the connection closes.
async fn refuse(client: TcpStream, why: &str) -> String {
    crate::metrics::events().tls_handshake("refused");
    use tokio::io::AsyncWriteExt as _;
    // Take the peeked hello off the socket first: closing with unread
    // bytes would send a reset that can overtake the alert.
    let _ = client.try_read(&mut vec![0u8; hello::MAX_HELLO]);
    let mut client = client;
    let _ = client.write_all(&[21, 3, 3, 0, 2, 2, 40]).await;
    let _ = client.shutdown().await;
    format!("refused: {why}")
}
