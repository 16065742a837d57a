//! `[proxy]`: the gateway's listeners, its connections on to the original
//! destinations, and the caps on how many it holds.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::units::Span;

/// `[proxy]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Proxy {
    /// Loopback port of the HTTP listener (steered flows arrive here).
    pub http_listener_port: u16,
    /// Loopback port of the FTP control listener.
    pub ftp_listener_port: u16,
    /// Loopback port of the FTP data listener.
    pub ftp_data_listener_port: u16,
    /// Loopback port of the TLS interception listener (opened only with
    /// `[tls] intercept`).
    pub tls_listener_port: u16,
    /// Also listen on IPv6 (`[::1]`) and steer IPv6 flows; when false,
    /// IPv6 SYNs to steered ports are dropped, never forwarded unscanned.
    pub ipv6: bool,
    /// How long to wait for the original destination to accept.
    pub connect_timeout: Span,
    /// Size of each direction's kernel pipe when relaying (splice).
    pub relay_pipe_size: u32,
    /// Connections the gateway serves at once, all clients together.
    pub max_connections: usize,
    /// Connections one client address may have at once.
    pub max_connections_per_client: usize,
    /// SO_MARK on the gateway's upstream sockets (0: none), for OUTPUT rules.
    pub upstream_mark: u32,
    /// Addresses to connect from, in turn (empty: the kernel's choice).
    pub source_addresses: Vec<IpAddr>,
    /// On SIGTERM (or when a successor takes over), how long flows in
    /// progress may take to finish before they are closed.
    pub drain_timeout: Span,
}

impl Default for Proxy {
    fn default() -> Self {
        Proxy {
            http_listener_port: 15080,
            ftp_listener_port: 15021,
            ftp_data_listener_port: 15020,
            tls_listener_port: 15443,
            ipv6: true,
            connect_timeout: Span(std::time::Duration::from_secs(10)),
            relay_pipe_size: 1 << 20,
            max_connections: 8192,
            max_connections_per_client: 512,
            upstream_mark: 0,
            source_addresses: Vec::new(),
            drain_timeout: Span(std::time::Duration::from_secs(30)),
        }
    }
}

impl Proxy {
    pub(crate) fn validate(&self) -> Result<(), String> {
        let ports = [self.http_listener_port, self.ftp_listener_port, self.ftp_data_listener_port];
        if ports.contains(&0) || ports[0] == ports[1] || ports[1] == ports[2] || ports[0] == ports[2] {
            return Err("proxy listener ports must be distinct and non-zero".into());
        }
        if self.max_connections == 0 || self.max_connections_per_client == 0 {
            return Err("proxy.max_connections and proxy.max_connections_per_client must be at least 1".into());
        }
        Ok(())
    }
}
