//! gateway: a transparent virus-scanning gateway for Linux firewall hosts.
//!
//! Data flow: [`steering`] (eBPF TC/XDP, policy routing) hands forwarded
//! flows to the [`proxy`], which relays them to their original destination;
//! bodies go through the [`scan`] core (clamd or ICAP, [`spool`]) to a
//! [`verdict`], which the [`policy`] turns into a decision.
//! See `docs/ARCHITECTURE.md` for the whole map.

pub mod app;
pub mod config;
pub mod control;
pub mod detections;
pub mod policy;
pub mod proxy;
pub mod scan;
pub mod spool;
pub mod stats;
pub mod steering;
pub mod units;
pub mod verdict;
