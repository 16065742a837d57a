//! `[steering]`: which forwarded flows the eBPF programs hand to the
//! gateway, which they leave alone, and which XDP drops.

use std::{fmt, path::PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// `[steering]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Steering {
    /// Client-facing interfaces: TC and XDP programs attach here.
    pub interfaces: Vec<String>,
    /// Destination ports steered to the HTTP proxy.
    pub http_ports: Vec<u16>,
    /// Destination ports steered to the FTP proxy.
    pub ftp_ports: Vec<u16>,
    /// Client prefixes that are never steered (optionally only when they
    /// arrive on one interface).
    pub bypass: Vec<Bypass>,
    /// Source or destination prefixes dropped by XDP.
    pub block: Vec<IpNet>,
    /// Destinations the gateway refuses to connect to (reset and a log
    /// line): the FORWARD rules that steered flows no longer pass.
    pub deny_destinations: Vec<IpNet>,
    /// Also intercept flows to the firewall's own addresses.
    pub intercept_local: bool,
    /// XDP attach mode.
    pub xdp_mode: XdpMode,
    /// fwmark put on steered packets.
    pub fwmark: u32,
    /// Routing table holding `local default dev lo`.
    pub route_table: u32,
    /// Priority of the `fwmark → table` rule.
    pub rule_priority: u32,
    /// Where the programs' maps and links are pinned (on a bpffs), so that
    /// steering outlives the process and a successor takes it over.
    pub pin_dir: PathBuf,
    /// While no gateway process listens (stopped, crashed, restarting
    /// without `--takeover`): "forward" steered flows untouched (fail
    /// open) or "drop" them (fail closed).
    pub when_down: WhenDown,
    /// Destination ports steered to the TLS interception listener (set
    /// from `[tls]` when interception is on, not from this section).
    #[serde(skip)]
    pub tls_ports: Vec<u16>,
    /// UDP destination ports XDP drops (QUIC to intercepted TLS ports; set
    /// from `[tls] block_quic`).
    #[serde(skip)]
    pub drop_udp_ports: Vec<u16>,
}

impl Steering {
    /// Whether the XDP program is attached under these settings.
    pub fn xdp_attached(&self) -> bool {
        match self.xdp_mode {
            XdpMode::Off => false,
            XdpMode::Auto => !self.block.is_empty() || !self.drop_udp_ports.is_empty(),
            XdpMode::Skb | XdpMode::Native => true,
        }
    }
}

impl Default for Steering {
    fn default() -> Self {
        Steering {
            interfaces: vec!["eth1".into()],
            http_ports: vec![80],
            ftp_ports: vec![21],
            bypass: Vec::new(),
            block: Vec::new(),
            deny_destinations: Vec::new(),
            intercept_local: false,
            xdp_mode: XdpMode::Auto,
            fwmark: gateway_common::DEFAULT_FWMARK,
            route_table: 4757,
            rule_priority: 1000,
            pin_dir: PathBuf::from("/sys/fs/bpf/gateway"),
            when_down: WhenDown::Forward,
            tls_ports: Vec::new(),
            drop_udp_ports: Vec::new(),
        }
    }
}

/// What the programs do with steered flows while no gateway listens.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WhenDown {
    /// Forward them untouched, unscanned (fail open).
    Forward,
    /// Drop them (fail closed).
    Drop,
}

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Generic (SKB) mode, attached only while XDP has something to drop
    /// (`block` prefixes, UDP ports from `[tls] block_quic`): in generic
    /// mode the kernel copies every GRO-merged packet for XDP, which cost
    /// forwarded traffic 13-27 % on the rig.
    Auto,
    /// Generic (SKB) mode, always attached: works everywhere, counts every
    /// packet, keeps TSO on veth peers.
    Skb,
    /// Driver (native) mode.
    Native,
    /// No XDP program: no early drops, no XDP counters.
    Off,
}

/// A bypass entry: `"198.18.0.0/24"`, or `{ prefix = "198.18.0.3/32",
/// interface = "lan0" }` to trust the source address only on the interface
/// it belongs to (a client elsewhere that takes the address is steered).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bypass {
    /// Source prefix.
    pub prefix: IpNet,
    /// Only on this interface (`None`: on any).
    pub interface: Option<String>,
}

impl Serialize for Bypass {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.interface {
            None => s.serialize_str(&self.prefix.to_string()),
            Some(i) => s.serialize_str(&format!("{} on {i}", self.prefix)),
        }
    }
}

impl<'de> Deserialize<'de> for Bypass {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Bypass;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a prefix (\"10.0.0.0/8\") or { prefix = \"…\", interface = \"…\" }")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Bypass, E> {
                Ok(Bypass { prefix: s.parse().map_err(E::custom)?, interface: None })
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut m: A) -> Result<Bypass, A::Error> {
                let (mut prefix, mut interface) = (None, None);
                while let Some(k) = m.next_key::<String>()? {
                    match k.as_str() {
                        "prefix" => prefix = Some(m.next_value::<String>()?.parse().map_err(de::Error::custom)?),
                        "interface" => interface = Some(m.next_value::<String>()?),
                        other => return Err(de::Error::unknown_field(other, &["prefix", "interface"])),
                    }
                }
                Ok(Bypass { prefix: prefix.ok_or_else(|| de::Error::missing_field("prefix"))?, interface })
            }
        }
        d.deserialize_any(V)
    }
}

impl Steering {
    /// Ports, marks and prefixes; interfaces must exist and be of a kind
    /// the programs can steer on.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.interfaces.is_empty() {
            return Err("steering.interfaces is empty: name at least one client-facing interface".into());
        }
        for name in &self.interfaces {
            crate::netdev::check(name)?;
        }
        for b in &self.bypass {
            if let Some(i) = &b.interface
                && !self.interfaces.contains(i)
            {
                return Err(format!("steering.bypass ties {} to {i:?}, which is not in steering.interfaces", b.prefix));
            }
        }
        for &p in self.http_ports.iter().chain(&self.ftp_ports) {
            if p == 0 {
                return Err("port 0 cannot be steered".into());
            }
        }
        if let Some(p) = self.http_ports.iter().find(|p| self.ftp_ports.contains(p)) {
            return Err(format!("port {p} is both in steering.http_ports and steering.ftp_ports"));
        }
        let nets = self.bypass.iter().map(|b| ("bypass", &b.prefix));
        let nets = nets.chain(self.block.iter().map(|n| ("block", n)));
        for (key, net) in nets.chain(self.deny_destinations.iter().map(|n| ("deny_destinations", n))) {
            check_family(key, net)?;
        }
        if self.fwmark == 0 {
            return Err("steering.fwmark must not be 0".into());
        }
        if matches!(self.route_table, 0 | 253..=255) {
            return Err(format!("steering.route_table {} is reserved by the kernel", self.route_table));
        }
        Ok(())
    }
}

/// IPv4 written as IPv6 (`::ffff:a.b.c.d/…`, `::a.b.c.d/…`) is refused: the
/// families are kept apart, and such a prefix would silently match nothing.
fn check_family(key: &str, net: &IpNet) -> Result<(), String> {
    if let IpNet::V6(n) = net {
        let o = n.network().octets();
        let mapped = o[..10].iter().all(|&b| b == 0) && o[10] == 0xff && o[11] == 0xff && n.prefix_len() >= 96;
        // `::` and `::1` are IPv6's own.
        let compat = o[..12].iter().all(|&b| b == 0) && n.prefix_len() > 96 && o[12..] > [0, 0, 0, 1][..];
        if mapped || compat {
            return Err(format!(
                "steering.{key} lists {net}, an IPv4 prefix written as IPv6; write it as IPv4 (IPv4 and IPv6 are matched separately)"
            ));
        }
    }
    Ok(())
}
