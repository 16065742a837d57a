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
pub mod keys;
pub mod preflight;
pub mod routing;
pub mod settings;

use std::{
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
    sync::{Arc, Mutex},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, SockMap},
    programs::{SchedClassifier, SkLookup, TcAttachType, Xdp, XdpMode as AyaXdpMode},
};
use gateway_common::{Counter, ExpectKey, ExpectValue, PrefixKey, config as flags, counter, listener, steer_stat};
use serde::Serialize;

use self::keys::{expect_key, prefix_key};
use self::settings::{Steering as Settings, XdpMode};

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
    /// A configured interface went away or changed kind since the check.
    #[error("interface {0:?} is gone or cannot carry steering")]
    Interface(String),
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
        map.insert(key, ExpectValue { kind, client_port: 0, _pad: 0 }, 0)
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
    ebpf: Ebpf,
    listeners: SockMap<MapData>,
    expectations: Expectations,
    counters: Option<PerCpuArray<MapData, Counter>>,
    steer_stats: PerCpuArray<MapData, Counter>,
}

impl Steering {
    /// Loads the programs and fills the configuration maps; nothing is
    /// attached yet, so listeners can be registered before the first
    /// packet is steered ([`Steering::attach`]).
    pub fn load(cfg: &Settings) -> Result<Steering, SteeringError> {
        let mut ebpf = EbpfLoader::new()
            .override_global("FWMARK", &cfg.fwmark, true)
            .load(EBPF_OBJECT)
            .map_err(SteeringError::Load)?;
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
            for &p in &cfg.tls_ports {
                ports.insert(p, listener::TLS, 0).map_err(map_err("adding a TLS port"))?;
            }
        }
        {
            let mut udp: HashMap<_, u16, u8> =
                HashMap::try_from(ebpf.map_mut("UDP_DROP_PORTS").ok_or(SteeringError::Missing("UDP_DROP_PORTS map"))?)
                    .map_err(map_err("opening UDP_DROP_PORTS"))?;
            for &p in &cfg.drop_udp_ports {
                udp.insert(p, 1, 0).map_err(map_err("adding a UDP port to drop"))?;
            }
        }
        let mut bypass = Vec::new();
        for b in &cfg.bypass {
            let ifindex = match &b.interface {
                Some(i) => crate::netdev::index(i).ok_or(SteeringError::Interface(i.clone()))?,
                None => 0,
            };
            bypass.push((b.prefix, ifindex));
        }
        fill_trie(&mut ebpf, "BYPASS", &bypass)?;
        let block: Vec<_> = cfg.block.iter().map(|n| (*n, 0)).collect();
        fill_trie(&mut ebpf, "BLOCK", &block)?;
        let mut config: Array<_, u32> =
            Array::try_from(ebpf.map_mut("CONFIG").ok_or(SteeringError::Missing("CONFIG map"))?)
                .map_err(map_err("opening CONFIG"))?;
        let f = if cfg.intercept_local { flags::flag::INTERCEPT_LOCAL } else { 0 };
        config.set(flags::FLAGS, f, 0).map_err(map_err("setting the steering flags"))?;
        let mut l2: HashMap<_, u32, u32> =
            HashMap::try_from(ebpf.map_mut("L2_LEN").ok_or(SteeringError::Missing("L2_LEN map"))?)
                .map_err(map_err("opening L2_LEN"))?;
        for name in &cfg.interfaces {
            let index = crate::netdev::index(name).ok_or_else(|| SteeringError::Interface(name.clone()))?;
            let len = crate::netdev::l2_len(name).map_err(|_| SteeringError::Interface(name.clone()))?;
            l2.insert(index, len, 0).map_err(map_err("recording an interface's link header"))?;
        }
        let tc: &mut SchedClassifier = program(&mut ebpf, "steer")?;
        tc.load().map_err(prog_err("loading the TC program"))?;
        let lookup: &mut SkLookup = program(&mut ebpf, "reuse")?;
        lookup.load().map_err(prog_err("loading the sk_lookup program"))?;
        let xdp_on = cfg.xdp_mode != XdpMode::Off;
        if xdp_on {
            let xdp: &mut Xdp = program(&mut ebpf, "filter")?;
            xdp.load().map_err(prog_err("loading the XDP program"))?;
        }
        let listeners = SockMap::try_from(ebpf.take_map("LISTENERS").ok_or(SteeringError::Missing("LISTENERS map"))?)
            .map_err(map_err("opening LISTENERS"))?;
        let expectations =
            HashMap::try_from(ebpf.take_map("EXPECTATIONS").ok_or(SteeringError::Missing("EXPECTATIONS map"))?)
                .map_err(map_err("opening EXPECTATIONS"))?;
        let counters = if xdp_on {
            let m = ebpf.take_map("COUNTERS").ok_or(SteeringError::Missing("COUNTERS map"))?;
            Some(PerCpuArray::try_from(m).map_err(map_err("opening COUNTERS"))?)
        } else {
            None
        };
        let steer_stats =
            PerCpuArray::try_from(ebpf.take_map("STEER_STATS").ok_or(SteeringError::Missing("STEER_STATS map"))?)
                .map_err(map_err("opening STEER_STATS"))?;
        Ok(Steering {
            ebpf,
            listeners,
            expectations: Expectations { map: Arc::new(Mutex::new(expectations)) },
            counters,
            steer_stats,
        })
    }

    /// Attaches the programs: TC and XDP to every configured interface,
    /// sk_lookup to this network namespace.
    pub fn attach(&mut self, cfg: &Settings) -> Result<(), SteeringError> {
        let tc: &mut SchedClassifier = program(&mut self.ebpf, "steer")?;
        for iface in &cfg.interfaces {
            tc.attach(iface, TcAttachType::Ingress)
                .map_err(prog_err(&format!("attaching the TC program to {iface}")))?;
        }
        // sk_lookup belongs to the network namespace the gateway runs in.
        let netns = std::fs::File::open("/proc/self/ns/net").map_err(SteeringError::Netns)?;
        let lookup: &mut SkLookup = program(&mut self.ebpf, "reuse")?;
        lookup.attach(netns).map_err(prog_err("attaching the sk_lookup program"))?;
        if cfg.xdp_mode != XdpMode::Off {
            let mode = if cfg.xdp_mode == XdpMode::Native { AyaXdpMode::Driver } else { AyaXdpMode::Skb };
            let xdp: &mut Xdp = program(&mut self.ebpf, "filter")?;
            for iface in &cfg.interfaces {
                xdp.attach(iface, mode).map_err(prog_err(&format!("attaching the XDP program to {iface}")))?;
            }
        }
        Ok(())
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

fn map_err(what: &str) -> impl FnOnce(aya::maps::MapError) -> SteeringError {
    let what = what.to_string();
    move |source| SteeringError::Map { what, source }
}

fn prog_err(what: &str) -> impl FnOnce(aya::programs::ProgramError) -> SteeringError {
    let what = what.to_string();
    move |source| SteeringError::Program { what, source }
}

/// The program `name` of the object, as its type.
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, SteeringError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(SteeringError::Missing(name))?
        .try_into()
        .map_err(prog_err(&format!("finding the {name} program")))
}

/// Fills an LPM trie with (prefix, interface index or 0).
fn fill_trie(ebpf: &mut Ebpf, name: &'static str, nets: &[(ipnet::IpNet, u32)]) -> Result<(), SteeringError> {
    let map = ebpf.map_mut(name).ok_or(SteeringError::Missing(name))?;
    let mut trie: LpmTrie<_, PrefixKey, u8> =
        LpmTrie::try_from(map).map_err(|source| SteeringError::Map { what: format!("opening {name}"), source })?;
    for (net, ifindex) in nets {
        trie.insert(&prefix_key(net, *ifindex), 1, 0)
            .map_err(|source| SteeringError::Map { what: format!("adding {net} to {name}"), source })?;
    }
    Ok(())
}
