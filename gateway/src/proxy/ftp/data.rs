//! FTP data connections: who is waiting for which connection, and the
//! transfers themselves (downloads and uploads scanned with trickling,
//! listings relayed).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::oneshot,
};

use crate::{
    policy::Decision,
    proxy::relay,
    scan::{Direction, ScanMeta, Scanner},
    steering::Expectations,
    verdict::Verdict,
};

/// (client, server, server port) of an expected passive data connection.
pub type Key = (IpAddr, IpAddr, u16);

/// Control sessions waiting for a passive data connection from their client.
#[derive(Default)]
pub struct DataWaiters {
    map: Mutex<HashMap<Key, oneshot::Sender<TcpStream>>>,
}

impl DataWaiters {
    /// Waits for the connection `key`.
    pub fn register(&self, key: Key) -> oneshot::Receiver<TcpStream> {
        let (tx, rx) = oneshot::channel();
        self.map.lock().unwrap_or_else(|p| p.into_inner()).insert(key, tx);
        rx
    }

    /// The waiter for `key`, removing it.
    pub fn take(&self, key: &Key) -> Option<oneshot::Sender<TcpStream>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).remove(key)
    }
}

/// An expected passive connection: eBPF entry and waiter, both removed when
/// this is dropped (after the transfer, on ABOR, on error, at session end).
pub struct Expected {
    key: Key,
    expectations: Expectations,
    waiters: Arc<DataWaiters>,
}

impl Expected {
    /// Adds the eBPF entry and the waiter.
    pub fn new(
        key: Key,
        expectations: Expectations,
        waiters: Arc<DataWaiters>,
    ) -> Result<(Expected, oneshot::Receiver<TcpStream>), String> {
        let rx = waiters.register(key);
        if let Err(e) = expectations.add(key.0, key.1, key.2, gateway_common::listener::FTP_DATA) {
            waiters.take(&key);
            return Err(e.to_string());
        }
        Ok((Expected { key, expectations, waiters }, rx))
    }
}

impl Drop for Expected {
    fn drop(&mut self) {
        self.waiters.take(&self.key);
        if let Err(e) = self.expectations.remove(self.key.0, self.key.1, self.key.2) {
            log::warn!("removing the FTP data expectation {:?}: {e}", self.key);
        }
    }
}

/// How a transfer ended, for the control session's reply.
#[derive(Debug)]
pub enum Outcome {
    /// Delivered (clean, or allowed by policy) or relayed unscanned.
    Delivered {
        /// Bytes.
        bytes: u64,
        /// Scan verdict name.
        verdict: String,
        /// Bytes that went on before the verdict.
        trickled: u64,
    },
    /// Malware found; the receiver's connection was closed after the trickle.
    Infected {
        /// Threat names.
        threats: Vec<String>,
        /// Bytes sent before the verdict.
        trickled: u64,
        /// Bytes seen.
        bytes: u64,
        /// Engine.
        engine: String,
    },
    /// Not scannable and blocked by policy; the receiver's connection was closed after the trickle.
    Blocked {
        /// Why.
        reason: String,
        /// Bytes sent before the verdict.
        trickled: u64,
    },
    /// The data connection failed or never came.
    Failed(String),
}

/// Trickle settings.
#[derive(Clone, Copy, Debug)]
pub struct Trickle {
    /// For every this many bytes received …
    pub every: u64,
    /// … this many go on before the verdict.
    pub bytes: u64,
}

/// Moves one file from `from` to `to`, scanning it; `to` gets the trickle
/// before the verdict and the rest after a clean one. A blocked file's
/// receiving connection is closed after the trickle, not reset: a client
/// reset on the data socket fails there and never shows the `505`, and a
/// server (pyftpdlib) that sees the reset before it has taken the
/// connection sends no final reply at all, leaving the session hanging.
/// The server therefore stores the trickled fragment as if complete, and
/// the control session deletes it.
pub async fn scanned(
    mut from: TcpStream,
    mut to: TcpStream,
    scanner: Arc<Scanner>,
    meta: ScanMeta,
    trickle: Trickle,
    stall: Duration,
) -> Outcome {
    let mut session = scanner.start(meta, true);
    let mut buf = vec![0u8; 256 * 1024];
    let mut sent: u64 = 0;
    loop {
        let n = match tokio::time::timeout(stall, from.read(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                relay::reset_on_close(&to);
                return Outcome::Failed(format!("reading the data connection: {e}"));
            }
            Err(_) => {
                relay::reset_on_close(&to);
                return Outcome::Failed("the data connection stalled".into());
            }
        };
        if n == 0 {
            break;
        }
        session.feed(&buf[..n]).await;
        // Every `every` bytes received earn `bytes` of early delivery.
        let allowed = session.bytes().checked_div(trickle.every).map_or(0, |w| w * trickle.bytes);
        while sent < allowed {
            let want = ((allowed - sent) as usize).min(buf.len());
            let got = session.read_held(sent, &mut buf[..want]);
            if got == 0 {
                break;
            }
            if to.write_all(&buf[..got]).await.is_err() {
                return Outcome::Failed("the receiver went away".into());
            }
            sent += got as u64;
        }
    }
    let done = session.finish().await;
    let bytes = done.outcome.bytes;
    match scanner.policy.decide(&done.outcome.verdict) {
        Decision::Pass => {
            let Some(held) = done.body else {
                relay::reset_on_close(&to);
                return Outcome::Failed("the file could not be held".into());
            };
            if let Err(e) = relay::send_held(&to, &held, sent, stall).await {
                relay::reset_on_close(&to);
                return Outcome::Failed(format!("delivering the file: {e}"));
            }
            let _ = to.shutdown().await;
            let verdict = match &done.outcome.verdict {
                Verdict::Clean => "clean".to_string(),
                Verdict::Error { kind, .. } => format!("unscanned ({}), allowed by policy", kind.name()),
                Verdict::Infected { .. } => "infected, allowed".to_string(),
            };
            Outcome::Delivered { bytes: held.len(), verdict, trickled: sent }
        }
        Decision::Block(reason) => {
            let _ = to.shutdown().await;
            drop(to);
            match done.outcome.verdict {
                Verdict::Infected { threats, engine, .. } => {
                    Outcome::Infected { threats, trickled: sent, bytes, engine }
                }
                _ => Outcome::Blocked { reason, trickled: sent },
            }
        }
    }
}

/// Relays a listing (or anything not scanned) byte for byte.
pub async fn relayed(from: TcpStream, to: TcpStream) -> Outcome {
    let counts = relay::Counts::default();
    let end = relay::relay(&from, &to, 1 << 20, &counts).await;
    let bytes =
        counts.up.load(std::sync::atomic::Ordering::Relaxed) + counts.down.load(std::sync::atomic::Ordering::Relaxed);
    Outcome::Delivered { bytes, verdict: format!("unscanned ({end})"), trickled: 0 }
}

/// Connects to `addr`, bounded by `wait`.
pub async fn connect(addr: SocketAddr, wait: Duration) -> Result<TcpStream, String> {
    match tokio::time::timeout(wait, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!("connecting to {addr}: {e}")),
        Err(_) => Err(format!("connecting to {addr} timed out")),
    }
}

/// Metadata for a scanned FTP file.
pub fn meta(name: &str, client: SocketAddr, server: SocketAddr, direction: Direction) -> ScanMeta {
    ScanMeta {
        name: name.to_string(),
        content_type: None,
        client: Some(client),
        server: Some(server),
        direction,
        http_request: None,
        http_response: None,
    }
}
