//! Building the gateway and running the test suite.

use std::process::Command;

use anyhow::{Context as _, bail};

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Release build of the gateway binary (with its eBPF object).
pub fn gateway() -> anyhow::Result<()> {
    eprintln!("xtask: building the gateway (release)");
    let status = cargo()
        .args(["build", "--release", "--package", "gateway"])
        .current_dir(tests::util::workspace_root())
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("building the gateway failed ({status}); if the eBPF build is what failed, run `cargo xtask setup`");
    }
    Ok(())
}

/// The release gateway binary.
pub fn gateway_bin() -> std::path::PathBuf {
    tests::util::workspace_root().join("target/release/gateway")
}

/// Every test of the default workspace members, against the release binary.
pub fn test(args: &[String]) -> anyhow::Result<()> {
    eprintln!("xtask: running the tests");
    let status = cargo()
        .args(["test", "--no-fail-fast"])
        .args(args)
        .env("GATEWAY_BIN", gateway_bin())
        .current_dir(tests::util::workspace_root())
        .status()
        .context("running cargo test")?;
    if !status.success() {
        bail!("tests failed ({status})");
    }
    Ok(())
}
