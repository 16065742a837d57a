//! `[metrics]`: where the Prometheus endpoint listens.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// `[metrics]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// Address and port of `GET /metrics` (Prometheus); empty: no endpoint.
    pub listen: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics { listen: "127.0.0.1:9447".into() }
    }
}

impl Metrics {
    /// The address to listen on, `None` when the endpoint is off.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.listen.parse().ok()
    }

    /// Checks that `listen` is empty or an address with a port.
    pub fn validate(&self) -> Result<(), String> {
        if self.listen.is_empty() || self.addr().is_some() {
            return Ok(());
        }
        Err(format!(
            "metrics.listen {:?} is not an address with a port (\"127.0.0.1:9447\", \"[::1]:9447\"; empty: off)",
            self.listen
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_is_an_address_or_empty() {
        let m = |s: &str| Metrics { listen: s.into() };
        assert_eq!(m("").addr(), None);
        assert!(m("").validate().is_ok());
        assert_eq!(Metrics::default().addr(), Some("127.0.0.1:9447".parse().unwrap()));
        assert!(m("[::1]:9447").validate().is_ok());
        let e = m("localhost:9447").validate().unwrap_err();
        assert!(e.contains("metrics.listen \"localhost:9447\""), "{e}");
        assert!(m("127.0.0.1").validate().is_err(), "a port is needed");
    }
}
