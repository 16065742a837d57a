//! Checks made before touching the kernel, so that a missing privilege or
//! kernel feature is one clear sentence instead of an aya error chain.

use std::path::Path;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// What is missing to run the gateway here.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// Missing capabilities.
    #[error(
        "the gateway needs root or the capabilities CAP_BPF and CAP_NET_ADMIN to load its eBPF programs; run it as root"
    )]
    Privileges,
    /// No kernel BTF.
    #[error(
        "this kernel exposes no BTF (/sys/kernel/btf/vmlinux is missing); the gateway needs a kernel built with CONFIG_DEBUG_INFO_BTF"
    )]
    NoBtf,
}

/// Fails unless this process may load eBPF programs and change routing.
pub fn check() -> Result<(), PreflightError> {
    let caps = effective_caps().unwrap_or(0);
    let has = |c: u32| caps & (1u64 << c) != 0;
    if !(has(CAP_NET_ADMIN) && (has(CAP_BPF) || has(CAP_SYS_ADMIN))) {
        return Err(PreflightError::Privileges);
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(PreflightError::NoBtf);
    }
    Ok(())
}

fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}
