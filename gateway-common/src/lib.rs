//! Types shared by the gateway's eBPF programs (`gateway-ebpf`) and its
//! userspace side (`gateway`).
//!
//! Everything here is `#[repr(C)]` plain data: the same bytes are written by
//! userspace into BPF maps and read by the kernel programs. Keys carry the
//! address family explicitly, so an IPv6 prefix or address never matches an
//! IPv4 packet (`::/0` is all of IPv6, nothing else).
#![no_std]

/// Address family byte in keys.
pub mod family {
    /// IPv4.
    pub const V4: u8 = 4;
    /// IPv6.
    pub const V6: u8 = 6;
}

/// Listener slots in the `LISTENERS` sockmap: `(generation × KINDS + kind)
/// × 2 + family`. Two generations let a new gateway process register its
/// listeners beside the running one's and then switch new flows over in one
/// map write (`config::GENERATION`), while the old one's FTP data
/// expectations still name its own slots.
pub mod listener {
    /// HTTP listener (steered HTTP ports).
    pub const HTTP: u32 = 0;
    /// FTP control-channel listener (steered FTP ports).
    pub const FTP_CONTROL: u32 = 1;
    /// FTP data-channel listener (connections announced in `EXPECTATIONS`).
    pub const FTP_DATA: u32 = 2;
    /// TLS interception listener (steered TLS ports, when switched on).
    pub const TLS: u32 = 3;
    /// Number of listener kinds.
    pub const KINDS: u32 = 4;
    /// Family offset for IPv4 listeners.
    pub const V4: u32 = 0;
    /// Family offset for IPv6 listeners.
    pub const V6: u32 = 1;
    /// Generations of listeners side by side.
    pub const GENERATIONS: u32 = 2;
    /// Number of sockmap slots.
    pub const SLOTS: u32 = GENERATIONS * KINDS * 2;

    /// The sockmap index of `generation`'s listener of `kind` for `family`
    /// (`V4`/`V6`).
    pub const fn slot(generation: u32, kind: u32, family: u32) -> u32 {
        ((generation % GENERATIONS) * KINDS + kind) * 2 + family
    }
}

/// Version of the pinned maps' layout (their keys, values and sizes). A
/// gateway adopts pinned state only of its own layout; a change here means
/// an upgrade cannot take over from a running gateway without a gap.
pub const PIN_LAYOUT: u32 = 2;

/// The fwmark the TC program puts on steered packets; userspace routes it to
/// a table holding `local default dev lo`.
pub const DEFAULT_FWMARK: u32 = 0x4757_0001;

/// Key of the `EXPECTATIONS` map: a connection the gateway expects from a
/// client to a server port (FTP data channels).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExpectKey {
    /// Client address (IPv4-mapped for IPv4).
    pub client: [u8; 16],
    /// Server address (IPv4-mapped for IPv4).
    pub server: [u8; 16],
    /// Server port, host byte order.
    pub port: u16,
    /// [`family::V4`] or [`family::V6`].
    pub family: u8,
    /// Explicit padding so the key has no uninitialised bytes.
    pub _pad: u8,
}

/// A TCP connection's 4-tuple as seen from the client, key of the
/// `TW_SYN` map: SYNs that met a gateway socket in TIME_WAIT and are to be
/// handed to a listener slot by the `sk_lookup` program.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Client address (IPv4-mapped for IPv4).
    pub client: [u8; 16],
    /// Server address (IPv4-mapped for IPv4).
    pub server: [u8; 16],
    /// Client port, host byte order.
    pub client_port: u16,
    /// Server port, host byte order.
    pub server_port: u16,
}

/// Value of the `EXPECTATIONS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpectValue {
    /// Listener slot to steer to (see [`listener::slot`]): the expecting
    /// process's own, whichever generation is current.
    pub slot: u32,
    /// The client port of the one connection this expectation admits: 0
    /// until the first SYN, which the TC program writes here. Any other
    /// connection to the expected port is dropped.
    pub client_port: u16,
    /// Explicit padding.
    pub _pad: u16,
}

/// Data of a `BYPASS` or `BLOCK` LPM key: interface, family, address, so
/// that one trie holds both families apart and entries may be tied to the
/// interface a packet arrived on (0: any). The prefix length counts
/// [`PREFIX_HEAD_BITS`] plus the address bits; IPv4 addresses fill the
/// first 4 of the 16 address bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PrefixKey {
    /// Interface index, big-endian (0: any interface).
    pub ifindex: [u8; 4],
    /// [`family::V4`] or [`family::V6`].
    pub family: u8,
    /// The address (IPv4 in the first 4 bytes).
    pub addr: [u8; 16],
    /// Explicit padding, never covered by a prefix.
    pub _pad: [u8; 3],
}

/// Bits of a [`PrefixKey`] before the address: interface and family.
pub const PREFIX_HEAD_BITS: u32 = 40;

impl PrefixKey {
    /// The key for `addr` of `family` on `ifindex`.
    pub const fn new(ifindex: u32, family: u8, addr: [u8; 16]) -> PrefixKey {
        PrefixKey { ifindex: ifindex.to_be_bytes(), family, addr, _pad: [0; 3] }
    }
}

/// Indexes into the `CONFIG` array (settings userspace can change live).
pub mod config {
    /// Flags, see [`flag`].
    pub const FLAGS: u32 = 0;
    /// The listener generation new flows go to (see [`super::listener`]).
    pub const GENERATION: u32 = 1;
    /// Process id of the gateway that owns the steering (0: none yet).
    pub const OWNER_PID: u32 = 2;
    /// Number of entries.
    pub const COUNT: u32 = 3;
    /// Bits of `CONFIG[FLAGS]`.
    pub mod flag {
        /// IPv6 is steered (a listener exists): without it, IPv6 SYNs to
        /// steered ports are dropped, never forwarded unscanned.
        pub const V6: u32 = 1;
        /// Flows to the host's own addresses are steered too.
        pub const INTERCEPT_LOCAL: u32 = 2;
        /// While no gateway listens (`when_down = "forward"`), steered
        /// flows are forwarded untouched instead of dropped.
        pub const WHEN_DOWN_FORWARD: u32 = 4;
    }
}

/// Indexes into the per-CPU `COUNTERS` array kept by the XDP program.
pub mod counter {
    /// TCP packets seen.
    pub const TCP: u32 = 0;
    /// UDP packets seen.
    pub const UDP: u32 = 1;
    /// ICMP and ICMPv6 packets seen.
    pub const ICMP: u32 = 2;
    /// Other IP packets and non-IP frames.
    pub const OTHER: u32 = 3;
    /// Packets dropped because a prefix in `BLOCK` matched.
    pub const BLOCKED: u32 = 4;
    /// UDP packets dropped because their destination port is in
    /// `UDP_DROP_PORTS` (QUIC to intercepted TLS ports: browsers then fall
    /// back to TCP, which is steered).
    pub const UDP_DROPPED: u32 = 5;
    /// Number of counters.
    pub const COUNT: u32 = 6;
    /// Names, in index order, for logs and the CLI.
    pub const NAMES: [&str; COUNT as usize] = ["tcp", "udp", "icmp", "other", "blocked", "udp_dropped"];
}

/// Indexes into the per-CPU `STEER_STATS` array kept by the TC program.
/// On a steered port a packet is assigned to the gateway or dropped; the
/// `drop_*` counters say why it was dropped.
pub mod steer_stat {
    /// Packets assigned to an established gateway socket.
    pub const ESTABLISHED: u32 = 0;
    /// Packets assigned to a listener (new connections).
    pub const LISTENER: u32 = 1;
    /// Dropped: no listener for the kind and family (start-up, a gateway
    /// that is down, IPv6 switched off).
    pub const DROP_NO_LISTENER: u32 = 2;
    /// Packets skipped because the source is in `BYPASS`.
    pub const BYPASSED: u32 = 3;
    /// Dropped: `bpf_sk_assign` failed.
    pub const DROP_ASSIGN: u32 = 4;
    /// SYNs that met a gateway socket in TIME_WAIT (port reuse by a client).
    pub const TIME_WAIT_SYN: u32 = 5;
    /// TIME_WAIT SYNs that `sk_lookup` handed to a listener.
    pub const TIME_WAIT_REUSED: u32 = 6;
    /// Dropped: a fragment of a TCP packet to a steered port (or one too
    /// short to show its ports).
    pub const DROP_FRAGMENT: u32 = 7;
    /// Dropped: an IP packet whose transport header could not be found
    /// (too many extension headers or tags, truncated).
    pub const DROP_UNPARSED: u32 = 8;
    /// Dropped: a packet to a steered port still carrying a VLAN tag.
    pub const DROP_TAGGED: u32 = 9;
    /// Dropped: a packet of a steered port that is not a SYN and belongs to
    /// no gateway socket (a flow that escaped, or older than the gateway).
    pub const DROP_STRAY: u32 = 10;
    /// Dropped: a second connection to an expected FTP data port.
    pub const DROP_SECOND_DATA: u32 = 11;
    /// Left alone: a flow to the host's own address.
    pub const LOCAL: u32 = 12;
    /// Forwarded untouched: no gateway listens and `when_down = "forward"`.
    pub const DOWN_FORWARDED: u32 = 13;
    /// Number of counters.
    pub const COUNT: u32 = 14;
    /// Names, in index order, for logs and the CLI.
    pub const NAMES: [&str; COUNT as usize] = [
        "established",
        "listener",
        "drop_no_listener",
        "bypassed",
        "drop_assign",
        "time_wait_syn",
        "time_wait_reused",
        "drop_fragment",
        "drop_unparsed",
        "drop_tagged",
        "drop_stray",
        "drop_second_data",
        "local",
        "down_forwarded",
    ];
}

/// A packet and byte count.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// Packets.
    pub packets: u64,
    /// Bytes (frame length as seen by the program).
    pub bytes: u64,
}

/// Map an IPv4 address (network-order octets) to the 16-byte form.
pub const fn v4_mapped(o: [u8; 4]) -> [u8; 16] {
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, o[0], o[1], o[2], o[3]]
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C) plain data without padding holes.
    unsafe impl aya::Pod for super::ExpectKey {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::ExpectValue {}
    unsafe impl aya::Pod for super::PrefixKey {}
    unsafe impl aya::Pod for super::Counter {}
}
