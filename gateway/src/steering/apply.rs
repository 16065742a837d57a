//! The configuration written into the programs' maps, in place: entries
//! that should be there are added first, then the ones that should not are
//! removed, so a port or prefix kept across a reload or a takeover is never
//! missing for a moment.

use std::{collections::HashSet, hash::Hash};

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, lpm_trie::Key},
};
use gateway_common::{PrefixKey, config as flags, listener};

use super::{
    SteeringError,
    keys::prefix_key,
    map_err,
    settings::{Steering as Settings, WhenDown},
};

/// Writes `cfg` into the maps of `ebpf` (ports, prefixes, link-header
/// lengths, flags).
pub fn apply(ebpf: &mut Ebpf, cfg: &Settings) -> Result<(), SteeringError> {
    let mut ports: Vec<(u16, u32)> = Vec::new();
    ports.extend(cfg.http_ports.iter().map(|&p| (p, listener::HTTP)));
    ports.extend(cfg.ftp_ports.iter().map(|&p| (p, listener::FTP_CONTROL)));
    ports.extend(cfg.tls_ports.iter().map(|&p| (p, listener::TLS)));
    sync_hash(ebpf, "STEER_PORTS", &ports)?;
    let udp: Vec<(u16, u8)> = cfg.drop_udp_ports.iter().map(|&p| (p, 1)).collect();
    sync_hash(ebpf, "UDP_DROP_PORTS", &udp)?;
    let mut l2 = Vec::new();
    for name in &cfg.interfaces {
        let index = crate::netdev::index(name).ok_or_else(|| SteeringError::Interface(name.clone()))?;
        let len = crate::netdev::l2_len(name).map_err(|_| SteeringError::Interface(name.clone()))?;
        l2.push((index, len));
    }
    sync_hash(ebpf, "L2_LEN", &l2)?;
    let mut bypass = Vec::new();
    for b in &cfg.bypass {
        let ifindex = match &b.interface {
            Some(i) => crate::netdev::index(i).ok_or_else(|| SteeringError::Interface(i.clone()))?,
            None => 0,
        };
        bypass.push(prefix_key(&b.prefix, ifindex));
    }
    sync_trie(ebpf, "BYPASS", &bypass)?;
    let block: Vec<_> = cfg.block.iter().map(|n| prefix_key(n, 0)).collect();
    sync_trie(ebpf, "BLOCK", &block)?;
    let mut f = 0;
    if cfg.intercept_local {
        f |= flags::flag::INTERCEPT_LOCAL;
    }
    if cfg.when_down == WhenDown::Forward {
        f |= flags::flag::WHEN_DOWN_FORWARD;
    }
    set_config(ebpf, flags::FLAGS, f)
}

/// Sets `CONFIG[index]`.
pub fn set_config(ebpf: &mut Ebpf, index: u32, value: u32) -> Result<(), SteeringError> {
    let mut config: Array<_, u32> =
        Array::try_from(ebpf.map_mut("CONFIG").ok_or(SteeringError::Missing("CONFIG map"))?)
            .map_err(map_err("opening CONFIG"))?;
    config.set(index, value, 0).map_err(map_err("writing CONFIG"))
}

/// Reads `CONFIG[index]`.
pub fn config(ebpf: &Ebpf, index: u32) -> Result<u32, SteeringError> {
    let config: Array<_, u32> = Array::try_from(ebpf.map("CONFIG").ok_or(SteeringError::Missing("CONFIG map"))?)
        .map_err(map_err("opening CONFIG"))?;
    config.get(&index, 0).map_err(map_err("reading CONFIG"))
}

/// Makes hash map `name` hold exactly `want`.
fn sync_hash<K, V>(ebpf: &mut Ebpf, name: &'static str, want: &[(K, V)]) -> Result<(), SteeringError>
where
    K: aya::Pod + Eq + Hash,
    V: aya::Pod,
{
    let what = format!("updating {name}");
    let mut map: HashMap<&mut MapData, K, V> =
        HashMap::try_from(ebpf.map_mut(name).ok_or(SteeringError::Missing(name))?).map_err(map_err(&what))?;
    for (k, v) in want {
        map.insert(k, v, 0).map_err(map_err(&what))?;
    }
    let keep: HashSet<&K> = want.iter().map(|(k, _)| k).collect();
    let stale: Vec<K> = map.keys().filter_map(Result::ok).filter(|k| !keep.contains(k)).collect();
    for k in stale {
        remove_ok(map.remove(&k)).map_err(map_err(&what))?;
    }
    Ok(())
}

/// Makes LPM trie `name` hold exactly `want`.
fn sync_trie(ebpf: &mut Ebpf, name: &'static str, want: &[Key<PrefixKey>]) -> Result<(), SteeringError> {
    let what = format!("updating {name}");
    let mut trie: LpmTrie<&mut MapData, PrefixKey, u8> =
        LpmTrie::try_from(ebpf.map_mut(name).ok_or(SteeringError::Missing(name))?).map_err(map_err(&what))?;
    for k in want {
        trie.insert(k, 1, 0).map_err(map_err(&what))?;
    }
    let keep: HashSet<(u32, [u8; 24])> = want.iter().map(trie_id).collect();
    let stale: Vec<Key<PrefixKey>> =
        trie.keys().filter_map(Result::ok).filter(|k| !keep.contains(&trie_id(k))).collect();
    for k in stale {
        remove_ok(trie.remove(&k)).map_err(map_err(&what))?;
    }
    Ok(())
}

/// A trie key as comparable bytes (prefix length, then the data).
fn trie_id(k: &Key<PrefixKey>) -> (u32, [u8; 24]) {
    let d = k.data();
    let mut b = [0u8; 24];
    b[..4].copy_from_slice(&d.ifindex);
    b[4] = d.family;
    b[5..21].copy_from_slice(&d.addr);
    (k.prefix_len(), b)
}

/// A removal that found nothing is no error (another process may have
/// removed the entry meanwhile).
fn remove_ok(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}
