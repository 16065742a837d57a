//! Which interfaces the programs can steer on: they must exist, and must
//! not be enslaved to a bridge or bond (the assignment of a socket does
//! not survive the bridge: steering there would silently break HTTP and
//! FTP for everyone on it).

use std::path::Path;

/// The index of interface `name`, if it exists in this network namespace.
pub fn index(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
}

/// Checks that `name` can carry steering; one sentence if not.
pub fn check(name: &str) -> Result<(), String> {
    if index(name).is_none() {
        return Err(format!("steering.interfaces names {name:?}, which is not an interface on this host"));
    }
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
