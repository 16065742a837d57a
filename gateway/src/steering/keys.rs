//! The byte forms of addresses and prefixes in the eBPF maps (the types
//! are in `gateway-common`).

use std::net::IpAddr;

use gateway_common::{ExpectKey, v4_mapped};
use ipnet::IpNet;

/// The 16-byte form used by the eBPF maps and the prefix length in it.
pub fn lpm_key(net: &IpNet) -> ([u8; 16], u32) {
    match net {
        IpNet::V4(n) => (v4_mapped(n.network().octets()), 96 + u32::from(n.prefix_len())),
        IpNet::V6(n) => (n.network().octets(), u32::from(n.prefix_len())),
    }
}

/// The 16-byte form of an address.
pub fn addr16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => v4_mapped(a.octets()),
        IpAddr::V6(a) => a.octets(),
    }
}

/// The key of an expected connection from `client` to `server:port`.
pub fn expect_key(client: IpAddr, server: IpAddr, port: u16) -> ExpectKey {
    ExpectKey { client: addr16(client), server: addr16(server), port, _pad: [0; 2] }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lpm_keys() {
        let (k, l) = lpm_key(&"198.18.0.0/24".parse().unwrap());
        assert_eq!(l, 120);
        assert_eq!(&k[10..], &[0xff, 0xff, 198, 18, 0, 0]);
    }
}
