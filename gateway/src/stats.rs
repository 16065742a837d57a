//! Userspace counters, reported by `gateway stats` next to the kernel's.

use std::sync::atomic::{AtomicU64, Ordering};

use gateway_common::listener;
use serde::Serialize;

/// Counters updated by the proxies.
#[derive(Debug, Default)]
pub struct Stats {
    /// Flows accepted and being served, by listener kind
    /// (`gateway_common::listener`: HTTP, FTP control, FTP data, TLS).
    pub flows: [KindFlows; listener::KINDS as usize],
    /// Flows turned away at the connection caps.
    pub refused: AtomicU64,
    /// Flows whose original destination could not be reached.
    pub upstream_failures: AtomicU64,
    /// Bytes client → server.
    pub bytes_up: AtomicU64,
    /// Bytes server → client.
    pub bytes_down: AtomicU64,
}

/// Flows of one listener kind.
#[derive(Debug, Default)]
pub struct KindFlows {
    /// Flows accepted.
    pub total: AtomicU64,
    /// Flows being served now.
    pub active: AtomicU64,
}

/// A point-in-time copy of [`Stats`].
#[derive(Clone, Debug, Default, Serialize)]
pub struct Snapshot {
    /// Flows accepted.
    pub flows_total: u64,
    /// Flows being served now.
    pub flows_active: u64,
    /// Flows turned away at the connection caps.
    pub refused: u64,
    /// Flows whose original destination could not be reached.
    pub upstream_failures: u64,
    /// Bytes client → server.
    pub bytes_up: u64,
    /// Bytes server → client.
    pub bytes_down: u64,
}

impl Stats {
    /// Reads all counters.
    pub fn snapshot(&self) -> Snapshot {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Snapshot {
            flows_total: self.flows.iter().map(|k| r(&k.total)).sum(),
            flows_active: self.flows.iter().map(|k| r(&k.active)).sum(),
            refused: r(&self.refused),
            upstream_failures: r(&self.upstream_failures),
            bytes_up: r(&self.bytes_up),
            bytes_down: r(&self.bytes_down),
        }
    }
}

/// Decrements the active flows of its kind when a flow ends, on every path.
pub struct ActiveFlow<'a>(&'a KindFlows);

impl<'a> ActiveFlow<'a> {
    /// Counts a new flow of listener `kind` as total and active.
    pub fn start(stats: &'a Stats, kind: u32) -> Self {
        let k = &stats.flows[(kind as usize).min(stats.flows.len() - 1)];
        k.total.fetch_add(1, Ordering::Relaxed);
        k.active.fetch_add(1, Ordering::Relaxed);
        ActiveFlow(k)
    }
}

impl Drop for ActiveFlow<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}
