//! Passive data connections the gateway expects: the eBPF entry that
//! steers them, the session waiting for each, and what happens when one
//! arrives. Exactly one connection is handed to each waiting session; any
//! other steered data connection is reset, never relayed unscanned.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
};

use tokio::{net::TcpStream, sync::oneshot};
use tracing::warn;

use super::FtpContext;
use crate::{
    net::reset_on_close,
    steering::{Expectations, SteeringError},
};

/// (client, server, server port) of an expected passive data connection.
pub type Key = (IpAddr, IpAddr, u16);

/// An expectation could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ExpectError {
    /// The client has `ftp.max_expectations_per_client` already.
    #[error("client {0} already has {1} data connections announced (ftp.max_expectations_per_client)")]
    TooMany(IpAddr, usize),
    /// The eBPF map refused the entry (full).
    #[error(transparent)]
    Map(#[from] SteeringError),
}

/// Control sessions waiting for a passive data connection from their client.
#[derive(Default)]
pub struct Waiters {
    map: Mutex<HashMap<Key, oneshot::Sender<TcpStream>>>,
    per_client: Mutex<HashMap<IpAddr, usize>>,
}

impl Waiters {
    /// The waiter for `key`, removing it: only the first connection gets it.
    fn take(&self, key: &Key) -> Option<oneshot::Sender<TcpStream>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).remove(key)
    }

    fn count(&self, client: IpAddr, delta: isize, max: usize) -> Result<(), ExpectError> {
        let mut m = self.per_client.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(client).or_insert(0);
        if delta > 0 && *n >= max {
            return Err(ExpectError::TooMany(client, max));
        }
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            m.remove(&client);
        }
        Ok(())
    }
}

/// An expected passive connection: eBPF entry and waiter, both removed when
/// this is dropped (after the transfer, on ABOR, on error, at session end).
pub struct Expected {
    key: Key,
    expectations: Expectations,
    waiters: Arc<Waiters>,
}

impl Expected {
    /// Adds the eBPF entry and the waiter, within the client's cap.
    pub fn new(key: Key, fx: &FtpContext) -> Result<(Expected, oneshot::Receiver<TcpStream>), ExpectError> {
        fx.waiters.count(key.0, 1, fx.cfg.max_expectations_per_client)?;
        let (tx, rx) = oneshot::channel();
        fx.waiters.map.lock().unwrap_or_else(|p| p.into_inner()).insert(key, tx);
        // From here on, Drop undoes both.
        let expected = Expected { key, expectations: fx.expectations.clone(), waiters: fx.waiters.clone() };
        fx.expectations.add(key.0, key.1, key.2, gateway_common::listener::FTP_DATA)?;
        Ok((expected, rx))
    }
}

impl Drop for Expected {
    fn drop(&mut self) {
        self.waiters.take(&self.key);
        let _ = self.waiters.count(self.key.0, -1, usize::MAX);
        if let Err(e) = self.expectations.remove(self.key.0, self.key.1, self.key.2) {
            warn!("removing the FTP data expectation {:?}: {e}", self.key);
        }
    }
}

/// A steered data connection arrived: it goes to the session waiting for
/// it, or is reset.
pub fn arrived(client: TcpStream, peer: SocketAddr, dst: SocketAddr, fx: &FtpContext) {
    let key = (peer.ip(), dst.ip(), dst.port());
    match fx.waiters.take(&key) {
        Some(waiter) => {
            if let Err(client) = waiter.send(client) {
                reset_on_close(&client);
            }
        }
        None => {
            reset_on_close(&client);
            warn!(
                target: "ftp",
                "client={peer} data connection to {dst} reset: no transfer is waiting for it (only one data connection per PASV/EPSV)"
            );
        }
    }
}
