//! Userspace counters, reported by `gateway stats` next to the kernel's.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Counters updated by the proxies.
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Flows accepted.
    pub flows_total: AtomicU64,
    /// Flows being relayed now.
    pub flows_active: AtomicU64,
    /// Flows whose original destination could not be reached.
    pub upstream_failures: AtomicU64,
    /// Bytes client → server.
    pub bytes_up: AtomicU64,
    /// Bytes server → client.
    pub bytes_down: AtomicU64,
}

/// A point-in-time copy of [`ProxyStats`].
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProxySnapshot {
    /// Flows accepted.
    pub flows_total: u64,
    /// Flows being relayed now.
    pub flows_active: u64,
    /// Flows whose original destination could not be reached.
    pub upstream_failures: u64,
    /// Bytes client → server.
    pub bytes_up: u64,
    /// Bytes server → client.
    pub bytes_down: u64,
}

impl ProxyStats {
    /// Reads all counters.
    pub fn snapshot(&self) -> ProxySnapshot {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ProxySnapshot {
            flows_total: r(&self.flows_total),
            flows_active: r(&self.flows_active),
            upstream_failures: r(&self.upstream_failures),
            bytes_up: r(&self.bytes_up),
            bytes_down: r(&self.bytes_down),
        }
    }
}

/// Decrements `flows_active` when a flow ends, on every path.
pub struct ActiveFlow<'a>(&'a ProxyStats);

impl<'a> ActiveFlow<'a> {
    /// Counts a new flow as total and active.
    pub fn start(stats: &'a ProxyStats) -> Self {
        stats.flows_total.fetch_add(1, Ordering::Relaxed);
        stats.flows_active.fetch_add(1, Ordering::Relaxed);
        ActiveFlow(stats)
    }
}

impl Drop for ActiveFlow<'_> {
    fn drop(&mut self) {
        self.0.flows_active.fetch_sub(1, Ordering::Relaxed);
    }
}
