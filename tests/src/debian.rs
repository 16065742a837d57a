//! The Debian package (cargo-deb) and a fresh Debian 12 tree to install it
//! into: used by `cargo xtask deb`, `cargo xtask setup` and the package
//! test.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::util::{run_ok, workspace_root};

/// A Debian 12 (bookworm) tree, debootstrapped once and kept, like the
/// benchmarks' Debian 13 tree. Tests use it as the read-only lower layer of
/// an overlay and never change it.
pub const BOOKWORM: &str = "/var/cache/gateway-bench/bookworm";

/// What the tree holds beyond minbase: what a firewall host running the
/// gateway has anyway (systemd as init; procps, whose /bin/kill the unit's
/// ExecReload uses).
pub const BOOKWORM_INCLUDE: &str = "systemd,procps";

/// Files that show the tree is complete.
const BOOKWORM_MARKS: [&str; 3] = ["usr/bin/dpkg", "usr/bin/systemctl", "usr/bin/kill"];

/// The package's file name for this version.
pub fn deb_name() -> String {
    format!("gateway_{}_amd64.deb", env!("CARGO_PKG_VERSION"))
}

/// Packs the release binary already built (`target/release/gateway`) with
/// cargo-deb into `dir`; returns the package's path. `fast`: lighter
/// compression (seconds instead of tens of seconds; the same contents).
pub fn build_deb(dir: &Path, fast: bool) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let out = dir.join(deb_name());
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["deb", "--package", "gateway", "--no-build", "--output"]).arg(&out).current_dir(workspace_root());
    if fast {
        cmd.arg("--fast");
    }
    run_ok(&mut cmd).context("cargo deb (installed by `cargo xtask setup`)")?;
    if !out.exists() {
        bail!("cargo deb succeeded but {} is missing", out.display());
    }
    Ok(out)
}

/// The Debian mirror apt uses on this machine (`URIs:` of the bookworm
/// entry in /etc/apt/sources.list.d/*.sources), else deb.debian.org.
pub fn mirror() -> String {
    let found = std::fs::read_dir("/etc/apt/sources.list.d").ok().and_then(|dir| {
        dir.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "sources")).find_map(|e| {
            let text = std::fs::read_to_string(e.path()).ok()?;
            text.split("\n\n")
                .find(|stanza| stanza.lines().any(|l| l.starts_with("Suites:") && l.contains(" bookworm")))
                .and_then(|stanza| {
                    let uris = stanza.lines().find_map(|l| l.strip_prefix("URIs:"))?;
                    uris.split_whitespace().next().map(str::to_string)
                })
        })
    });
    found.unwrap_or_else(|| "http://deb.debian.org/debian".into())
}

/// Makes [`BOOKWORM`] if it is not there: debootstrap into a `.partial`
/// folder, renamed when complete, so a run that was cut short is redone
/// rather than used. Takes a few minutes, once.
pub fn bookworm_tree() -> anyhow::Result<PathBuf> {
    let root = PathBuf::from(BOOKWORM);
    if BOOKWORM_MARKS.iter().all(|m| root.join(m).exists()) {
        return Ok(root);
    }
    let partial = root.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&partial)?;
    let mirror = mirror();
    eprintln!(
        "debootstrapping Debian 12 (minbase, {BOOKWORM_INCLUDE}) from {mirror} into {} (a few minutes, once)",
        root.display()
    );
    let status = Command::new("debootstrap")
        .args(["--variant=minbase", &format!("--include={BOOKWORM_INCLUDE}"), "bookworm"])
        .arg(&partial)
        .arg(&mirror)
        .status()
        .context("running debootstrap (installed by `cargo xtask setup`)")?;
    if !status.success() {
        bail!("debootstrap of Debian 12 failed ({status}); see {}/debootstrap/debootstrap.log", partial.display());
    }
    std::fs::rename(&partial, &root)?;
    Ok(root)
}
