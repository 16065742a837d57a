//! Header parsing for both program types: Ethernet, then IPv4 or IPv6
//! (without extension headers), then the TCP/UDP ports.

use aya_ebpf::programs::{TcContext, XdpContext};
use gateway_common::v4_mapped;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// Transport protocol class of a packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    Other,
}

/// The addresses and ports of one packet; addresses in 16-byte form.
pub struct Flow {
    pub v6: bool,
    pub proto: Proto,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Host byte order; 0 where the protocol has no ports.
    pub sport: u16,
    pub dport: u16,
    /// A TCP SYN without ACK: the only packet that may open a connection
    /// on a listener.
    pub syn: bool,
}

fn proto_of(p: u8) -> Proto {
    match p {
        IPPROTO_TCP => Proto::Tcp,
        IPPROTO_UDP => Proto::Udp,
        IPPROTO_ICMP | IPPROTO_ICMPV6 => Proto::Icmp,
        _ => Proto::Other,
    }
}

/// Reads headers through `bpf_skb_load_bytes`, which copes with non-linear
/// skbs (GRO'd TCP segments at TC ingress).
pub fn tc_flow(ctx: &TcContext) -> Option<Flow> {
    let ethertype = u16::from_be(ctx.load::<u16>(12).ok()?);
    let (v6, proto, saddr, daddr, l4) = match ethertype {
        ETH_P_IP => {
            let vihl: u8 = ctx.load(ETH_HLEN).ok()?;
            let frag: u16 = u16::from_be(ctx.load(ETH_HLEN + 6).ok()?);
            if frag & 0x1fff != 0 {
                return None; // a non-first fragment carries no ports
            }
            let p: u8 = ctx.load(ETH_HLEN + 9).ok()?;
            let s: [u8; 4] = ctx.load(ETH_HLEN + 12).ok()?;
            let d: [u8; 4] = ctx.load(ETH_HLEN + 16).ok()?;
            let ihl = usize::from(vihl & 0x0f) * 4;
            (false, proto_of(p), v4_mapped(s), v4_mapped(d), ETH_HLEN + ihl)
        }
        ETH_P_IPV6 => {
            let p: u8 = ctx.load(ETH_HLEN + 6).ok()?;
            let s: [u8; 16] = ctx.load(ETH_HLEN + 8).ok()?;
            let d: [u8; 16] = ctx.load(ETH_HLEN + 24).ok()?;
            (true, proto_of(p), s, d, ETH_HLEN + 40)
        }
        _ => return None,
    };
    let (sport, dport) = if matches!(proto, Proto::Tcp | Proto::Udp) {
        let ports: [u8; 4] = ctx.load(l4).ok()?;
        (u16::from_be_bytes([ports[0], ports[1]]), u16::from_be_bytes([ports[2], ports[3]]))
    } else {
        (0, 0)
    };
    let syn = if proto == Proto::Tcp {
        let flags: u8 = ctx.load(l4 + 13).ok()?;
        flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN
    } else {
        false
    };
    Some(Flow { v6, proto, saddr, daddr, sport, dport, syn })
}

#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// Reads the network header by direct packet access; XDP counts and drops
/// by address only, so ports are left at 0.
pub fn xdp_flow(ctx: &XdpContext) -> Option<Flow> {
    // SAFETY: every pointer is bounds-checked against data_end by ptr_at.
    unsafe {
        let ethertype = u16::from_be(*ptr_at::<u16>(ctx, 12)?);
        match ethertype {
            ETH_P_IP => {
                let p = *ptr_at::<u8>(ctx, ETH_HLEN + 9)?;
                let s = *ptr_at::<[u8; 4]>(ctx, ETH_HLEN + 12)?;
                let d = *ptr_at::<[u8; 4]>(ctx, ETH_HLEN + 16)?;
                Some(Flow {
                    v6: false,
                    proto: proto_of(p),
                    saddr: v4_mapped(s),
                    daddr: v4_mapped(d),
                    sport: 0,
                    dport: 0,
                    syn: false,
                })
            }
            ETH_P_IPV6 => {
                let p = *ptr_at::<u8>(ctx, ETH_HLEN + 6)?;
                let s = *ptr_at::<[u8; 16]>(ctx, ETH_HLEN + 8)?;
                let d = *ptr_at::<[u8; 16]>(ctx, ETH_HLEN + 24)?;
                Some(Flow { v6: true, proto: proto_of(p), saddr: s, daddr: d, sport: 0, dport: 0, syn: false })
            }
            _ => None,
        }
    }
}
