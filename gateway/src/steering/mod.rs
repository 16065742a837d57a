//! Steering: the kernel side of interception.
//!
//! Loads the eBPF object built from `gateway-ebpf`, attaches the TC
//! classifier and the XDP filter to every client-facing interface, fills the
//! maps from the configuration and the gateway's listeners, and installs the
//! policy routing that delivers marked packets locally. Programs and links
//! belong to this process: they go away when it exits, even on SIGKILL;
//! the routing is removed by [`routing`] on exit and by [`guard`] when the
//! process is killed.

pub mod guard;
pub mod preflight;
pub mod routing;

use std::{
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
    sync::{Arc, Mutex},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, LpmTrie, MapData, PerCpuArray, SockMap, lpm_trie::Key},
    programs::{SchedClassifier, SkLookup, TcAttachType, Xdp, XdpMode as AyaXdpMode},
};
use gateway_common::{Counter, ExpectKey, ExpectValue, LpmAddr, counter, listener, steer_stat};
use serde::Serialize;

use crate::config::{self, XdpMode};

/// Why steering could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SteeringError {
    /// The embedded object did not load (verifier, missing BTF, ...).
    #[error("loading the eBPF programs failed: {0}")]
    Load(#[source] aya::EbpfError),
    /// A program could not be loaded or attached.
    #[error("{what} failed: {source}")]
    Program {
        /// What was being done.
        what: String,
        /// aya's error.
        source: aya::programs::ProgramError,
    },
    /// A map was missing or could not be written.
    #[error("{what} failed: {source}")]
    Map {
        /// What was being done.
        what: String,
        /// aya's error.
        source: aya::maps::MapError,
    },
    /// The own network namespace could not be opened.
    #[error("opening /proc/self/ns/net failed: {0}")]
    Netns(#[source] std::io::Error),
    /// The object lacks a map or program this code expects.
    #[error("the eBPF object has no {0}; it was built from another version of gateway-ebpf")]
    Missing(&'static str),
}

/// The eBPF object embedded at build time by `build.rs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway"));

/// Handle to the eBPF expectations map, shared with the FTP proxy.
#[derive(Clone)]
pub struct Expectations {
    map: Arc<Mutex<HashMap<MapData, ExpectKey, ExpectValue>>>,
}

impl Expectations {
    /// Steers connections from `client` to `server:port` to the listener
    /// of `kind` (see [`gateway_common::listener`]).
    pub fn add(&self, client: IpAddr, server: IpAddr, port: u16, kind: u32) -> Result<(), SteeringError> {
        let key = expect_key(client, server, port);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(key, ExpectValue { kind }, 0)
            .map_err(|source| SteeringError::Map { what: "adding an expectation".into(), source })
    }

    /// Removes an expectation; removing one that is not there is not an error.
    pub fn remove(&self, client: IpAddr, server: IpAddr, port: u16) -> Result<(), SteeringError> {
        let key = expect_key(client, server, port);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.remove(&key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(SteeringError::Map { what: "removing an expectation".into(), source }),
        }
    }

    /// Number of entries (for stats and leak checks in tests).
    pub fn len(&self) -> usize {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.keys().filter(Result::is_ok).count()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn expect_key(client: IpAddr, server: IpAddr, port: u16) -> ExpectKey {
    ExpectKey { client: config::addr16(client), server: config::addr16(server), port, _pad: [0; 2] }
}

/// Kernel counters, summed over CPUs.
#[derive(Clone, Debug, Default, Serialize)]
pub struct KernelStats {
    /// XDP counters by name (`tcp`, `udp`, `icmp`, `other`, `blocked`).
    pub xdp: std::collections::BTreeMap<&'static str, CounterStat>,
    /// TC steering counters by name.
    pub steer: std::collections::BTreeMap<&'static str, CounterStat>,
}

/// A packet and byte count.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct CounterStat {
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// Loaded and attached programs with their maps.
pub struct Steering {
    // Keeps programs and links alive; dropping it detaches everything.
    _ebpf: Ebpf,
    listeners: SockMap<MapData>,
    expectations: Expectations,
    counters: Option<PerCpuArray<MapData, Counter>>,
    steer_stats: PerCpuArray<MapData, Counter>,
}

impl Steering {
    /// Loads the programs, fills the configuration maps and attaches to
    /// every configured interface.
    pub fn start(cfg: &config::Steering) -> Result<Steering, SteeringError> {
        let mut ebpf = EbpfLoader::new()
            .override_global("FWMARK", &cfg.fwmark, true)
            .load(EBPF_OBJECT)
            .map_err(SteeringError::Load)?;

        let map_err = |what: &str| {
            let what = what.to_string();
            move |source| SteeringError::Map { what, source }
        };

        {
            let mut ports: HashMap<_, u16, u32> =
                HashMap::try_from(ebpf.map_mut("STEER_PORTS").ok_or(SteeringError::Missing("STEER_PORTS map"))?)
                    .map_err(map_err("opening STEER_PORTS"))?;
            for &p in &cfg.http_ports {
                ports.insert(p, listener::HTTP, 0).map_err(map_err("adding an HTTP port"))?;
            }
            for &p in &cfg.ftp_ports {
                ports.insert(p, listener::FTP_CONTROL, 0).map_err(map_err("adding an FTP port"))?;
            }
        }
        fill_trie(&mut ebpf, "BYPASS", &cfg.bypass)?;
        fill_trie(&mut ebpf, "BLOCK", &cfg.block)?;

        let tc: &mut SchedClassifier = ebpf
            .program_mut("steer")
            .ok_or(SteeringError::Missing("steer program"))?
            .try_into()
            .map_err(|source| SteeringError::Program { what: "finding the TC program".into(), source })?;
        tc.load().map_err(|source| SteeringError::Program { what: "loading the TC program".into(), source })?;
        for iface in &cfg.interfaces {
            tc.attach(iface, TcAttachType::Ingress).map_err(|source| SteeringError::Program {
                what: format!("attaching the TC program to {iface}"),
                source,
            })?;
        }

        // sk_lookup belongs to the network namespace the gateway runs in.
        let netns = std::fs::File::open("/proc/self/ns/net").map_err(SteeringError::Netns)?;
        let lookup: &mut SkLookup = ebpf
            .program_mut("reuse")
            .ok_or(SteeringError::Missing("reuse program"))?
            .try_into()
            .map_err(|source| SteeringError::Program { what: "finding the sk_lookup program".into(), source })?;
        lookup
            .load()
            .map_err(|source| SteeringError::Program { what: "loading the sk_lookup program".into(), source })?;
        lookup
            .attach(netns)
            .map_err(|source| SteeringError::Program { what: "attaching the sk_lookup program".into(), source })?;

        let xdp_on = cfg.xdp_mode != XdpMode::Off;
        if xdp_on {
            let mode = match cfg.xdp_mode {
                XdpMode::Native => AyaXdpMode::Driver,
                _ => AyaXdpMode::Skb,
            };
            let xdp: &mut Xdp = ebpf
                .program_mut("filter")
                .ok_or(SteeringError::Missing("filter program"))?
                .try_into()
                .map_err(|source| SteeringError::Program { what: "finding the XDP program".into(), source })?;
            xdp.load().map_err(|source| SteeringError::Program { what: "loading the XDP program".into(), source })?;
            for iface in &cfg.interfaces {
                xdp.attach(iface, mode).map_err(|source| SteeringError::Program {
                    what: format!("attaching the XDP program to {iface}"),
                    source,
                })?;
            }
        }

        let listeners = SockMap::try_from(ebpf.take_map("LISTENERS").ok_or(SteeringError::Missing("LISTENERS map"))?)
            .map_err(map_err("opening LISTENERS"))?;
        let expectations =
            HashMap::try_from(ebpf.take_map("EXPECTATIONS").ok_or(SteeringError::Missing("EXPECTATIONS map"))?)
                .map_err(map_err("opening EXPECTATIONS"))?;
        let counters = if xdp_on {
            Some(
                PerCpuArray::try_from(ebpf.take_map("COUNTERS").ok_or(SteeringError::Missing("COUNTERS map"))?)
                    .map_err(map_err("opening COUNTERS"))?,
            )
        } else {
            None
        };
        let steer_stats =
            PerCpuArray::try_from(ebpf.take_map("STEER_STATS").ok_or(SteeringError::Missing("STEER_STATS map"))?)
                .map_err(map_err("opening STEER_STATS"))?;

        Ok(Steering {
            _ebpf: ebpf,
            listeners,
            expectations: Expectations { map: Arc::new(Mutex::new(expectations)) },
            counters,
            steer_stats,
        })
    }

    /// Makes `socket` the target for new flows of `kind` in its family.
    pub fn register_listener(
        &mut self,
        kind: u32,
        local: SocketAddr,
        socket: &impl AsRawFd,
    ) -> Result<(), SteeringError> {
        let family = if local.is_ipv4() { listener::V4 } else { listener::V6 };
        self.listeners
            .set(listener::slot(kind, family), socket, 0)
            .map_err(|source| SteeringError::Map { what: format!("registering the listener on {local}"), source })
    }

    /// The shared expectations handle.
    pub fn expectations(&self) -> Expectations {
        self.expectations.clone()
    }

    /// Reads all kernel counters.
    pub fn stats(&self) -> KernelStats {
        let mut out = KernelStats::default();
        if let Some(c) = &self.counters {
            for (i, name) in counter::NAMES.iter().enumerate() {
                out.xdp.insert(name, sum(c, i as u32));
            }
        }
        for (i, name) in steer_stat::NAMES.iter().enumerate() {
            out.steer.insert(name, sum(&self.steer_stats, i as u32));
        }
        out
    }
}

fn sum(map: &PerCpuArray<MapData, Counter>, index: u32) -> CounterStat {
    let mut s = CounterStat::default();
    if let Ok(values) = map.get(&index, 0) {
        for v in values.iter() {
            s.packets += v.packets;
            s.bytes += v.bytes;
        }
    }
    s
}

fn fill_trie(ebpf: &mut Ebpf, name: &'static str, nets: &[ipnet::IpNet]) -> Result<(), SteeringError> {
    let map = ebpf.map_mut(name).ok_or(SteeringError::Missing(name))?;
    let mut trie: LpmTrie<_, LpmAddr, u8> =
        LpmTrie::try_from(map).map_err(|source| SteeringError::Map { what: format!("opening {name}"), source })?;
    for net in nets {
        let (addr, len) = config::lpm_key(net);
        trie.insert(&Key::new(len, addr), 1, 0)
            .map_err(|source| SteeringError::Map { what: format!("adding {net} to {name}"), source })?;
    }
    Ok(())
}

/// The index of interface `name`, if it exists in this network namespace.
pub fn if_index(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: c is a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}
