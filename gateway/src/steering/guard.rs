//! Removes the policy routing when the gateway dies, even by SIGKILL.
//!
//! eBPF links vanish with the process, but rules and routes do not. At start
//! the gateway spawns itself as `gateway routing-guard` with a pipe on its
//! standard input; the guard ignores termination signals and waits for the
//! pipe to close, which happens however the gateway ends, then removes the
//! rule and routes of its own instance (never another's: see
//! [`super::routing`]) and exits.

use std::{
    io::Read as _,
    process::{Child, Command, Stdio},
};

use super::routing::PolicyRouting;

/// The running guard; dropping it closes the pipe and lets the guard clean up.
pub struct Guard {
    _child: Child,
}

/// Starts the guard process for `routing`.
pub fn spawn(routing: PolicyRouting) -> std::io::Result<Guard> {
    let exe = std::env::current_exe()?;
    let child = Command::new(exe)
        .arg("routing-guard")
        .arg(routing.fwmark.to_string())
        .arg(routing.table.to_string())
        .arg(routing.priority.to_string())
        .arg(routing.instance.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    Ok(Guard { _child: child })
}

/// The guard's body: block until standard input closes, then clean up.
pub fn run(routing: PolicyRouting) -> anyhow::Result<()> {
    // SAFETY: setting signal dispositions to SIG_IGN before any thread starts.
    unsafe {
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGPIPE] {
            libc::signal(sig, libc::SIG_IGN);
        }
    }
    let mut sink = [0u8; 64];
    let mut stdin = std::io::stdin();
    while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(routing.remove())?;
    Ok(())
}
