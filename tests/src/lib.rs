//! The network-namespace test rig.
//!
//! Three namespaces, client ↔ gateway ↔ server, joined by veth pairs; the
//! gateway namespace forwards between them like a firewall host. Tests and
//! `cargo xtask` build rigs, start real programs inside them and read what
//! happened. Everything a rig creates (namespaces, the processes in them,
//! its scratch directory) goes away when it is dropped, also on panic.

pub mod cicap;
pub mod clamd;
pub mod debian;
pub mod ftpd;
pub mod gateway;
pub mod nginx;
pub mod prometheus;
pub mod rig;
pub mod serve;
pub mod squid;
pub mod tls;
pub mod tun;
pub mod util;
pub mod web;

pub use gateway::Gateway;
pub use rig::{Ns, Rig};
