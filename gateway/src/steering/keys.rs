//! The byte forms of addresses and prefixes in the eBPF maps (the types
//! are in `gateway-common`).

use std::net::IpAddr;

use aya::maps::lpm_trie::Key;
use gateway_common::{ExpectKey, PREFIX_HEAD_BITS, PrefixKey, family, v4_mapped};
use ipnet::IpNet;

/// The LPM key of `net` on interface `ifindex` (0: any interface).
pub fn prefix_key(net: &IpNet, ifindex: u32) -> Key<PrefixKey> {
    let mut addr = [0u8; 16];
    let (fam, len) = match net {
        IpNet::V4(n) => {
            addr[..4].copy_from_slice(&n.network().octets());
            (family::V4, n.prefix_len())
        }
        IpNet::V6(n) => {
            addr = n.network().octets();
            (family::V6, n.prefix_len())
        }
    };
    Key::new(PREFIX_HEAD_BITS + u32::from(len), PrefixKey::new(ifindex, fam, addr))
}

/// The 16-byte form of an address (IPv4-mapped for IPv4).
pub fn addr16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => v4_mapped(a.octets()),
        IpAddr::V6(a) => a.octets(),
    }
}

/// The key of an expected connection from `client` to `server:port`.
pub fn expect_key(client: IpAddr, server: IpAddr, port: u16) -> ExpectKey {
    let fam = if server.is_ipv4() { family::V4 } else { family::V6 };
    ExpectKey { client: addr16(client), server: addr16(server), port, family: fam, _pad: 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_interfaces_stay_apart() {
        let k = prefix_key(&"198.18.0.0/24".parse().unwrap(), 0);
        assert_eq!(k.prefix_len(), 40 + 24);
        assert_eq!(k.data().family, family::V4);
        assert_eq!(&k.data().addr[..4], &[198, 18, 0, 0]);
        let all6 = prefix_key(&"::/0".parse().unwrap(), 7);
        assert_eq!(all6.prefix_len(), 40, "::/0 covers interface and family, then nothing");
        assert_eq!(all6.data().family, family::V6);
        assert_eq!(all6.data().ifindex, 7u32.to_be_bytes());
    }
}
