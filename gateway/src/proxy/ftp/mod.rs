//! The transparent FTP gateway: the control channel relayed line by line
//! ([`session`]), data channels set up through the eBPF expectations map
//! (passive, [`expect`]) or a listener of the gateway's own (active), and
//! files scanned with trickling ([`data`], Barracuda's approach): for every
//! `trickle_every` received, `trickle_bytes` go on to the receiver before
//! the verdict; an infected file aborts the data connection and the client
//! gets `505 virus found in file: <name>` instead of the server's 226.

pub mod command;
pub mod data;
pub mod expect;
mod lines;
mod session;
pub mod settings;
mod transfer;

use std::{net::SocketAddr, sync::Arc};

use tokio::net::TcpStream;

use self::settings::Ftp;
use self::{
    expect::Waiters,
    lines::{LineError, Lines},
    session::{Event, Next, Session},
};
use super::{Shared, relay};
use crate::steering::Expectations;

/// What the FTP gateway needs besides the connection.
pub struct FtpContext {
    /// `[ftp]`.
    pub cfg: Ftp,
    /// The scanner, counters and dialer shared with the HTTP proxy.
    pub shared: Shared,
    /// The eBPF expectations map.
    pub expectations: Expectations,
    /// Sessions waiting for passive data connections.
    pub waiters: Arc<Waiters>,
}

/// Why a control session ended badly.
#[derive(Debug, thiserror::Error)]
pub enum FtpError {
    /// Writing to the client failed or timed out.
    #[error("client: {0}")]
    Client(std::io::Error),
    /// Writing to the server failed or timed out.
    #[error("server: {0}")]
    Server(std::io::Error),
    /// The client went away during a transfer.
    #[error("client closed during a transfer")]
    ClientGone,
    /// Reading the client's commands failed.
    #[error("client: {0}")]
    ClientLine(LineError),
    /// Too many commands sent while a reply was held.
    #[error("more than {0} commands sent while a transfer's reply was held")]
    TooManyPending(usize),
    /// An active-mode listener could not be opened.
    #[error("active-mode listener: {0}")]
    Listener(std::io::Error),
}

/// Serves one FTP control connection; returns how it ended.
pub async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    dst: SocketAddr,
    upstream: TcpStream,
    fx: &FtpContext,
    counts: &relay::Counts,
) -> String {
    let near_server = match upstream.local_addr() {
        Ok(a) => a.ip(),
        Err(e) => return format!("no local address: {e}"),
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    // Clients send ABOR with its last byte as TCP urgent data (ftplib does);
    // keep it in the stream so the line is complete.
    let _ = socket2::SockRef::from(&client).set_out_of_band_inline(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = upstream.into_split();
    let (max_line, max_reply) = (fx.cfg.max_line, fx.cfg.max_reply.0);
    let mut cr = Lines::new(cr, max_line, max_reply);
    let mut sr = Lines::new(sr, max_line, max_reply);
    let mut s = Session::new(fx, peer, dst, near_server, cw, sw, counts);
    loop {
        let ev = s.next_event(&mut cr, &mut sr).await;
        let r = match ev {
            Event::Client(Ok(Some(line))) => s.command(&line).await,
            Event::Client(Ok(None)) => return "client closed".into(),
            Event::Client(Err(LineError::TooLong(_))) => {
                let _ = s.tell_client("500 Command line too long.").await;
                return "client line too long".into();
            }
            Event::Client(Err(LineError::Idle)) => {
                let _ = s.tell_client("421 Idle timeout, closing the control connection.").await;
                return "idle".into();
            }
            Event::Client(Err(e)) => return format!("client: {e}"),
            Event::Server(Ok(Some((code, lines)))) => s.reply(code, lines, &mut cr, &mut sr).await,
            Event::Server(Ok(None)) => {
                let _ = s.tell_client("421 The server closed the control connection.").await;
                return "server closed".into();
            }
            Event::Server(Err(e)) => {
                let _ = s.tell_client("421 The server's control connection failed.").await;
                return format!("server: {e}");
            }
        };
        match r {
            Ok(Next::Go) => {}
            Ok(Next::Passthrough) => {
                // AUTH TLS allowed: the rest of the session cannot be read.
                let (cw, sw) = s.into_writers();
                let (Ok(client), Ok(server)) = (cr.r.reunite(cw), sr.r.reunite(sw)) else {
                    return "reuniting for passthrough failed".into();
                };
                let end = relay::relay(&client, &server, 1 << 20, counts).await;
                return format!("passed through unscanned (FTPS), {end}");
            }
            Err(FtpError::TooManyPending(n)) => {
                let _ = s.tell_client("421 Too many commands while a transfer was finishing; closing.").await;
                return format!("more than {n} pending commands");
            }
            Err(e) => return e.to_string(),
        }
    }
}
