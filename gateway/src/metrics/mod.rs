//! Prometheus metrics: `GET /metrics` on `[metrics] listen`
//! (default `127.0.0.1:9447`, empty: off).
//!
//! * [`events`]: counters of data-path events no other counter holds
//!   (static atomics; counting is one relaxed add at the place the event
//!   happens).
//! * [`collect`]: the collector that reads, at scrape time, what the
//!   gateway counts anyway (eBPF maps, proxy counters, spools, scanner
//!   pool) plus the event counters.
//! * [`serve`]: the small HTTP listener (bounded connections, request size
//!   and time).
//!
//! Built on `prometheus-client` (the Prometheus project's own crate)
//! rather than `metrics` + its exporter: its `Collector` reads existing
//! counters when scraped instead of having every one of them copied into a
//! global recorder on the data path, and it encodes both the classic text
//! format (0.0.4, the default here: Debian 12's `promtool check metrics`
//! rejects OpenMetrics counters) and OpenMetrics (served to scrapers whose
//! `Accept` asks for it, as Prometheus does), with no HTTP framework
//! attached. Its `Histogram` locks a mutex per observation, so the scan
//! latency histogram is [`events::Histogram`], atomics encoded through the
//! crate's encoder.
//!
//! To add a metric: a value the gateway already keeps → a few lines in
//! [`collect`]; a new event → a counter in [`events::Events`], one call
//! where the event happens, and its family in [`collect::Gateway`].

pub mod collect;
pub mod events;
pub mod serve;
pub mod settings;

pub use self::{events::events, serve::serve};
