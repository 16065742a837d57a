//! Steering: the kernel side of interception.
//!
//! Loads the eBPF object built from `gateway-ebpf`, fills its maps from the
//! configuration ([`apply`]) and the gateway's listeners, attaches the TC
//! classifier and the XDP filter to every client-facing interface and the
//! sk_lookup program to the namespace ([`links`]), and installs the policy
//! routing that delivers marked packets locally ([`routing`]).
//!
//! Lifecycle: maps and links are pinned ([`pin`]), so steering outlives the
//! process. A starting gateway adopts what is pinned: the same maps, its
//! programs swapped into the same links. Listeners live in two generations
//! of sockmap slots: a gateway registers its own in the generation the
//! running one does not use, then switches new flows over with one map
//! write ([`Steering::activate`]); flows of the previous process keep their
//! sockets (and its FTP data expectations name its own slots) while it
//! drains. With no gateway listening, `when_down` decides: forward or drop.

pub mod apply;
pub mod keys;
mod links;
pub mod pin;
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
    maps::{HashMap, MapData, PerCpuArray, SockMap},
    programs::{SchedClassifier, SkLookup, Xdp, XdpMode as AyaXdpMode},
};
use gateway_common::{Counter, ExpectKey, ExpectValue, config as flags, counter, listener, steer_stat};
use serde::Serialize;
use tracing::info;

use self::keys::expect_key;
use self::pin::Pins;
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
    /// The pinned state could not be set up, read or written.
    #[error("pinned steering: {0}")]
    Pin(String),
    /// Another gateway process owns the steering here.
    #[error(
        "a gateway (pid {0}) already steers this network namespace: `gateway run --takeover` replaces it without a gap, or stop it first"
    )]
    Running(u32),
}

/// The names of the maps, all pinned.
const MAPS: &[&str] = &[
    "STEER_PORTS",
    "UDP_DROP_PORTS",
    "EXPECTATIONS",
    "BYPASS",
    "BLOCK",
    "LISTENERS",
    "TW_SYN",
    "FRAG_DROPPED",
    "CONFIG",
    "L2_LEN",
    "COUNTERS",
    "STEER_STATS",
];

/// The eBPF object embedded at build time by `build.rs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway"));

/// Handle to the eBPF expectations map, shared with the FTP proxy.
#[derive(Clone)]
pub struct Expectations {
    map: Arc<Mutex<HashMap<MapData, ExpectKey, ExpectValue>>>,
    generation: u32,
}

impl Expectations {
    /// Steers connections from `client` to `server:port` to this process's
    /// listener of `kind` (see [`gateway_common::listener`]).
    pub fn add(&self, client: IpAddr, server: IpAddr, port: u16, kind: u32) -> Result<(), SteeringError> {
        let key = expect_key(client, server, port);
        let family = if server.is_ipv4() { listener::V4 } else { listener::V6 };
        let slot = listener::slot(self.generation, kind, family);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(key, ExpectValue { slot, client_port: 0, _pad: 0 }, 0)
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

/// Loaded programs with their (pinned) maps.
pub struct Steering {
    // Keeps the programs loaded; the links outlive it through their pins.
    // Locked for map writes after start (reload, release).
    ebpf: Mutex<Ebpf>,
    pins: Pins,
    generation: u32,
    previous: Option<u32>,
    listeners: SockMap<MapData>,
    expectations: Expectations,
    counters: Option<PerCpuArray<MapData, Counter>>,
    steer_stats: PerCpuArray<MapData, Counter>,
    logger: Option<aya_log::EbpfLogger<crate::logging::EbpfLog>>,
}

/// The eBPF programs' log records, to be polled ([`Steering::take_logger`]).
pub type ProgramLog = aya_log::EbpfLogger<crate::logging::EbpfLog>;

impl Steering {
    /// Loads the programs on the pinned maps (made if this is the first
    /// gateway here) and writes the configuration into them. Nothing new is
    /// steered until [`Steering::attach`] and [`Steering::activate`].
    /// Another live gateway here is refused unless `takeover`.
    /// `log` turns on the programs' debug lines ([`crate::logging`]).
    pub fn load(cfg: &Settings, takeover: bool, log: bool) -> Result<Steering, SteeringError> {
        let pins = Pins::open(&cfg.pin_dir).map_err(|e| SteeringError::Pin(e.to_string()))?;
        let paths: Vec<_> = MAPS.iter().map(|m| (*m, pins.map(m))).collect();
        let mut loader = EbpfLoader::new();
        loader.override_global("FWMARK", &cfg.fwmark, true);
        // 0 keeps no log statement (Level::Error is 1); 4 is Debug.
        let level: u8 = if log { 4 } else { 0 };
        loader.override_global(aya_log::LEVEL, &level, true);
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(SteeringError::Load)?;
        let owner = apply::config(&ebpf, flags::OWNER_PID)?;
        let current = apply::config(&ebpf, flags::GENERATION)?;
        let previous = (owner != std::process::id() && alive_gateway(owner)).then_some(owner);
        if let Some(pid) = previous
            && !takeover
        {
            return Err(SteeringError::Running(pid));
        }
        // A live predecessor keeps its generation until it drains; a dead
        // one's slots are empty and may be reused.
        let generation = if previous.is_some() { (current + 1) % listener::GENERATIONS } else { current };
        apply::apply(&mut ebpf, cfg)?;
        let tc: &mut SchedClassifier = program(&mut ebpf, "steer")?;
        tc.load().map_err(prog_err("loading the TC program"))?;
        let lookup: &mut SkLookup = program(&mut ebpf, "reuse")?;
        lookup.load().map_err(prog_err("loading the sk_lookup program"))?;
        if cfg.xdp_mode != XdpMode::Off {
            let xdp: &mut Xdp = program(&mut ebpf, "filter")?;
            xdp.load().map_err(prog_err("loading the XDP program"))?;
        }
        let listeners = SockMap::try_from(ebpf.take_map("LISTENERS").ok_or(SteeringError::Missing("LISTENERS map"))?)
            .map_err(map_err("opening LISTENERS"))?;
        let map = HashMap::try_from(ebpf.take_map("EXPECTATIONS").ok_or(SteeringError::Missing("EXPECTATIONS map"))?)
            .map_err(map_err("opening EXPECTATIONS"))?;
        let expectations = Expectations { map: Arc::new(Mutex::new(map)), generation };
        let counters = match cfg.xdp_mode {
            XdpMode::Off => None,
            _ => Some(
                PerCpuArray::try_from(ebpf.take_map("COUNTERS").ok_or(SteeringError::Missing("COUNTERS map"))?)
                    .map_err(map_err("opening COUNTERS"))?,
            ),
        };
        let steer_stats =
            PerCpuArray::try_from(ebpf.take_map("STEER_STATS").ok_or(SteeringError::Missing("STEER_STATS map"))?)
                .map_err(map_err("opening STEER_STATS"))?;
        let logger = if log {
            Some(
                aya_log::EbpfLogger::init_with_logger(&mut ebpf, crate::logging::EbpfLog)
                    .map_err(|e| SteeringError::Pin(format!("reading the programs' log: {e}")))?,
            )
        } else {
            None
        };
        Ok(Steering {
            ebpf: Mutex::new(ebpf),
            pins,
            generation,
            previous,
            listeners,
            expectations,
            counters,
            steer_stats,
            logger,
        })
    }

    /// The programs' log, when `[log] ebpf` is on (once).
    pub fn take_logger(&mut self) -> Option<ProgramLog> {
        self.logger.take()
    }

    /// The gateway process this one takes over from, if one was running.
    pub fn previous_owner(&self) -> Option<u32> {
        self.previous
    }

    /// Attaches the programs: TC and XDP to every configured interface (in
    /// the pinned links, replacing earlier programs in place), sk_lookup to
    /// this network namespace; links of interfaces no longer configured go.
    pub fn attach(&mut self, cfg: &Settings) -> Result<(), SteeringError> {
        let ebpf = self.ebpf.get_mut().unwrap_or_else(|p| p.into_inner());
        let tc: &mut SchedClassifier = program(ebpf, "steer")?;
        for iface in &cfg.interfaces {
            links::tc(tc, &self.pins, iface)?;
        }
        links::prune(&self.pins, "tc", &cfg.interfaces)?;
        let lookup: &mut SkLookup = program(ebpf, "reuse")?;
        links::sk_lookup(lookup, &self.pins)?;
        attach_xdp(ebpf, &self.pins, cfg)
    }

    /// Makes this process's listeners the ones new flows go to, and this
    /// process the owner. Call after every listener is registered.
    pub fn activate(&self) -> Result<(), SteeringError> {
        let mut ebpf = self.ebpf();
        apply::set_config(&mut ebpf, flags::GENERATION, self.generation)?;
        apply::set_config(&mut ebpf, flags::OWNER_PID, std::process::id())?;
        info!("steering: new flows go to this gateway (listener generation {})", self.generation);
        Ok(())
    }

    /// Rewrites the configuration in the maps (reload); ports, prefixes
    /// and flags change for the next packet, the programs stay.
    pub fn reconfigure(&self, cfg: &Settings) -> Result<(), SteeringError> {
        let mut ebpf = self.ebpf();
        apply::apply(&mut ebpf, cfg)?;
        // `auto` attaches XDP once a block list appears and detaches it
        // when the list empties.
        attach_xdp(&mut ebpf, &self.pins, cfg)
    }

    /// Gives up ownership on a clean exit, if this process still has it
    /// (a successor that took over keeps it).
    pub fn release(&self) -> Result<(), SteeringError> {
        let mut ebpf = self.ebpf();
        if apply::config(&ebpf, flags::OWNER_PID)? == std::process::id() {
            apply::set_config(&mut ebpf, flags::OWNER_PID, 0)?;
        }
        Ok(())
    }

    /// Whether this process still owns the steering (no successor took it).
    pub fn owned(&self) -> bool {
        apply::config(&self.ebpf(), flags::OWNER_PID).is_ok_and(|pid| pid == std::process::id())
    }

    fn ebpf(&self) -> std::sync::MutexGuard<'_, Ebpf> {
        self.ebpf.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `socket` as this process's listener of `kind` in its
    /// family (new flows reach it once [`Steering::activate`] ran).
    pub fn register_listener(
        &mut self,
        kind: u32,
        local: SocketAddr,
        socket: &impl AsRawFd,
    ) -> Result<(), SteeringError> {
        let family = if local.is_ipv4() { listener::V4 } else { listener::V6 };
        self.listeners
            .set(listener::slot(self.generation, kind, family), socket, 0)
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

/// Whether `pid` is a running gateway process.
fn alive_gateway(pid: u32) -> bool {
    pid != 0 && std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "gateway")
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

/// The XDP filter on every configured interface while it is attached under
/// `cfg` ([`Settings::xdp_attached`]), on none otherwise (pinned links of
/// interfaces it no longer runs on go).
fn attach_xdp(ebpf: &mut Ebpf, pins: &Pins, cfg: &Settings) -> Result<(), SteeringError> {
    let on = cfg.xdp_attached();
    if on {
        let mode = if cfg.xdp_mode == XdpMode::Native { AyaXdpMode::Driver } else { AyaXdpMode::Skb };
        let xdp: &mut Xdp = program(ebpf, "filter")?;
        for iface in &cfg.interfaces {
            links::xdp(xdp, pins, iface, mode)?;
        }
    }
    match (on, cfg.xdp_mode) {
        (true, mode) => info!("XDP filter on {:?} ({mode:?} mode)", cfg.interfaces),
        (false, XdpMode::Auto) => info!("XDP filter not attached: nothing to drop (xdp_mode = \"auto\")"),
        (false, _) => info!("XDP filter off (xdp_mode = \"off\")"),
    }
    links::prune(pins, "xdp", if on { &cfg.interfaces } else { &[] })
}
