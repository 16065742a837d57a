//! systemd's notify protocol (`Type=notify`, `dist/gateway.service`):
//! `READY=1` once steering and every listener are up, `WATCHDOG=1` from a
//! loop on the runtime that serves the flows while `WatchdogSec=` is set,
//! `STOPPING=1` when shutting down, `RELOADING=1` … `READY=1` around a
//! reload. Without `NOTIFY_SOCKET` (not started by systemd) every call
//! does nothing.

use std::time::Duration;

use sd_notify::NotifyState;
use tracing::{info, warn};

/// The gateway serves: steering attached, listeners registered.
pub fn ready() {
    send(&[NotifyState::Ready, NotifyState::Status("serving")]);
}

/// The gateway is shutting down.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// A reload starts; call [`reloaded`] when it is done (either way).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(e) => warn!("systemd notify: no monotonic clock for RELOADING=1: {e}"),
    }
}

/// A reload ended (applied or refused): serving again.
pub fn reloaded() {
    ready();
}

/// Sends `WATCHDOG=1` every half of `WATCHDOG_USEC` for as long as the
/// task runs; returns at once when no watchdog is asked for. It runs on
/// the runtime of the accept loops, so a stalled runtime (a blocked worker,
/// a deadlock) stops the pings and systemd restarts the gateway.
pub async fn watchdog() {
    let Some(period) = sd_notify::watchdog_enabled() else { return };
    let every = (period / 2).max(Duration::from_millis(10));
    info!("systemd watchdog: {period:?}, pinging every {every:?}");
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        send(&[NotifyState::Watchdog]);
    }
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!("systemd notify ({}): {e}", states.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "));
    }
}
