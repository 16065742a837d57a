//! Re-reading the configuration file while running (SIGHUP, `gateway
//! reload`). A file that does not load changes nothing. Keys that cannot
//! change under a running process (the listeners, the interfaces, where
//! steering is pinned, the routing, the control and metrics endpoints, the
//! log setup) keep their running values, and each one that differs is
//! named so the admin knows a restart (`gateway run --takeover`) is needed.

use std::path::Path;

use crate::config::{Config, ConfigError};

/// A configuration to switch to, and what of it waits for a restart.
pub struct Reread {
    /// The new configuration, with the running values of the fixed keys.
    pub config: Config,
    /// Keys whose new values wait for a restart.
    pub pending: Vec<&'static str>,
}

/// Reads and validates `path`; fixed keys are taken from `running`.
pub fn reread(path: &Path, running: &Config) -> Result<Reread, ConfigError> {
    let mut config = Config::load(path)?;
    let mut pending = Vec::new();
    keep_fixed(&mut config, running, &mut pending);
    Ok(Reread { config, pending })
}

/// Puts the running value back into each fixed key that changed.
fn keep_fixed(new: &mut Config, old: &Config, pending: &mut Vec<&'static str>) {
    macro_rules! fixed {
        ($($section:ident . $key:ident),+ $(,)?) => {$(
            if format!("{:?}", new.$section.$key) != format!("{:?}", old.$section.$key) {
                pending.push(concat!(stringify!($section), ".", stringify!($key)));
                new.$section.$key = old.$section.$key.clone();
            }
        )+};
    }
    fixed!(
        steering.interfaces,
        steering.xdp_mode,
        steering.fwmark,
        steering.route_table,
        steering.rule_priority,
        steering.pin_dir,
        proxy.http_listener_port,
        proxy.ftp_listener_port,
        proxy.ftp_data_listener_port,
        proxy.ipv6,
        // The TLS listener is opened at start only; the steered and dropped
        // ports follow from these (CA files and policies do reload).
        proxy.tls_listener_port,
        tls.intercept,
        tls.ports,
        steering.tls_ports,
        steering.drop_udp_ports,
        control.socket,
        metrics.listen,
        log.format,
        log.level,
        log.ebpf,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_keys_keep_their_running_values() {
        let old = Config::default();
        let mut new = Config::default();
        new.steering.http_ports = vec![80, 8080];
        new.proxy.http_listener_port = 16080;
        new.steering.interfaces = vec!["lan9".into()];
        let mut pending = Vec::new();
        keep_fixed(&mut new, &old, &mut pending);
        assert_eq!(pending, ["steering.interfaces", "proxy.http_listener_port"]);
        assert_eq!(new.proxy.http_listener_port, old.proxy.http_listener_port);
        assert_eq!(new.steering.http_ports, [80, 8080], "live keys take their new values");
    }
}
