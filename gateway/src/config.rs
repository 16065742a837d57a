//! The configuration file (TOML): parsing, defaults and validation.
//!
//! Every key is documented, with its default, in `config/gateway.toml` at
//! the repository root. Unknown keys are errors: a typo in a firewall's
//! configuration must not silently fall back to a default.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::Deserialize;

use crate::{
    policy::Action,
    units::{Size, Span},
};

/// Why a configuration could not be used. Each message is one sentence
/// meant for the admin.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key, a wrong type or a bad value.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's description, with line and column.
        message: String,
    },
    /// A value parsed but does not make sense here.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// The whole configuration.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// eBPF steering: which flows go to the gateway.
    pub steering: Steering,
    /// The gateway's own listeners and upstream connections.
    pub proxy: Proxy,
    /// The control socket (`gateway stats`, `gateway expect`).
    pub control: Control,
    /// The scanning core: backend, policy, spooling.
    pub scan: Scan,
    /// The HTTP proxy.
    pub http: Http,
    /// The FTP gateway.
    pub ftp: Ftp,
    /// Logging.
    pub log: Log,
}

/// `[http]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// Scan response bodies (RESPMOD with ICAP).
    pub scan_downloads: bool,
    /// Scan request bodies before the server sees them (REQMOD with ICAP).
    pub scan_uploads: bool,
    /// HTML template for block pages; empty: the built-in page.
    pub block_page: PathBuf,
    /// When a scan has not finished this long after the response head
    /// arrived, send the head and trickle the body (`None`: "off").
    #[serde(deserialize_with = "crate::units::off_or_span")]
    pub trickle_after: Option<Span>,
    /// Bytes sent per `trickle_after` interval while trickling.
    pub trickle_bytes: Size,
    /// Remove Range/If-Range from requests so whole objects are scanned.
    pub strip_range: bool,
    /// Bodies whose Content-Encoding cannot be undone: block or allow.
    pub undecodable: Action,
    /// `Upgrade` (WebSocket): "relay" unscanned or "refuse".
    pub upgrade: Passage,
    /// `CONNECT`: "relay" unscanned or "refuse".
    pub connect: Passage,
    /// Longest request or response head.
    pub max_header_bytes: Size,
    /// Most header lines in a head.
    pub max_headers: usize,
    /// How long a client may take to send a request head (also the idle
    /// time between keep-alive requests).
    pub head_timeout: Span,
    /// How long a body may stall, and a server may take to answer.
    pub body_timeout: Span,
}

/// Pass something through unscanned, or refuse it.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Passage {
    /// Relay it byte for byte, unscanned.
    Relay,
    /// Refuse it.
    Refuse,
}

impl Default for Http {
    fn default() -> Self {
        use std::time::Duration;
        Http {
            scan_downloads: true,
            scan_uploads: true,
            block_page: PathBuf::new(),
            trickle_after: None,
            trickle_bytes: Size(1024),
            strip_range: true,
            undecodable: Action::Block,
            upgrade: Passage::Relay,
            connect: Passage::Refuse,
            max_header_bytes: Size(64 << 10),
            max_headers: 100,
            head_timeout: Span(Duration::from_secs(60)),
            body_timeout: Span(Duration::from_secs(120)),
        }
    }
}

/// `[ftp]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ftp {
    /// Scan transfers (false: relay FTP byte for byte).
    pub scan: bool,
    /// For every this many bytes received …
    pub trickle_every: Size,
    /// … this many go on before the verdict.
    pub trickle_bytes: Size,
    /// Let AUTH TLS/SSL sessions pass unscanned (else refused with 534).
    pub allow_ftps: bool,
    /// Allow REST (resume); the transferred part is scanned.
    pub allow_resume: bool,
    /// Longest command or reply line.
    pub max_line: usize,
    /// Idle time on the control connection before it is closed.
    pub idle_timeout: Span,
    /// How long a data connection may take to arrive, or stall.
    pub data_timeout: Span,
}

impl Default for Ftp {
    fn default() -> Self {
        use std::time::Duration;
        Ftp {
            scan: true,
            trickle_every: Size(4096 << 10),
            trickle_bytes: Size(1024),
            allow_ftps: false,
            allow_resume: true,
            max_line: 4096,
            idle_timeout: Span(Duration::from_secs(600)),
            data_timeout: Span(Duration::from_secs(60)),
        }
    }
}

/// `[log]`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// JSON-lines file for detection records; empty: the log only.
    pub detections: PathBuf,
}

/// `[steering]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Steering {
    /// Client-facing interfaces: TC and XDP programs attach here.
    pub interfaces: Vec<String>,
    /// Destination ports steered to the HTTP proxy.
    pub http_ports: Vec<u16>,
    /// Destination ports steered to the FTP proxy.
    pub ftp_ports: Vec<u16>,
    /// Client prefixes that are never steered.
    pub bypass: Vec<IpNet>,
    /// Source or destination prefixes dropped by XDP.
    pub block: Vec<IpNet>,
    /// XDP attach mode.
    pub xdp_mode: XdpMode,
    /// fwmark put on steered packets.
    pub fwmark: u32,
    /// Routing table holding `local default dev lo`.
    pub route_table: u32,
    /// Priority of the `fwmark → table` rule.
    pub rule_priority: u32,
}

impl Default for Steering {
    fn default() -> Self {
        Steering {
            interfaces: vec!["eth1".into()],
            http_ports: vec![80],
            ftp_ports: vec![21],
            bypass: Vec::new(),
            block: Vec::new(),
            xdp_mode: XdpMode::Skb,
            fwmark: gateway_common::DEFAULT_FWMARK,
            route_table: 4757,
            rule_priority: 1000,
        }
    }
}

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Generic (SKB) mode: works everywhere and keeps TSO on veth peers.
    Skb,
    /// Driver (native) mode.
    Native,
    /// No XDP program: no early drops, no XDP counters.
    Off,
}

/// `[proxy]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Proxy {
    /// Loopback port of the HTTP listener (steered flows arrive here).
    pub http_listener_port: u16,
    /// Loopback port of the FTP control listener.
    pub ftp_listener_port: u16,
    /// Loopback port of the FTP data listener.
    pub ftp_data_listener_port: u16,
    /// Also listen on IPv6 (`[::1]`) and steer IPv6 flows.
    pub ipv6: bool,
    /// How long to wait for the original destination to accept.
    pub connect_timeout: Span,
    /// Size of each direction's kernel pipe when relaying (splice).
    pub relay_pipe_size: u32,
}

impl Default for Proxy {
    fn default() -> Self {
        Proxy {
            http_listener_port: 15080,
            ftp_listener_port: 15021,
            ftp_data_listener_port: 15020,
            ipv6: true,
            connect_timeout: Span(std::time::Duration::from_secs(10)),
            relay_pipe_size: 1 << 20,
        }
    }
}

/// `[control]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Control {
    /// Unix socket for `gateway stats` and `gateway expect`; empty = none.
    pub socket: PathBuf,
}

impl Default for Control {
    fn default() -> Self {
        Control { socket: PathBuf::from("/run/gateway/control.sock") }
    }
}

/// Which scanner bodies go to.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ScanBackend {
    /// ClamAV's clamd (INSTREAM).
    Clamd,
    /// ICAP services (RESPMOD/REQMOD).
    Icap,
}

/// `[scan]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scan {
    /// `clamd` or `icap`.
    pub backend: ScanBackend,
    /// clamd's address: `unix:PATH` or `tcp:HOST:PORT`.
    pub clamd: String,
    /// ICAP services in order of preference.
    pub icap: Vec<String>,
    /// Scanner errors: `block` (fail closed) or `allow` (fail open).
    pub on_error: Action,
    /// Bodies larger than this are not scanned …
    pub max_scan_size: Size,
    /// … and are then blocked or allowed.
    pub on_oversize: Action,
    /// Directory for bodies held on disk.
    pub spool_dir: PathBuf,
    /// Memory one body may use before it goes to disk.
    pub spool_memory: Size,
    /// Memory all held bodies may use together.
    pub spool_memory_total: Size,
    /// Bound on each connect, read and write to the scanner.
    pub io_timeout: Span,
    /// ICAP: whole-scan deadline …
    pub icap_deadline: Span,
    /// … plus this much per MiB of body.
    pub icap_deadline_per_mib: Span,
    /// ICAP: consecutive failures that suspend a service …
    pub icap_failures_before_suspend: u32,
    /// … for this long.
    pub icap_suspend: Span,
    /// ICAP: connections per service at most (lowered by Max-Connections).
    pub icap_max_connections: usize,
    /// ICAP: how long OPTIONS hold when the service sends no Options-TTL.
    pub icap_options_ttl: Span,
    /// How long an infected body is remembered (by sha256, URL + validators).
    pub cache_ttl: Span,
    /// How many infected bodies are remembered.
    pub cache_entries: usize,
}

impl Default for Scan {
    fn default() -> Self {
        use std::time::Duration;
        Scan {
            backend: ScanBackend::Clamd,
            clamd: "unix:/run/clamav/clamd.ctl".into(),
            icap: vec!["icap://127.0.0.1:1344/avscan".into()],
            on_error: Action::Block,
            max_scan_size: Size(512 << 20),
            on_oversize: Action::Block,
            spool_dir: PathBuf::from("/var/spool/gateway"),
            spool_memory: Size(1 << 20),
            spool_memory_total: Size(64 << 20),
            io_timeout: Span(Duration::from_secs(30)),
            icap_deadline: Span(Duration::from_secs(60)),
            icap_deadline_per_mib: Span(Duration::from_secs(1)),
            icap_failures_before_suspend: 3,
            icap_suspend: Span(Duration::from_secs(30)),
            icap_max_connections: 32,
            icap_options_ttl: Span(Duration::from_secs(3600)),
            cache_ttl: Span(Duration::from_secs(3600)),
            cache_entries: 10000,
        }
    }
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Config::parse(&text, path)
    }

    /// Reads a file for `gateway scan`: only `[scan]` is validated, so a
    /// firewall's config can be used on a host without its interfaces.
    pub fn load_scan_only(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let config: Config = toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: path.to_owned(), message: describe_toml_error(&text, &e) })?;
        config.scan.validate().map_err(|message| ConfigError::Invalid { path: path.to_owned(), message })?;
        Ok(config)
    }

    /// Parses and validates configuration text; `path` is for messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.to_owned(), message: describe_toml_error(text, &e) })?;
        config.validate().map_err(|message| ConfigError::Invalid { path: path.to_owned(), message })?;
        Ok(config)
    }

    /// Checks what serde cannot: ports, overlaps, interfaces present.
    fn validate(&self) -> Result<(), String> {
        let s = &self.steering;
        if s.interfaces.is_empty() {
            return Err("steering.interfaces is empty: name at least one client-facing interface".into());
        }
        for name in &s.interfaces {
            if crate::steering::if_index(name).is_none() {
                return Err(format!("steering.interfaces names {name:?}, which is not an interface on this host"));
            }
        }
        for &p in s.http_ports.iter().chain(&s.ftp_ports) {
            if p == 0 {
                return Err("port 0 cannot be steered".into());
            }
        }
        if let Some(p) = s.http_ports.iter().find(|p| s.ftp_ports.contains(p)) {
            return Err(format!("port {p} is both in steering.http_ports and steering.ftp_ports"));
        }
        if s.fwmark == 0 {
            return Err("steering.fwmark must not be 0".into());
        }
        if matches!(s.route_table, 0 | 253..=255) {
            return Err(format!("steering.route_table {} is reserved by the kernel", s.route_table));
        }
        let p = &self.proxy;
        let ports = [p.http_listener_port, p.ftp_listener_port, p.ftp_data_listener_port];
        if ports.contains(&0) || ports[0] == ports[1] || ports[1] == ports[2] || ports[0] == ports[2] {
            return Err("proxy listener ports must be distinct and non-zero".into());
        }
        if self.http.trickle_after.is_some_and(|t| t.0.is_zero()) {
            return Err("http.trickle_after must be longer than 0 (or \"off\")".into());
        }
        self.scan.validate()
    }
}

impl Scan {
    /// Checks addresses and URLs; shared by the config file and `gateway scan`.
    pub fn validate(&self) -> Result<(), String> {
        crate::scan::clamd::ClamdAddr::parse(&self.clamd).map_err(|e| format!("scan.clamd: {e}"))?;
        if self.backend == ScanBackend::Icap && self.icap.is_empty() {
            return Err("scan.backend is \"icap\" but scan.icap lists no service".into());
        }
        for u in &self.icap {
            crate::scan::icap::ServiceUrl::parse(u).map_err(|e| format!("scan.icap: {e}"))?;
        }
        if self.spool_memory > self.spool_memory_total {
            return Err("scan.spool_memory is larger than scan.spool_memory_total".into());
        }
        Ok(())
    }
}

/// toml's own message names line and column; keep it to one sentence.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let msg: Vec<&str> = e.message().lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let msg = msg.join("; ");
    let msg = msg.trim_end_matches('.');
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {col}: {msg}")
        }
        None => msg.to_string(),
    }
}

/// The 16-byte form used by the eBPF maps and the prefix length in it.
pub fn lpm_key(net: &IpNet) -> ([u8; 16], u32) {
    match net {
        IpNet::V4(n) => (gateway_common::v4_mapped(n.network().octets()), 96 + u32::from(n.prefix_len())),
        IpNet::V6(n) => (n.network().octets(), u32::from(n.prefix_len())),
    }
}

/// The 16-byte form of an address.
pub fn addr16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => gateway_common::v4_mapped(a.octets()),
        IpAddr::V6(a) => a.octets(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("t.toml"))
    }

    #[test]
    fn unknown_key_is_named_with_position() {
        let e = parse("[steering]\ninterfaces = [\"lo\"]\nhttp_portz = [80]\n").unwrap_err().to_string();
        assert!(e.contains("line 3, column 1"), "{e}");
        assert!(e.contains("http_portz"), "{e}");
    }

    #[test]
    fn bad_cidr_is_rejected() {
        let e = parse("[steering]\ninterfaces = [\"lo\"]\nbypass = [\"10.0.0.0/33\"]\n").unwrap_err().to_string();
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn unknown_interface_is_rejected() {
        let e = parse("[steering]\ninterfaces = [\"nosuch0\"]\n").unwrap_err().to_string();
        assert!(e.contains("\"nosuch0\""), "{e}");
    }

    #[test]
    fn defaults_apply() {
        let c = parse("[steering]\ninterfaces = [\"lo\"]\n").unwrap();
        assert_eq!(c.steering.http_ports, vec![80]);
        assert_eq!(c.steering.xdp_mode, XdpMode::Skb);
    }

    /// The documented example must parse and match the built-in defaults,
    /// so the file and the code cannot drift apart.
    #[test]
    fn example_file_is_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/gateway.toml");
        let text = std::fs::read_to_string(&path).unwrap().replace("\"eth1\"", "\"lo\"");
        let file: Config = Config::parse(&text, &path).unwrap();
        let mut defaults = Config::default();
        defaults.steering.interfaces = vec!["lo".into()];
        assert_eq!(format!("{file:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn lpm_keys() {
        let (k, l) = lpm_key(&"198.18.0.0/24".parse().unwrap());
        assert_eq!(l, 120);
        assert_eq!(&k[10..], &[0xff, 0xff, 198, 18, 0, 0]);
    }
}
