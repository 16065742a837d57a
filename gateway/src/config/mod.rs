//! The configuration file (TOML): parsing, defaults and validation.
//!
//! Each section's settings and their checks live beside the code they set
//! (`steering::settings`, `proxy::settings`, `proxy::http::settings`,
//! `proxy::ftp::settings`, `scan::settings`); this module reads the file
//! and assembles them, so no layer below imports the configuration.
//!
//! Every key is documented, with its default, in `config/gateway.toml` at
//! the repository root. Unknown keys are errors: a typo in a firewall's
//! configuration must not silently fall back to a default.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::{
    logging::Log,
    metrics::settings::Metrics,
    proxy::{
        ftp::settings::Ftp,
        http::settings::{Http, Passage},
        settings::Proxy,
        tls::settings::{Ech, SpliceOrBlock, Tls},
    },
    scan::settings::{Scan, ScanBackend},
    serve::{api::settings::ApiServer, icap::settings::IcapServer},
    steering::settings::{Bypass, Steering, XdpMode},
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
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
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
    /// The ICAP server (the scanning core served to other proxies).
    pub icap_server: IcapServer,
    /// The antivirus API server.
    pub api_server: ApiServer,
    /// The HTTP proxy.
    pub http: Http,
    /// The FTP gateway.
    pub ftp: Ftp,
    /// TLS interception (off by default).
    pub tls: Tls,
    /// Logging.
    pub log: Log,
    /// The Prometheus endpoint.
    pub metrics: Metrics,
}

/// `[control]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Control {
    /// Unix socket for `gateway stats` and `gateway expect` (mode 0600);
    /// empty = none.
    pub socket: PathBuf,
}

impl Default for Control {
    fn default() -> Self {
        Control { socket: PathBuf::from("/run/gateway/control.sock") }
    }
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Config::parse(&text, path)
    }

    /// Reads a file without validating it against this host (`gateway
    /// detach`: the interfaces may be gone by then).
    pub fn load_unchecked(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Config::parse_unchecked(&text, path)
    }

    /// Reads a file for `gateway scan`: only `[scan]` is validated, so a
    /// firewall's config can be used on a host without its interfaces.
    pub fn load_scan_only(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let config = Config::parse_unchecked(&text, path)?;
        config.scan.validate().map_err(|message| ConfigError::Invalid { path: path.to_owned(), message })?;
        Ok(config)
    }

    /// Parses and validates configuration text; `path` is for messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config = Config::parse_unchecked(text, path)?;
        config.validate().map_err(|message| ConfigError::Invalid { path: path.to_owned(), message })?;
        Ok(config)
    }

    fn parse_unchecked(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.to_owned(), message: describe_toml_error(text, &e) })?;
        config.assemble_tls();
        Ok(config)
    }

    /// `[tls]` decides two steering settings: which ports go to the TLS
    /// listener, and which UDP ports XDP drops (QUIC), both only while
    /// interception is on.
    fn assemble_tls(&mut self) {
        let on = self.tls.intercept;
        self.steering.tls_ports = if on { self.tls.ports.clone() } else { Vec::new() };
        self.steering.drop_udp_ports = if on && self.tls.block_quic { self.tls.ports.clone() } else { Vec::new() };
    }

    /// `[tls]` against the other sections: its listener port and its ports.
    fn validate_tls(&self) -> Result<(), String> {
        self.tls.validate()?;
        let p = &self.proxy;
        let others = [0, p.http_listener_port, p.ftp_listener_port, p.ftp_data_listener_port];
        if self.tls.intercept && others.contains(&p.tls_listener_port) {
            return Err("proxy.tls_listener_port must be non-zero and differ from the other listener ports".into());
        }
        let s = &self.steering;
        if let Some(port) = s.tls_ports.iter().find(|p| s.http_ports.contains(p) || s.ftp_ports.contains(p)) {
            return Err(format!("port {port} is both in tls.ports and steering.http_ports or ftp_ports"));
        }
        Ok(())
    }

    /// Checks what serde cannot, section by section.
    fn validate(&self) -> Result<(), String> {
        self.steering.validate()?;
        self.proxy.validate()?;
        self.scan.validate()?;
        self.icap_server.validate()?;
        self.api_server.validate()?;
        self.http.validate()?;
        self.metrics.validate()?;
        self.ftp.validate()?;
        self.log.validate()?;
        self.validate_tls()
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

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("t.toml"))
    }

    #[test]
    fn unknown_key_is_named_with_position() {
        let e = parse("[steering]\ninterfaces = [\"lo\"]\nhttp_portz = [80]\n").unwrap_err().to_string();
        assert!(e.contains("line 3, column 1"), "{e}");
        assert!(e.contains("http_portz"), "{e}");
    }

    #[test]
    fn defaults_apply() {
        let c = parse("[steering]\ninterfaces = [\"lo\"]\n").unwrap();
        assert_eq!(c.steering.http_ports, vec![80]);
        assert_eq!(c.steering.xdp_mode, XdpMode::Auto);
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
        // And it documents every key there is.
        let keys = toml::to_string(&defaults).unwrap();
        for line in keys.lines().filter(|l| l.contains(" = ")) {
            let key = line.split(" = ").next().unwrap_or_default();
            assert!(
                text.lines().any(|l| l.starts_with(&format!("{key} = "))),
                "config/gateway.toml does not document {key:?}"
            );
        }
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
    fn ipv4_written_as_ipv6_is_refused_and_families_stay_apart() {
        for p in ["::ffff:0:0/96", "::ffff:198.18.0.0/120", "::198.18.0.0/120"] {
            let e = parse(&format!("[steering]\ninterfaces = [\"lo\"]\nbypass = [\"{p}\"]\n")).unwrap_err().to_string();
            assert!(e.contains("write it as IPv4"), "{p}: {e}");
        }
        // All of IPv6 is a prefix of its own family only.
        let c = parse("[steering]\ninterfaces = [\"lo\"]\nblock = [\"::/0\"]\n").unwrap();
        assert_eq!(c.steering.block.len(), 1);
    }

    #[test]
    fn bypass_entries_may_name_an_interface() {
        let c = parse(
            "[steering]\ninterfaces = [\"lo\"]\nbypass = [\"10.0.0.0/8\", { prefix = \"10.1.0.0/16\", interface = \"lo\" }]\n",
        )
        .unwrap();
        assert_eq!(c.steering.bypass[1].interface.as_deref(), Some("lo"));
        let e =
            parse("[steering]\ninterfaces = [\"lo\"]\nbypass = [{ prefix = \"10.1.0.0/16\", interface = \"eth7\" }]\n")
                .unwrap_err()
                .to_string();
        assert!(e.contains("not in steering.interfaces"), "{e}");
    }
}
