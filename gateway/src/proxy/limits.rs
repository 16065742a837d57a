//! Caps on the connections the gateway holds: all clients together, and
//! per client address. A connection past a cap is turned away at once with
//! a short answer and a log line, so that one client cannot take every
//! file descriptor (or every upstream source port) from the others.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

/// Why a connection was turned away.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `proxy.max_connections` are open.
    #[error("the gateway holds {0} connections (proxy.max_connections)")]
    Total(usize),
    /// The client holds `proxy.max_connections_per_client`.
    #[error("client {0} holds {1} connections (proxy.max_connections_per_client)")]
    Client(IpAddr, usize),
}

/// The caps and the current counts.
#[derive(Debug)]
pub struct Caps {
    // Atomics so that a reload can change them under running connections.
    max: AtomicUsize,
    per_client: AtomicUsize,
    active: AtomicUsize,
    clients: Mutex<HashMap<IpAddr, usize>>,
    /// Second of the last refusal log line, and refusals since.
    last_log: AtomicU64,
    unlogged: AtomicU64,
}

/// A connection that was let in; dropping it gives its place back.
#[derive(Debug)]
pub struct Admitted {
    caps: Arc<Caps>,
    ip: IpAddr,
}

impl Caps {
    /// Changes the limits (reload); connections already in keep their place.
    pub fn set_limits(&self, max: usize, per_client: usize) {
        self.max.store(max, Ordering::Relaxed);
        self.per_client.store(per_client, Ordering::Relaxed);
    }

    /// Caps of `max` connections in all and `per_client` per address.
    pub fn new(max: usize, per_client: usize) -> Arc<Caps> {
        Arc::new(Caps {
            max: AtomicUsize::new(max),
            per_client: AtomicUsize::new(per_client),
            active: AtomicUsize::new(0),
            clients: Mutex::default(),
            last_log: AtomicU64::new(0),
            unlogged: AtomicU64::new(0),
        })
    }

    /// Lets a connection from `ip` in, or says why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Refusal> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let (max, per_client) = (self.max.load(Ordering::Relaxed), self.per_client.load(Ordering::Relaxed));
        if self.active.load(Ordering::Relaxed) >= max {
            return Err(Refusal::Total(max));
        }
        let n = clients.entry(ip).or_insert(0);
        if *n >= per_client {
            return Err(Refusal::Client(ip, per_client));
        }
        *n += 1;
        self.active.fetch_add(1, Ordering::Relaxed);
        Ok(Admitted { caps: self.clone(), ip })
    }

    /// Connections held now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Whether a refusal may be logged now (one line a second); the number
    /// of refusals not logged since the last line.
    pub fn log_gate(&self) -> Option<u64> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let last = self.last_log.load(Ordering::Relaxed);
        if now > last && self.last_log.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            return Some(self.unlogged.swap(0, Ordering::Relaxed));
        }
        self.unlogged.fetch_add(1, Ordering::Relaxed);
        None
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut clients = self.caps.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = clients.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                clients.remove(&self.ip);
            }
        }
        self.caps.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_client_and_total_caps() {
        let caps = Caps::new(3, 2);
        let a: IpAddr = "198.18.0.2".parse().unwrap();
        let b: IpAddr = "198.18.0.3".parse().unwrap();
        let a1 = caps.admit(a).unwrap();
        let _a2 = caps.admit(a).unwrap();
        assert_eq!(caps.admit(a).unwrap_err(), Refusal::Client(a, 2));
        let _b1 = caps.admit(b).unwrap();
        assert_eq!(caps.admit(b).unwrap_err(), Refusal::Total(3));
        drop(a1);
        assert!(caps.admit(b).is_ok(), "a place given back is free again");
        assert_eq!(caps.clients.lock().unwrap().len(), 2);
    }

    #[test]
    fn refusal_lines_are_rate_limited() {
        let caps = Caps::new(1, 1);
        assert_eq!(caps.log_gate(), Some(0));
        assert_eq!(caps.log_gate(), None);
        assert_eq!(caps.log_gate(), None);
        assert_eq!(caps.unlogged.load(Ordering::Relaxed), 2);
    }
}
