//! Builds the eBPF programs (`gateway-ebpf`) so that a plain `cargo build`
//! embeds an up-to-date object. Needs nightly with rust-src and bpf-linker:
//! `cargo xtask setup` installs both.
//!
//! aya-build relays every line of the inner cargo build as a
//! `cargo:warning`, so each build of the gateway would show some thirty
//! "warnings" that are only progress. Its output is caught here and
//! replayed only when the eBPF build fails.
use std::{
    io::{Read as _, Seek as _, Write as _},
    os::fd::AsRawFd as _,
};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } =
        cargo_metadata::MetadataCommand::new().no_deps().exec().context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "gateway-ebpf")
        .ok_or_else(|| anyhow!("gateway-ebpf package not found"))?;
    let root_dir = ebpf.manifest_path.parent().ok_or_else(|| anyhow!("gateway-ebpf manifest has no parent"))?;
    let (result, said) = quietly(|| {
        aya_build::build_ebpf(
            [Package { name: ebpf.name.as_str(), root_dir: root_dir.as_str(), ..Default::default() }],
            Toolchain::default(),
        )
    })?;
    for line in said.lines() {
        // Rebuild triggers always count; progress only when something broke.
        if line.starts_with("cargo:rerun-if") || (result.is_err() && line.starts_with("cargo:warning=")) {
            println!("{line}");
        }
    }
    result.context("building the eBPF programs failed; run `cargo xtask setup` (nightly rust-src, bpf-linker)")
}

/// Runs `f` with this process's standard output caught in a file; returns
/// its result and what it printed.
fn quietly<T>(f: impl FnOnce() -> T) -> anyhow::Result<(T, String)> {
    let mut sink = tempfile::tempfile().context("a temporary file for the eBPF build's output")?;
    std::io::stdout().flush()?;
    // SAFETY: dup/dup2 on this process's own standard output and a file we
    // hold; the original descriptor is restored before returning.
    let saved = unsafe { libc::dup(1) };
    if saved < 0 || unsafe { libc::dup2(sink.as_raw_fd(), 1) } < 0 {
        return Err(anyhow!("redirecting standard output: {}", std::io::Error::last_os_error()));
    }
    let out = f();
    std::io::stdout().flush()?;
    // SAFETY: as above.
    unsafe {
        libc::dup2(saved, 1);
        libc::close(saved);
    }
    let mut said = String::new();
    sink.rewind()?;
    sink.read_to_string(&mut said)?;
    Ok((out, said))
}
