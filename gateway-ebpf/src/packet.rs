//! Header parsing for both program types, from wherever the packet starts:
//! up to two 802.1Q/802.1ad tags, IPv4 (fragments told apart) or IPv6
//! (extension headers walked), then the TCP/UDP ports and TCP flags.
//!
//! TC reads relative to the network header (`bpf_skb_load_bytes_relative`),
//! so Ethernet, tun, WireGuard or PPP devices all look the same to it; XDP
//! reads the frame directly from the offset its interface's link header
//! ends at.

use aya_ebpf::{
    bindings::bpf_hdr_start_off::BPF_HDR_START_NET,
    helpers::generated::{bpf_skb_load_bytes_relative, bpf_xdp_load_bytes},
    programs::{TcContext, XdpContext},
};
use gateway_common::v4_mapped;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
/// IPv6 extension headers walked at most (hop-by-hop, routing, fragment,
/// destination options, AH, mobility, HIP, shim6).
const MAX_EXT: usize = 6;

/// Transport protocol class of a packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    Other,
}

/// Where in a fragmented datagram a packet is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Frag {
    /// Not fragmented.
    Whole,
    /// The first fragment: it carries the transport header (or part of it).
    First,
    /// A later fragment: no transport header.
    Later,
}

/// The addresses and ports of one packet; addresses in the IPv4-mapped
/// 16-byte form.
pub struct Packet {
    pub v6: bool,
    pub proto: Proto,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Host byte order; valid when `ports` is true.
    pub sport: u16,
    pub dport: u16,
    /// Whether the ports could be read (a tiny first fragment or a
    /// truncated packet has none).
    pub ports: bool,
    /// A TCP SYN without ACK: the only packet that may open a connection
    /// on a listener.
    pub syn: bool,
    pub frag: Frag,
    /// The datagram's identification (fragments only).
    pub frag_id: u32,
    /// The packet still carries a VLAN tag in its data.
    pub tagged: bool,
}

/// What parsing found.
pub enum Parsed {
    /// An IP packet.
    Ip(Packet),
    /// Not IPv4 or IPv6 (ARP, LLDP …).
    NotIp,
    /// IP, but its transport header could not be found: too many tags or
    /// extension headers, a header length that makes no sense, truncated.
    Unparsed,
}

/// Reads plain values at offsets from where the packet's headers start.
pub trait Bytes {
    fn load<T: Copy>(&self, offset: usize) -> Option<T>;

    fn be16(&self, offset: usize) -> Option<u16> {
        self.load::<[u8; 2]>(offset).map(u16::from_be_bytes)
    }
}

/// A TC packet, read relative to its network header.
pub struct TcNet<'a>(pub &'a TcContext);

impl Bytes for TcNet<'_> {
    #[inline(always)]
    fn load<T: Copy>(&self, offset: usize) -> Option<T> {
        let mut v = core::mem::MaybeUninit::<T>::uninit();
        // SAFETY: the helper writes exactly size_of::<T>() bytes into v or fails.
        let r = unsafe {
            bpf_skb_load_bytes_relative(
                self.0.skb.skb.cast(),
                offset as u32,
                v.as_mut_ptr().cast(),
                core::mem::size_of::<T>() as u32,
                BPF_HDR_START_NET,
            )
        };
        // SAFETY: initialised by the helper when it returned 0.
        (r == 0).then(|| unsafe { v.assume_init() })
    }
}

/// An XDP frame, read from `base` on through `bpf_xdp_load_bytes`: offsets
/// that depend on the packet (extension headers) are then no matter for
/// the verifier.
pub struct XdpAt<'a> {
    pub ctx: &'a XdpContext,
    pub base: usize,
}

impl Bytes for XdpAt<'_> {
    #[inline(always)]
    fn load<T: Copy>(&self, offset: usize) -> Option<T> {
        let mut v = core::mem::MaybeUninit::<T>::uninit();
        // SAFETY: the helper writes exactly size_of::<T>() bytes into v or fails.
        let r = unsafe {
            bpf_xdp_load_bytes(
                self.ctx.ctx.cast(),
                (self.base + offset) as u32,
                v.as_mut_ptr().cast(),
                core::mem::size_of::<T>() as u32,
            )
        };
        // SAFETY: initialised by the helper when it returned 0.
        (r == 0).then(|| unsafe { v.assume_init() })
    }
}

/// Parses a packet whose first header is of `ethertype`, at offset 0 of `b`.
#[inline(always)]
pub fn parse<B: Bytes>(b: &B, ethertype: u16) -> Parsed {
    let mut proto = ethertype;
    let mut off = 0usize;
    let mut tagged = false;
    // A tag's header here is its TCI and the next ethertype.
    for _ in 0..2 {
        if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
            let Some(next) = b.be16(off + 2) else { return Parsed::Unparsed };
            proto = next;
            off += 4;
            tagged = true;
        }
    }
    match proto {
        ETH_P_IP => ipv4(b, off, tagged),
        ETH_P_IPV6 => ipv6(b, off, tagged),
        ETH_P_8021Q | ETH_P_8021AD => Parsed::Unparsed,
        _ => Parsed::NotIp,
    }
}

#[inline(always)]
fn ipv4<B: Bytes>(b: &B, off: usize, tagged: bool) -> Parsed {
    let (Some(vihl), Some(id), Some(frag), Some(p), Some(s), Some(d)) = (
        b.load::<u8>(off),
        b.be16(off + 4),
        b.be16(off + 6),
        b.load::<u8>(off + 9),
        b.load::<[u8; 4]>(off + 12),
        b.load::<[u8; 4]>(off + 16),
    ) else {
        return Parsed::Unparsed;
    };
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return Parsed::Unparsed;
    }
    let frag = if frag & 0x1fff != 0 {
        Frag::Later
    } else if frag & 0x2000 != 0 {
        Frag::First
    } else {
        Frag::Whole
    };
    let mut pkt = transport(b, off + ihl, p, false, v4_mapped(s), v4_mapped(d), frag, tagged);
    pkt.frag_id = u32::from(id);
    Parsed::Ip(pkt)
}

#[inline(always)]
fn ipv6<B: Bytes>(b: &B, off: usize, tagged: bool) -> Parsed {
    let (Some(mut next), Some(s), Some(d)) =
        (b.load::<u8>(off + 6), b.load::<[u8; 16]>(off + 8), b.load::<[u8; 16]>(off + 24))
    else {
        return Parsed::Unparsed;
    };
    let mut l4 = off + 40;
    let mut frag = Frag::Whole;
    let mut frag_id = 0u32;
    for _ in 0..MAX_EXT {
        match next {
            // Hop-by-hop, routing, destination options, mobility, HIP, shim6.
            0 | 43 | 60 | 135 | 139 | 140 => {
                let (Some(n), Some(len)) = (b.load::<u8>(l4), b.load::<u8>(l4 + 1)) else { return Parsed::Unparsed };
                next = n;
                l4 += (usize::from(len) + 1) * 8;
            }
            44 => {
                let (Some(n), Some(fo), Some(id)) = (b.load::<u8>(l4), b.be16(l4 + 2), b.load::<[u8; 4]>(l4 + 4))
                else {
                    return Parsed::Unparsed;
                };
                next = n;
                l4 += 8;
                frag_id = u32::from_be_bytes(id);
                frag = if fo >> 3 != 0 {
                    Frag::Later
                } else if fo & 1 != 0 {
                    Frag::First
                } else {
                    frag
                };
            }
            // AH: its length counts 4-byte units, minus two.
            51 => {
                let (Some(n), Some(len)) = (b.load::<u8>(l4), b.load::<u8>(l4 + 1)) else { return Parsed::Unparsed };
                next = n;
                l4 += (usize::from(len) + 2) * 4;
            }
            _ => break,
        }
    }
    if matches!(next, 0 | 43 | 44 | 51 | 60 | 135 | 139 | 140) {
        return Parsed::Unparsed;
    }
    let mut pkt = transport(b, l4, next, true, s, d, frag, tagged);
    pkt.frag_id = frag_id;
    Parsed::Ip(pkt)
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn transport<B: Bytes>(
    b: &B,
    l4: usize,
    p: u8,
    v6: bool,
    saddr: [u8; 16],
    daddr: [u8; 16],
    frag: Frag,
    tagged: bool,
) -> Packet {
    let proto = match p {
        IPPROTO_TCP => Proto::Tcp,
        IPPROTO_UDP => Proto::Udp,
        IPPROTO_ICMP | IPPROTO_ICMPV6 => Proto::Icmp,
        _ => Proto::Other,
    };
    let mut pkt =
        Packet { v6, proto, saddr, daddr, sport: 0, dport: 0, ports: false, syn: false, frag, frag_id: 0, tagged };
    if frag == Frag::Later || !matches!(proto, Proto::Tcp | Proto::Udp) {
        return pkt;
    }
    if let Some(ports) = b.load::<[u8; 4]>(l4) {
        pkt.sport = u16::from_be_bytes([ports[0], ports[1]]);
        pkt.dport = u16::from_be_bytes([ports[2], ports[3]]);
        pkt.ports = true;
    }
    if proto == Proto::Tcp
        && let Some(flags) = b.load::<u8>(l4 + 13)
    {
        pkt.syn = flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN;
    }
    pkt
}

/// The packet as TC sees it: `skb->protocol` names the header at the
/// network offset (a tag still in the data shows as 0x8100 there).
#[inline(always)]
pub fn tc(ctx: &TcContext) -> Parsed {
    let ethertype = u16::from_be(ctx.skb.protocol() as u16);
    parse(&TcNet(ctx), ethertype)
}

/// The frame as XDP sees it, with `l2` bytes of link header (14 for
/// Ethernet, 0 for tun, WireGuard, PPP).
#[inline(always)]
pub fn xdp(ctx: &XdpContext, l2: usize) -> Parsed {
    if l2 == 0 {
        let b = XdpAt { ctx, base: 0 };
        return match b.load::<u8>(0).map(|v| v >> 4) {
            Some(4) => parse(&b, ETH_P_IP),
            Some(6) => parse(&b, ETH_P_IPV6),
            _ => Parsed::NotIp,
        };
    }
    let Some(ethertype) = (XdpAt { ctx, base: 0 }).be16(l2 - 2) else { return Parsed::NotIp };
    parse(&XdpAt { ctx, base: l2 }, ethertype)
}
