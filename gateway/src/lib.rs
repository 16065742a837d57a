//! gateway: a transparent virus-scanning gateway for Linux firewall hosts.
//!
//! Data flow: [`steering`] (eBPF TC/XDP, policy routing) hands forwarded
//! flows to the [`proxy`], which relays them to their original destination.
//! See `docs/ARCHITECTURE.md` for the whole map.

pub mod app;
pub mod config;
pub mod control;
pub mod proxy;
pub mod stats;
pub mod steering;
pub mod units;
