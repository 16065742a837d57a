//! `[tls]`: opt-in interception of TLS flows (issue 14). Off by default:
//! then the TLS ports are not steered and pass untouched.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::units::Span;

/// Splice a flow byte for byte (unscanned, the client sees the real server)
/// or refuse it.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SpliceOrBlock {
    /// Relay unread.
    Splice,
    /// Refuse (a TLS alert, or a block page where a handshake is possible).
    Block,
}

/// What to do with a ClientHello that carries an Encrypted Client Hello
/// extension. Browsers send one to every server (a random "GREASE" one
/// when the server publishes no ECH key), and a real one cannot be told
/// from it.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Ech {
    /// Intercept on the outer server name and leave the extension
    /// unanswered: ECH is rejected (RFC 9849 §6.1.6). A GREASE client goes
    /// on as usual; a client that really used ECH checks the gateway's
    /// certificate for the outer (public) name and connects again without
    /// ECH, and that connection is intercepted like any other.
    Reject,
    /// Refuse with a TLS alert.
    Block,
    /// Relay unread.
    Splice,
}

/// `[tls]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// Steer `ports` to the TLS listener and intercept.
    pub intercept: bool,
    /// Destination TCP ports that carry TLS (HTTPS).
    pub ports: Vec<u16>,
    /// The gateway's CA certificate (PEM), which clients trust.
    pub ca_cert: PathBuf,
    /// Its private key (PKCS#8 PEM).
    pub ca_key: PathBuf,
    /// Server names (globs: `*.bank.example` matches any depth below
    /// bank.example) that are spliced, never decrypted.
    pub bypass_sni: Vec<String>,
    /// ClientHellos without a server name.
    pub no_sni: SpliceOrBlock,
    /// ClientHellos with an Encrypted Client Hello extension (the real
    /// server name is hidden).
    pub ech: Ech,
    /// `"system"` (the host's CA store) or a PEM file of root certificates
    /// that server certificates are checked against.
    pub upstream_roots: String,
    /// Server certificates that fail the check (untrusted, expired, wrong
    /// name): a block page for the client, or splice unscanned.
    pub on_upstream_error: SpliceOrBlock,
    /// XDP drops UDP to `ports` (QUIC) while intercepting, so that browsers
    /// fall back to TCP.
    pub block_quic: bool,
    /// Bound on each TLS handshake (the ClientHello, the server's, the
    /// client's).
    pub handshake_timeout: Span,
    /// Minted leaf certificates kept (one per server name).
    pub leaf_cache_entries: usize,
    /// How long a minted leaf is reused.
    pub leaf_cache_ttl: Span,
}

impl Default for Tls {
    fn default() -> Self {
        Tls {
            intercept: false,
            ports: vec![443],
            ca_cert: PathBuf::from("/etc/gateway/ca.pem"),
            ca_key: PathBuf::from("/etc/gateway/ca.key"),
            bypass_sni: Vec::new(),
            no_sni: SpliceOrBlock::Splice,
            ech: Ech::Reject,
            upstream_roots: "system".into(),
            on_upstream_error: SpliceOrBlock::Block,
            block_quic: true,
            handshake_timeout: Span(std::time::Duration::from_secs(10)),
            leaf_cache_entries: 4096,
            leaf_cache_ttl: Span(std::time::Duration::from_secs(3600)),
        }
    }
}

impl Tls {
    /// Ports, globs and bounds; with `intercept`, the CA files and the
    /// upstream roots are loaded and checked too (so that `check-config`
    /// and `run` refuse them with one sentence).
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.ports.contains(&0) {
            return Err("tls.ports: port 0 cannot be steered".into());
        }
        if self.intercept && self.ports.is_empty() {
            return Err("tls.intercept is on but tls.ports is empty".into());
        }
        for g in &self.bypass_sni {
            super::hello::check_glob(g).map_err(|e| format!("tls.bypass_sni: {e}"))?;
        }
        if self.leaf_cache_entries == 0 {
            return Err("tls.leaf_cache_entries must be at least 1".into());
        }
        if self.handshake_timeout.0.is_zero() {
            return Err("tls.handshake_timeout must be more than 0".into());
        }
        if self.intercept {
            super::mint::Ca::load(&self.ca_cert, &self.ca_key).map_err(|e| e.to_string())?;
            super::upstream::roots(&self.upstream_roots).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    fn parse(tls: &str) -> Result<Config, String> {
        Config::parse(&format!("[steering]\ninterfaces = [\"lo\"]\n\n[tls]\n{tls}\n"), Path::new("t.toml"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn interception_fills_the_steering_ports() {
        let c = parse("").unwrap();
        assert!(c.steering.tls_ports.is_empty() && c.steering.drop_udp_ports.is_empty(), "off by default");
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = super::super::mint::Ca::create(dir.path()).unwrap();
        let on = format!(
            "intercept = true\nports = [443, 8443]\nca_cert = {cert:?}\nca_key = {key:?}\nupstream_roots = {cert:?}\n"
        );
        let c = parse(&on).unwrap();
        assert_eq!((c.steering.tls_ports.clone(), c.steering.drop_udp_ports), (vec![443, 8443], vec![443, 8443]));
        let c = parse(&format!("{on}block_quic = false\n")).unwrap();
        assert!(c.steering.drop_udp_ports.is_empty());
    }

    #[test]
    fn bad_ca_files_and_values_are_one_sentence() {
        let e = parse("intercept = true\nca_cert = \"/nonexistent/ca.pem\"").unwrap_err();
        assert!(e.contains("cannot read /nonexistent/ca.pem"), "{e}");
        let e = parse("bypass_sni = [\"a.*.example\"]").unwrap_err();
        assert!(e.contains("tls.bypass_sni"), "{e}");
        let e = parse("no_sni = \"maybe\"").unwrap_err();
        assert!(e.contains("no_sni") || e.contains("maybe"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = super::super::mint::Ca::create(dir.path()).unwrap();
        let e = parse(&format!(
            "intercept = true\nca_cert = {cert:?}\nca_key = {key:?}\nupstream_roots = \"/nonexistent/roots.pem\""
        ))
        .unwrap_err();
        assert!(e.contains("tls.upstream_roots"), "{e}");
        let e = parse(&format!("intercept = true\nca_cert = {cert:?}\nca_key = {key:?}\nports = [80]")).unwrap_err();
        assert!(e.contains("port 80"), "{e}");
    }
}
