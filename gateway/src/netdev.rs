//! The host's network devices, as steering needs to know them: which
//! interfaces the programs can steer on: they must exist, carry
//! Ethernet or bare IP (tun, WireGuard, PPP, IP tunnels), and must not be
//! enslaved to a bridge or bond (the assignment of a socket does not
//! survive the bridge: steering there would silently break HTTP and FTP
//! for everyone on it).

use std::path::Path;

/// The index of interface `name`, if it exists in this network namespace.
pub fn index(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
}

/// Link-header bytes before the network header on `name`: 14 for Ethernet
/// (and loopback), 0 for devices that carry bare IP; an error for link
/// types the programs cannot read.
pub fn l2_len(name: &str) -> Result<u32, String> {
    let path = Path::new("/sys/class/net").join(name).join("type");
    let ty: u32 = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .ok_or_else(|| format!("cannot read the link type of {name:?} ({})", path.display()))?;
    match ty {
        // ARPHRD_ETHER, ARPHRD_LOOPBACK.
        1 | 772 => Ok(14),
        // ARPHRD_PPP, ARPHRD_TUNNEL (ipip), ARPHRD_TUNNEL6, ARPHRD_SIT,
        // ARPHRD_IPGRE, ARPHRD_NONE (tun, WireGuard).
        512 | 768 | 769 | 776 | 778 | 65534 => Ok(0),
        other => Err(format!(
            "steering.interfaces names {name:?}, whose link type {other} the steering programs cannot read (Ethernet and bare-IP devices can)"
        )),
    }
}

/// Checks that `name` can carry steering; one sentence if not.
pub fn check(name: &str) -> Result<(), String> {
    if index(name).is_none() {
        return Err(format!("steering.interfaces names {name:?}, which is not an interface on this host"));
    }
    l2_len(name)?;
    let sys = Path::new("/sys/class/net").join(name);
    if let Ok(master) = std::fs::read_link(sys.join("master")) {
        let master = master.file_name().map(|m| m.to_string_lossy().into_owned()).unwrap_or_default();
        let m = Path::new("/sys/class/net").join(&master);
        let kind = if m.join("bridge").exists() {
            "bridge"
        } else if m.join("bonding").exists() {
            "bond"
        } else {
            return Ok(());
        };
        return Err(format!(
            "steering.interfaces names {name:?}, a port of the {kind} {master:?}; list {master:?} instead"
        ));
    }
    Ok(())
}
