//! gateway: a transparent virus-scanning gateway for Linux firewall hosts.
//!
//! Data flow: [`steering`] (eBPF TC/XDP, policy routing) hands forwarded
//! flows to the [`proxy`] (HTTP, FTP), which connects on to their original
//! destination ([`net`]); bodies go through the [`scan`] core (clamd or
//! ICAP, held in the [`spool`]) to a [`verdict`], which [`decide`] turns
//! into a decision (with the [`policy`], the [`cache`] and a detection
//! record); the proxy delivers or blocks.
//! See `docs/ARCHITECTURE.md` for the whole map.

pub mod app;
pub mod cache;
pub mod config;
pub mod control;
pub mod decide;
pub mod detections;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod netdev;
pub mod notify;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod scan;
pub mod serve;
pub mod spool;
pub mod stats;
pub mod steering;
pub mod transport;
pub mod units;
pub mod verdict;
pub mod wire;
