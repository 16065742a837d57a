//! The transparent proxy: accepts steered connections and serves them.
//!
//! Each listener kind (HTTP, FTP control, FTP data, TLS when intercepting)
//! has one accept loop per address family. A flow's original destination is
//! the accepted socket's local address. Every flow is first admitted against
//! the connection caps ([`limits`]); then HTTP flows go to [`http`], FTP
//! control connections to [`ftp`], expected FTP data connections to the FTP
//! session waiting for them (or are reset), TLS flows to [`tls`] (which
//! hands intercepted ones to [`http`]), and anything not scanned is relayed
//! byte for byte ([`relay`]).

pub mod ftp;
pub mod http;
pub mod limits;
pub mod listener;
pub mod relay;
pub mod settings;
pub mod tls;

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Instant,
};

use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument as _, info, info_span, warn};

use self::settings::Proxy as Settings;
use self::{
    limits::{Caps, Refusal},
    relay::Counts,
};
use crate::{
    net::{Dialer, reset_on_close},
    scan::Scanner,
    stats::{ActiveFlow, Stats},
};

/// Which listener a flow arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Steered HTTP port.
    Http,
    /// Steered FTP control port.
    FtpControl,
    /// Expected FTP data connection.
    FtpData,
    /// Steered TLS port (interception, `[tls]`).
    Tls,
}

impl Kind {
    /// Name used in logs.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Http => "http",
            Kind::FtpControl => "ftp",
            Kind::FtpData => "ftp-data",
            Kind::Tls => "tls",
        }
    }

    /// The listener kind index shared with the eBPF side.
    pub fn slot_kind(self) -> u32 {
        use gateway_common::listener;
        match self {
            Kind::Http => listener::HTTP,
            Kind::FtpControl => listener::FTP_CONTROL,
            Kind::FtpData => listener::FTP_DATA,
            Kind::Tls => listener::TLS,
        }
    }
}

/// What both protocols share: the scanning core, the counters, and the way
/// out to the original destinations.
#[derive(Clone)]
pub struct Shared {
    /// The scanning core (with the decider and its detection log).
    pub scanner: Arc<Scanner>,
    /// Counters.
    pub stats: Arc<Stats>,
    /// Upstream connections.
    pub dialer: Arc<Dialer>,
}

/// What every flow handler needs.
pub struct Proxy {
    /// `[proxy]` settings.
    pub config: Settings,
    /// The shared set.
    pub shared: Shared,
    /// Connection caps.
    pub caps: Arc<Caps>,
    /// The HTTP proxy.
    pub http: http::HttpContext,
    /// The FTP gateway.
    pub ftp: ftp::FtpContext,
    /// TLS interception, when `[tls] intercept` is on.
    pub tls: Option<Arc<tls::TlsContext>>,
}

/// The proxy's settings and shared set as they are now: a reload swaps
/// them for new connections; connections in progress keep theirs.
pub type Current = arc_swap::ArcSwap<Proxy>;

/// Accepts flows on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, kind: Kind, current: Arc<Current>) {
    loop {
        let accepted = listener.accept().await;
        let ctx = current.load_full();
        match accepted {
            Ok((client, peer)) => match ctx.caps.admit(peer.ip()) {
                Ok(admitted) => {
                    let ctx = ctx.clone();
                    // Every line of this flow carries its kind and ends.
                    let span = info_span!("flow", kind = kind.name(), client = %peer, dst = tracing::field::Empty);
                    tokio::spawn(
                        async move {
                            handle(client, peer, kind, &ctx).await;
                            drop(admitted);
                        }
                        .instrument(span),
                    );
                }
                Err(refusal) => refuse(client, peer, kind, &ctx, &refusal),
            },
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!("accept on the {} listener failed: {e}", kind.name());
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Turns a connection away at the caps: a short answer where the protocol
/// has one, a reset otherwise, and a log line (at most one a second).
fn refuse(client: TcpStream, peer: SocketAddr, kind: Kind, ctx: &Proxy, refusal: &Refusal) {
    ctx.shared.stats.refused.fetch_add(1, Ordering::Relaxed);
    let answer: &[u8] = match kind {
        Kind::Http => {
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\nRetry-After: 5\r\n\r\n"
        }
        Kind::FtpControl => b"421 Too many connections; try again later.\r\n",
        Kind::FtpData | Kind::Tls => b"",
    };
    // Best effort and non-blocking: a fresh socket's buffer takes it.
    if answer.is_empty() || client.try_write(answer).is_err() {
        reset_on_close(&client);
    }
    if let Some(suppressed) = ctx.caps.log_gate() {
        let more =
            if suppressed > 0 { format!(" ({suppressed} more refused since the last line)") } else { String::new() };
        warn!(target: "flow", "kind={} client={peer} refused: {refusal}{more}", kind.name());
    }
}

async fn handle(client: TcpStream, peer: SocketAddr, kind: Kind, ctx: &Proxy) {
    let _active = ActiveFlow::start(&ctx.shared.stats, kind.slot_kind());
    let start = Instant::now();
    let dst = match client.local_addr() {
        Ok(a) => a,
        Err(e) => {
            warn!("flow kind={} client={peer}: no local address: {e}", kind.name());
            return;
        }
    };
    tracing::Span::current().record("dst", tracing::field::display(dst));
    if kind == Kind::FtpData {
        // A passive data connection an FTP session is waiting for, or one
        // nobody is: that one is reset, never relayed unscanned.
        ftp::expect::arrived(client, peer, dst, &ctx.ftp);
        return;
    }
    let counts = Counts::default();
    let end = match kind {
        Kind::Tls => tls::serve(client, peer, dst, ctx, &counts).await,
        Kind::Http if ctx.http.cfg.scan_downloads || ctx.http.cfg.scan_uploads => {
            http::serve(Box::new(client), (peer, dst), None, &ctx.http, &counts).await
        }
        _ => match ctx.shared.dialer.connect(dst).await {
            Err(e) => {
                ctx.shared.stats.upstream_failures.fetch_add(1, Ordering::Relaxed);
                // The client completed its handshake with us: a reset is the
                // closest to what it would have seen from the destination.
                reset_on_close(&client);
                format!("upstream-failed ({e})")
            }
            Ok(upstream) if kind == Kind::FtpControl && ctx.ftp.cfg.scan => {
                ftp::serve(client, peer, dst, upstream, &ctx.ftp, &counts).await
            }
            Ok(upstream) => relay::relay(&client, &upstream, ctx.config.relay_pipe_size, &counts).await.to_string(),
        },
    };
    let up = counts.up.load(Ordering::Relaxed);
    let down = counts.down.load(Ordering::Relaxed);
    ctx.shared.stats.bytes_up.fetch_add(up, Ordering::Relaxed);
    ctx.shared.stats.bytes_down.fetch_add(down, Ordering::Relaxed);
    info!(
        target: "flow",
        "kind={} client={peer} dst={dst} up={up} down={down} duration={:.3}s end={end}",
        kind.name(),
        start.elapsed().as_secs_f64()
    );
}
