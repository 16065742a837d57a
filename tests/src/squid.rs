//! Debian 13's Squid 6.13 (from the folder `cargo xtask setup` debootstraps:
//! Debian 12's Squid stalls ICAP bodies over ~64 KiB, Squid bug 5352) in a
//! rig namespace, as a forward proxy whose ICAP services are given.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, ensure};

use crate::{
    rig::{Ns, Rig},
    util::wait_for,
};

/// Where `cargo xtask setup` keeps the Debian 13 folder.
pub const TRIXIE: &str = "/var/cache/gateway-bench/trixie";

/// A running Squid.
pub struct Squid {
    /// Its cache.log (inside the Debian 13 folder).
    pub log: std::path::PathBuf,
    /// The `http_port` it listens on.
    pub port: u16,
}

impl Squid {
    /// Starts Squid in `ns` on `port` (all addresses) with `icap_lines`
    /// (its `icap_service` and `adaptation_access` lines). Its mounts (proc,
    /// a shared-memory tmpfs) live in the mount namespace `ip netns exec`
    /// gives it and go with it; it is killed with the rig.
    pub fn start(rig: &mut Rig, ns: Ns, port: u16, icap_lines: &str) -> anyhow::Result<Squid> {
        let root = Path::new(TRIXIE);
        ensure!(
            root.join("usr/sbin/squid").symlink_metadata().is_ok(),
            "no Squid 6.13 in {TRIXIE}: run `cargo xtask setup` (it debootstraps Debian 13 once)"
        );
        let tag = rig.name(ns).to_string();
        let conf_rel = format!("etc/squid/gwtest-{tag}.conf");
        let log_rel = format!("var/log/squid/gwtest-{tag}.log");
        let conf = format!(
            "visible_hostname gwtest\nhttp_port {port}\ncache deny all\naccess_log none\n\
             cache_log /{log_rel}\npid_filename /run/squid-gwtest-{tag}.pid\nhttp_access allow all\n\
             icap_enable on\n{icap_lines}\nshutdown_lifetime 1 seconds\n"
        );
        std::fs::write(root.join(&conf_rel), conf)?;
        let _ = std::fs::remove_file(root.join(&log_rel));
        let script = format!(
            "mount -t proc proc {r}/proc && mount -t tmpfs -o mode=1777 tmpfs {r}/dev/shm && \
             exec chroot {r} squid -N -f /{conf_rel}",
            r = root.display()
        );
        let mut cmd = rig.cmd(ns, "sh");
        cmd.args(["-c", &script]);
        let out = rig.dir().join("squid.out");
        rig.spawn(cmd, &out)?;
        let p = port.to_string();
        wait_for("squid to listen", Duration::from_secs(60), || {
            let out = rig.run(ns, "ss", &["-Hltn", &format!("sport = :{p}")]).ok()?;
            (!out.stdout.is_empty()).then_some(())
        })
        .with_context(|| {
            format!(
                "{}{}",
                std::fs::read_to_string(&out).unwrap_or_default(),
                std::fs::read_to_string(root.join(&log_rel)).unwrap_or_default()
            )
        })?;
        Ok(Squid { log: root.join(log_rel), port })
    }
}
