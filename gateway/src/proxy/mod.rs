//! The transparent proxy: accepts steered connections and serves them.
//!
//! Each listener kind (HTTP, FTP control, FTP data) has one accept loop per
//! address family. A flow's original destination is the accepted socket's
//! local address; the gateway connects there from its own address, then
//! serves HTTP flows with [`http`] and relays the others byte for byte.

pub mod ftp;
pub mod http;
pub mod listener;
pub mod relay;

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Instant,
};

use log::{info, warn};
use tokio::net::{TcpListener, TcpStream};

use crate::{
    config,
    stats::{ActiveFlow, ProxyStats},
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
}

impl Kind {
    /// Name used in logs.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Http => "http",
            Kind::FtpControl => "ftp",
            Kind::FtpData => "ftp-data",
        }
    }

    /// The listener kind index shared with the eBPF side.
    pub fn slot_kind(self) -> u32 {
        use gateway_common::listener;
        match self {
            Kind::Http => listener::HTTP,
            Kind::FtpControl => listener::FTP_CONTROL,
            Kind::FtpData => listener::FTP_DATA,
        }
    }
}

/// What every flow handler needs.
pub struct Context {
    /// `[proxy]` settings.
    pub config: config::Proxy,
    /// Shared counters.
    pub stats: ProxyStats,
    /// The HTTP proxy's settings, scanner and block page.
    pub http: http::HttpContext,
    /// The FTP gateway's settings and data-connection plumbing.
    pub ftp: ftp::FtpContext,
}

/// Accepts flows on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, kind: Kind, ctx: Arc<Context>) {
    loop {
        match listener.accept().await {
            Ok((client, peer)) => {
                let ctx = ctx.clone();
                tokio::spawn(async move { handle(client, peer, kind, &ctx).await });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!("accept on {} listener failed: {e}", kind.name());
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(client: TcpStream, peer: SocketAddr, kind: Kind, ctx: &Context) {
    let _active = ActiveFlow::start(&ctx.stats);
    let start = Instant::now();
    let dst = match client.local_addr() {
        Ok(a) => a,
        Err(e) => {
            warn!("flow kind={} client={peer}: no local address: {e}", kind.name());
            return;
        }
    };
    if kind == Kind::FtpData {
        // A passive data connection an FTP session is waiting for.
        if let Some(waiter) = ctx.ftp.waiters.take(&(peer.ip(), dst.ip(), dst.port())) {
            let _ = waiter.send(client);
            return;
        }
    }
    let upstream = match tokio::time::timeout(ctx.config.connect_timeout.0, TcpStream::connect(dst)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return upstream_failed(&client, peer, dst, kind, ctx, start, &e.to_string()),
        Err(_) => {
            return upstream_failed(&client, peer, dst, kind, ctx, start, "connect timed out");
        }
    };
    let counts = relay::Counts::default();
    let scanning = ctx.http.cfg.scan_downloads || ctx.http.cfg.scan_uploads;
    let end = match kind {
        Kind::Http if scanning => http::serve(client, peer, dst, upstream, &ctx.http, &counts).await,
        Kind::FtpControl if ctx.ftp.cfg.scan => ftp::serve(client, peer, dst, upstream, &ctx.ftp, &counts).await,
        // With HTTP scanning off there is nothing to parse: relay in the kernel.
        Kind::Http | Kind::FtpControl | Kind::FtpData => {
            relay::relay(&client, &upstream, ctx.config.relay_pipe_size, &counts).await.to_string()
        }
    };
    let up = counts.up.load(Ordering::Relaxed);
    let down = counts.down.load(Ordering::Relaxed);
    ctx.stats.bytes_up.fetch_add(up, Ordering::Relaxed);
    ctx.stats.bytes_down.fetch_add(down, Ordering::Relaxed);
    info!(
        target: "flow",
        "kind={} client={peer} dst={dst} up={up} down={down} duration={:.3}s end={end}",
        kind.name(),
        start.elapsed().as_secs_f64()
    );
}

fn upstream_failed(
    client: &TcpStream,
    peer: SocketAddr,
    dst: SocketAddr,
    kind: Kind,
    ctx: &Context,
    start: Instant,
    why: &str,
) {
    ctx.stats.upstream_failures.fetch_add(1, Ordering::Relaxed);
    // The client already completed its handshake with us: a reset is the
    // closest to what it would have seen from the real destination.
    relay::reset_on_close(client);
    info!(
        target: "flow",
        "kind={} client={peer} dst={dst} up=0 down=0 duration={:.3}s end=upstream-failed ({why})",
        kind.name(),
        start.elapsed().as_secs_f64()
    );
}
