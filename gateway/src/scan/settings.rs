//! `[scan]`: the scanning core — backend, policy, limits, spooling.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::policy::{Action, Policy};
use crate::units::{Size, Span};

/// Which scanner bodies go to.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ScanBackend {
    /// ClamAV's clamd (INSTREAM).
    Clamd,
    /// ICAP services (RESPMOD/REQMOD).
    Icap,
    /// An antivirus API (Cloudmersive's virus-scan API): `[scan.api]`.
    Api,
}

impl ScanBackend {
    /// The name in the configuration and in metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            ScanBackend::Clamd => "clamd",
            ScanBackend::Icap => "icap",
            ScanBackend::Api => "api",
        }
    }
}

/// `[scan]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scan {
    /// `clamd`, `icap` or `api`.
    pub backend: ScanBackend,
    /// clamd addresses: `unix:PATH` or `tcp:HOST:PORT`; more than one make
    /// a pool.
    #[serde(deserialize_with = "crate::units::one_or_many")]
    pub clamd: Vec<String>,
    /// ICAP services; more than one make a pool.
    #[serde(deserialize_with = "crate::units::one_or_many")]
    pub icap: Vec<String>,
    /// Scanner errors: `block` (fail closed) or `allow` (fail open).
    pub on_error: Action,
    /// Bodies larger than this are not scanned …
    pub max_scan_size: Size,
    /// … and are then blocked or allowed.
    pub on_oversize: Action,
    /// Scans in flight per scanner (pool member) at most (0: clamd's
    /// MaxThreads × 2, or the ICAP service's Max-Connections); more wait in
    /// line.
    pub max_scans: usize,
    /// How long a body may wait in line for a scanner before the scan
    /// fails as busy (`on_error`).
    pub queue_timeout: Span,
    /// Directory for bodies held on disk.
    pub spool_dir: PathBuf,
    /// Memory one body may use before it goes to disk.
    pub spool_memory: Size,
    /// Memory all held bodies may use together.
    pub spool_memory_total: Size,
    /// Disk all held bodies may use together.
    pub spool_max_total: Size,
    /// Bound on each connect, read and write to the scanner.
    pub io_timeout: Span,
    /// ICAP: whole-scan deadline …
    pub icap_deadline: Span,
    /// … plus this much per MiB of body.
    pub icap_deadline_per_mib: Span,
    /// Pools: time between health checks of every member (0: none).
    pub health_interval: Span,
    /// Pools: failed scans in a row that suspend a member …
    #[serde(alias = "icap_failures_before_suspend")]
    pub failures_before_suspend: u32,
    /// … for this long.
    #[serde(alias = "icap_suspend")]
    pub suspend: Span,
    /// ICAP: connections per service at most (lowered by Max-Connections).
    pub icap_max_connections: usize,
    /// ICAP: how long OPTIONS hold when the service sends no Options-TTL.
    pub icap_options_ttl: Span,
    /// How long an infected body is remembered (by sha256, URL + validators).
    pub cache_ttl: Span,
    /// How many infected bodies are remembered.
    pub cache_entries: usize,
    /// `[scan.api]`: the antivirus-API backend (last: a TOML table).
    pub api: crate::scan::api::settings::Api,
}

impl Default for Scan {
    fn default() -> Self {
        use std::time::Duration;
        Scan {
            backend: ScanBackend::Clamd,
            clamd: vec!["unix:/run/clamav/clamd.ctl".into()],
            icap: vec!["icap://127.0.0.1:1344/avscan".into()],
            on_error: Action::Block,
            max_scan_size: Size(512 << 20),
            on_oversize: Action::Block,
            max_scans: 0,
            queue_timeout: Span(Duration::from_secs(60)),
            spool_dir: PathBuf::from("/var/spool/gateway"),
            spool_memory: Size(1 << 20),
            spool_memory_total: Size(64 << 20),
            spool_max_total: Size(4 << 30),
            io_timeout: Span(Duration::from_secs(30)),
            icap_deadline: Span(Duration::from_secs(60)),
            icap_deadline_per_mib: Span(Duration::from_secs(1)),
            health_interval: Span(Duration::from_secs(5)),
            failures_before_suspend: 3,
            suspend: Span(Duration::from_secs(30)),
            icap_max_connections: 32,
            icap_options_ttl: Span(Duration::from_secs(3600)),
            cache_ttl: Span(Duration::from_secs(3600)),
            cache_entries: 10000,
            api: Default::default(),
        }
    }
}

impl Scan {
    /// Checks addresses and URLs; shared by the config file and `gateway scan`.
    pub fn validate(&self) -> Result<(), String> {
        if self.backend == ScanBackend::Clamd && self.clamd.is_empty() {
            return Err("scan.backend is \"clamd\" but scan.clamd lists no address".into());
        }
        for a in &self.clamd {
            crate::scan::clamd::ClamdAddr::parse(a).map_err(|e| format!("scan.clamd: {e}"))?;
        }
        if self.failures_before_suspend == 0 {
            return Err("scan.failures_before_suspend must be at least 1".into());
        }
        if self.backend == ScanBackend::Icap && self.icap.is_empty() {
            return Err("scan.backend is \"icap\" but scan.icap lists no service".into());
        }
        for u in &self.icap {
            crate::scan::icap::ServiceUrl::parse(u).map_err(|e| format!("scan.icap: {e}"))?;
        }
        self.api.validate(self.backend == ScanBackend::Api)?;
        if self.spool_memory > self.spool_memory_total {
            return Err("scan.spool_memory is larger than scan.spool_memory_total".into());
        }
        if self.spool_max_total < self.max_scan_size {
            return Err(
                "scan.spool_max_total is smaller than scan.max_scan_size: no body that size could be held".into()
            );
        }
        Ok(())
    }

    /// How pools treat their members.
    pub fn pool_settings(&self) -> crate::scan::pool::PoolSettings {
        crate::scan::pool::PoolSettings {
            health_interval: self.health_interval.0,
            health_timeout: self.io_timeout.0.min(std::time::Duration::from_secs(10)),
            failures_before_suspend: self.failures_before_suspend,
            suspend: self.suspend.0,
        }
    }

    /// The policy for failed scans; `undecodable` comes from `[http]`.
    pub fn policy(&self, undecodable: Action) -> Policy {
        Policy { on_error: self.on_error, on_oversize: self.on_oversize, undecodable }
    }
}
