//! `cargo xtask compat`: the browser-compatibility figures — the
//! http-oddities corpus through the gateway (every case, clean and with
//! EICAR) and a sample in headless Chromium — from the compatibility tests
//! (tests/tests/compat.rs), which also assert them.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// Runs the compatibility tests and prints their `compat:` lines.
pub fn run() -> anyhow::Result<()> {
    let mut child = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["test", "--release", "-p", "tests", "--test", "compat", "--", "--nocapture", "--test-threads", "1"])
        .env("GATEWAY_BIN", crate::build::gateway_bin())
        .current_dir(tests::util::workspace_root())
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let out = child.stdout.take().context("no stdout")?;
    for line in BufReader::new(out).lines() {
        let line = line?;
        if let Some(figure) = line.strip_prefix("compat: ") {
            println!("{figure}");
        } else if line.starts_with("test ") && line.contains("FAILED") {
            println!("{line}");
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("the compatibility tests failed ({status})");
    }
    Ok(())
}
