//! Types shared by the gateway's eBPF programs (`gateway-ebpf`) and its
//! userspace side (`gateway`).
//!
//! Everything here is `#[repr(C)]` plain data: the same bytes are written by
//! userspace into BPF maps and read by the kernel programs. Addresses are
//! always 16 bytes; IPv4 addresses are stored IPv4-mapped (`::ffff:a.b.c.d`)
//! so one map serves both families.
#![no_std]

/// Listener slots in the `LISTENERS` sockmap: `kind * 2 + family`.
pub mod listener {
    /// HTTP listener (steered HTTP ports).
    pub const HTTP: u32 = 0;
    /// FTP control-channel listener (steered FTP ports).
    pub const FTP_CONTROL: u32 = 1;
    /// FTP data-channel listener (connections announced in `EXPECTATIONS`).
    pub const FTP_DATA: u32 = 2;
    /// Number of listener kinds.
    pub const KINDS: u32 = 3;
    /// Family offset for IPv4 listeners.
    pub const V4: u32 = 0;
    /// Family offset for IPv6 listeners.
    pub const V6: u32 = 1;
    /// Number of sockmap slots.
    pub const SLOTS: u32 = KINDS * 2;

    /// The sockmap index of the listener of `kind` for `family` (`V4`/`V6`).
    pub const fn slot(kind: u32, family: u32) -> u32 {
        kind * 2 + family
    }
}

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
    /// Explicit padding so the key has no uninitialised bytes.
    pub _pad: [u8; 2],
}

/// A TCP connection's 4-tuple as seen from the client, key of the
/// `TW_SYN` map: SYNs that met a gateway socket in TIME_WAIT and are to be
/// handed to a listener by the `sk_lookup` program.
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
    /// Listener kind to steer to (see [`listener`]).
    pub kind: u32,
}

/// Key of the `BYPASS` and `BLOCK` LPM tries. `prefix_len` counts bits of the
/// 16-byte address, so an IPv4 /24 is stored as `96 + 24`.
pub type LpmAddr = [u8; 16];

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
    /// Number of counters.
    pub const COUNT: u32 = 5;
    /// Names, in index order, for logs and the CLI.
    pub const NAMES: [&str; COUNT as usize] = ["tcp", "udp", "icmp", "other", "blocked"];
}

/// Indexes into the per-CPU `STEER_STATS` array kept by the TC program.
pub mod steer_stat {
    /// Packets assigned to an established gateway socket.
    pub const ESTABLISHED: u32 = 0;
    /// Packets assigned to a listener (new connections).
    pub const LISTENER: u32 = 1;
    /// Packets that matched but found no listener (forwarded untouched).
    pub const NO_LISTENER: u32 = 2;
    /// Packets skipped because the source is in `BYPASS`.
    pub const BYPASSED: u32 = 3;
    /// `bpf_sk_assign` failures.
    pub const ASSIGN_FAILED: u32 = 4;
    /// SYNs that met a gateway socket in TIME_WAIT (port reuse by a client).
    pub const TIME_WAIT_SYN: u32 = 5;
    /// TIME_WAIT SYNs that `sk_lookup` handed to a listener.
    pub const TIME_WAIT_REUSED: u32 = 6;
    /// Number of counters.
    pub const COUNT: u32 = 7;
    /// Names, in index order, for logs and the CLI.
    pub const NAMES: [&str; COUNT as usize] =
        ["established", "listener", "no_listener", "bypassed", "assign_failed", "time_wait_syn", "time_wait_reused"];
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
    unsafe impl aya::Pod for super::Counter {}
}
