//! Attaching the programs through pinned links: a link pinned by an
//! earlier gateway is adopted and its program replaced in place (one
//! atomic `bpf_link_update`: no packet meets an interface without a
//! program); otherwise a new link is made and pinned. Links of interfaces
//! no longer configured are removed.

use std::path::Path;

use aya::programs::{
    SchedClassifier, SkLookup, TcAttachType, Xdp, XdpMode,
    links::{FdLink, PinnedLink},
    tc::SchedClassifierLink,
    xdp::XdpLink,
};
use tracing::info;

use super::{SteeringError, pin::Pins, prog_err};

fn pin_err(what: &str, path: &Path, e: impl std::fmt::Display) -> SteeringError {
    SteeringError::Pin(format!("{what} {}: {e}", path.display()))
}

/// The pinned link at `path`, if there is one.
fn pinned(path: &Path) -> Result<Option<FdLink>, SteeringError> {
    if !path.exists() {
        return Ok(None);
    }
    let link = PinnedLink::from_pin(path).map_err(|e| pin_err("opening the pinned link", path, e))?;
    Ok(Some(link.into()))
}

/// Pins a freshly made link at `path`.
fn pin(link: FdLink, path: &Path) -> Result<(), SteeringError> {
    link.pin(path).map_err(|e| pin_err("pinning the link", path, e))?;
    Ok(())
}

/// Drops a pinned link that cannot be adopted (its interface went away
/// and came back, so the link is defunct), saying so.
fn discard(path: &Path, why: impl std::fmt::Display) -> Result<(), SteeringError> {
    tracing::warn!("steering: the pinned link {} cannot be adopted ({why}); attaching afresh", path.display());
    std::fs::remove_file(path).map_err(|e| pin_err("removing the pinned link", path, e))
}

/// Adopts the link pinned at `path` (`adopt` swaps the program into it),
/// or, with none there or one that cannot be adopted, makes a link with
/// `attach` and pins it.
fn adopt_or_attach<P>(
    prog: &mut P,
    path: &Path,
    adopt: impl FnOnce(&mut P, FdLink) -> Result<(), String>,
    attach: impl FnOnce(&mut P) -> Result<FdLink, SteeringError>,
) -> Result<(), SteeringError> {
    if let Some(fd) = pinned(path)? {
        match adopt(prog, fd) {
            Ok(()) => return Ok(()),
            Err(e) => discard(path, e)?,
        }
    }
    pin(attach(prog)?, path)
}

/// The TC classifier on `iface`'s ingress.
pub fn tc(prog: &mut SchedClassifier, pins: &Pins, iface: &str) -> Result<(), SteeringError> {
    let path = pins.link("tc", iface);
    let what = format!("attaching the TC program to {iface}");
    adopt_or_attach(
        prog,
        &path,
        |prog, fd| {
            let link = SchedClassifierLink::try_from(fd).map_err(|e| e.to_string())?;
            // The program would keep the adopted link open: only the pin
            // may hold it, so that unpinning (prune, detach) detaches.
            let id = prog.attach_to_link(link).map_err(|e| e.to_string())?;
            prog.take_link(id).map(drop).map_err(|e| e.to_string())
        },
        |prog| {
            let id = prog.attach(iface, TcAttachType::Ingress).map_err(prog_err(&what))?;
            let link = prog.take_link(id).map_err(prog_err(&what))?;
            FdLink::try_from(link).map_err(|e| pin_err("pinning the TC link", &path, e))
        },
    )
}

/// The XDP filter on `iface` (a pinned link keeps the mode it was made
/// with).
pub fn xdp(prog: &mut Xdp, pins: &Pins, iface: &str, mode: XdpMode) -> Result<(), SteeringError> {
    let path = pins.link("xdp", iface);
    let what = format!("attaching the XDP program to {iface}");
    adopt_or_attach(
        prog,
        &path,
        |prog, fd| {
            let link = XdpLink::try_from(fd).map_err(|e| e.to_string())?;
            // The program would keep the adopted link open: only the pin
            // may hold it, so that unpinning (prune, detach) detaches.
            let id = prog.attach_to_link(link).map_err(|e| e.to_string())?;
            prog.take_link(id).map(drop).map_err(|e| e.to_string())
        },
        |prog| {
            let id = prog.attach(iface, mode).map_err(prog_err(&what))?;
            let link = prog.take_link(id).map_err(prog_err(&what))?;
            FdLink::try_from(link).map_err(|e| pin_err("pinning the XDP link", &path, e))
        },
    )
}

/// The sk_lookup program on this network namespace. sk_lookup links
/// cannot be updated in place, but several programs may run: the new one
/// is attached, then the old one's pin is replaced (both do the same
/// thing on the same map meanwhile).
pub fn sk_lookup(prog: &mut SkLookup, pins: &Pins) -> Result<(), SteeringError> {
    let path = pins.link("sk_lookup", "");
    let netns = std::fs::File::open("/proc/self/ns/net").map_err(SteeringError::Netns)?;
    let what = "attaching the sk_lookup program";
    let id = prog.attach(netns).map_err(prog_err(what))?;
    let link: FdLink = prog.take_link(id).map_err(prog_err(what))?.into();
    if path.exists() {
        std::fs::remove_file(&path).map_err(|e| pin_err("replacing the pinned link", &path, e))?;
    }
    pin(link, &path)
}

/// Removes the pinned links of program `what` on interfaces not in
/// `keep` (they detach as their pin goes).
pub fn prune(pins: &Pins, what: &str, keep: &[String]) -> Result<(), SteeringError> {
    let linked = pins.linked_interfaces(what).map_err(|e| SteeringError::Pin(e.to_string()))?;
    for iface in linked.into_iter().filter(|i| !keep.contains(i)) {
        let path = pins.link(what, &iface);
        std::fs::remove_file(&path).map_err(|e| pin_err("removing the link", &path, e))?;
        info!("steering: {what} program detached from {iface} (no longer configured)");
    }
    Ok(())
}
