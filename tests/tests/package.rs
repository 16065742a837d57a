//! The Debian package (issue 13, item 9): built with cargo-deb (as `cargo
//! xtask deb` does), installed with dpkg into a fresh Debian 12 tree (an
//! overlay on the debootstrapped tree, in a mount namespace of the test's
//! own), where `gateway --version` and `gateway check-config
//! /etc/gateway/gateway.toml` must work and the installed unit must pass
//! `systemd-analyze verify`; `dpkg --purge` must then leave nothing of it.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use anyhow::ensure;
use tests::{
    Ns, Rig, debian,
    util::{output_text, wait_for},
};

/// A Debian 12 root: the cached tree under an overlay whose upper layer is
/// in the rig's directory, mounted (with /proc, /sys and /dev) inside a
/// mount namespace that a holder process keeps alive. The mounts go with
/// the holder when the rig drops it, also on failure.
struct Chroot {
    holder: u32,
    root: PathBuf,
    upper: PathBuf,
}

impl Chroot {
    fn new(rig: &mut Rig, deb: &Path) -> anyhow::Result<Chroot> {
        let lower = debian::bookworm_tree()?;
        let d = rig.dir().join("chroot");
        let (upper, work, root) = (d.join("upper"), d.join("work"), d.join("root"));
        for p in [&upper, &work, &root] {
            std::fs::create_dir_all(p)?;
        }
        let script = format!(
            "set -e\nmount -t overlay overlay -o lowerdir={l},upperdir={u},workdir={w} {r}\n\
             mount -t proc proc {r}/proc\nmount -t sysfs sysfs {r}/sys\nmount --rbind /dev {r}/dev\n\
             cp {deb} {r}/tmp/gateway.deb\ntouch {d}/ready\nexec sleep infinity\n",
            l = lower.display(),
            u = upper.display(),
            w = work.display(),
            r = root.display(),
            deb = deb.display(),
            d = d.display(),
        );
        let mut cmd = rig.cmd(Ns::Gateway, "unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
        let holder = rig.spawn(cmd, &d.join("holder.log"))?;
        wait_for("the Debian 12 overlay", Duration::from_secs(10), || d.join("ready").exists().then_some(())).map_err(
            |e| anyhow::anyhow!("{e}: {}", std::fs::read_to_string(d.join("holder.log")).unwrap_or_default()),
        )?;
        Ok(Chroot { holder, root, upper })
    }

    /// `program args…` in the holder's namespaces (outside the chroot).
    fn outside(&self, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--target={}", self.holder)).args(["--mount", "--net", "--"]).arg(program).args(args);
        Ok(cmd.output()?)
    }

    /// `program args…` inside the Debian 12 root.
    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        let mut all = vec![self.root.to_str().unwrap_or_default(), program];
        all.extend_from_slice(args);
        self.outside("chroot", &all)
    }

    /// Runs and fails unless the command succeeded; returns its output.
    fn ok(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = self.run(program, args)?;
        ensure!(out.status.success(), "{program} {args:?} in Debian 12: {}", output_text(&out));
        Ok(output_text(&out))
    }

    fn exists(&self, path: &str) -> anyhow::Result<bool> {
        Ok(self.run("test", &["-e", path])?.status.success())
    }
}

/// Files (not directories) the package work left in the overlay's upper
/// layer, but for dpkg's own records and logs.
fn residue(upper: &Path) -> anyhow::Result<Vec<String>> {
    let out = Command::new("find").arg(upper).args(["-not", "-type", "d"]).output()?;
    let prefix = format!("{}/", upper.display());
    let bookkeeping =
        ["var/lib/dpkg/", "var/log/", "var/cache/", "var/lib/systemd/deb-systemd-helper-", "tmp/gateway.deb"];
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter(|f| !bookkeeping.iter().any(|b| f.starts_with(b)))
        .map(str::to_string)
        .collect())
}

#[test]
fn deb_installs_runs_and_purges_in_debian_12() -> anyhow::Result<()> {
    let mut rig = Rig::new("pkg")?;
    let deb = debian::build_deb(&rig.dir().join("deb"), true)?;
    assert!(deb.ends_with(format!("gateway_{}_amd64.deb", env!("CARGO_PKG_VERSION"))), "{}", deb.display());
    // The shipped configuration names the client-facing interface eth1.
    rig.ip(Ns::Gateway, "link add eth1 type veth peer name eth1p")?;
    let c = Chroot::new(&mut rig, &deb)?;
    assert!(!c.exists("/usr/bin/gateway")?, "a fresh tree");

    c.ok("dpkg", &["-i", "/tmp/gateway.deb"])?;
    let version = c.ok("gateway", &["--version"])?;
    assert_eq!(version.trim(), format!("gateway {}", env!("CARGO_PKG_VERSION")));
    let check = c.ok("gateway", &["check-config", "/etc/gateway/gateway.toml"])?;
    assert_eq!(check.trim(), "/etc/gateway/gateway.toml: ok");
    let conffiles = c.ok("dpkg-query", &["-W", "-f=${Conffiles}", "gateway"])?;
    assert!(conffiles.contains("/etc/gateway/gateway.toml"), "{conffiles}");
    let control = c.ok("dpkg-query", &["-W", "-f=${Depends}|${Recommends}", "gateway"])?;
    assert!(
        control.contains("libc6") && control.contains("procps") && control.ends_with("|clamav-daemon"),
        "{control}"
    );
    for f in ["/usr/share/doc/gateway/README.Debian", "/usr/share/doc/gateway/examples/clamd-tmpfs.conf"] {
        assert!(c.exists(f)?, "{f} missing");
    }
    // The installed unit, unchanged, finds its binary in this root; the
    // tmpfiles entry makes the spool.
    let root = c.root.to_string_lossy().into_owned();
    let unit = format!("{root}/usr/lib/systemd/system/gateway.service");
    let verify = c.outside("systemd-analyze", &["verify", &format!("--root={root}"), &unit])?;
    assert!(
        verify.status.success() && output_text(&verify).trim().is_empty(),
        "systemd-analyze verify: {}",
        output_text(&verify)
    );
    let tmpfiles = c.outside("systemd-tmpfiles", &[&format!("--root={root}"), "--create", "gateway.conf"])?;
    assert!(tmpfiles.status.success(), "systemd-tmpfiles: {}", output_text(&tmpfiles));
    assert_eq!(c.ok("stat", &["-c", "%a %U", "/var/spool/gateway"])?.trim(), "700 root");

    c.ok("dpkg", &["--purge", "gateway"])?;
    assert!(!c.run("dpkg-query", &["-W", "gateway"])?.status.success(), "still known to dpkg");
    for gone in ["/usr/bin/gateway", "/etc/gateway", "/usr/lib/systemd/system/gateway.service", "/var/spool/gateway"] {
        assert!(!c.exists(gone)?, "{gone} left after purge");
    }
    let left = residue(&c.upper)?;
    assert!(left.is_empty(), "left in the tree after purge: {left:?}");
    Ok(())
}
