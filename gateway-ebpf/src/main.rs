//! The gateway's kernel side.
//!
//! * `steer` (TC ingress on client-facing interfaces): hands forwarded TCP
//!   flows for steered ports, and the one connection each entry of
//!   `EXPECTATIONS` admits, to the gateway's sockets with `bpf_sk_assign`
//!   and marks them so that policy routing delivers them locally. On a
//!   steered port a packet is assigned or dropped — never forwarded by
//!   accident of parsing, timing or configuration: fragments, packets
//!   still tagged, unparseable headers, stray segments, a missing listener
//!   and a failed assignment are all dropped and counted.
//! * `filter` (XDP on the same interfaces): drops blocked prefixes early and
//!   keeps per-CPU counters by protocol.
//! * `reuse` (sk_lookup in the gateway's network namespace): completes the
//!   one case TC cannot, a client SYN that reuses a port whose gateway-side
//!   socket is still in TIME_WAIT (see `try_steer`).
//!
//! Anything not on a steered port is left to the kernel's forwarding path.
#![no_std]
#![no_main]

mod packet;

use aya_ebpf::{
    bindings::{
        BPF_F_CURRENT_NETNS, BPF_FIB_LKUP_RET_NOT_FWDED, BPF_TCP_LISTEN, BPF_TCP_TIME_WAIT, TC_ACT_OK, TC_ACT_SHOT,
        bpf_fib_lookup, bpf_sock, bpf_sock_tuple, xdp_action,
    },
    helpers::generated::{
        bpf_fib_lookup as fib_lookup, bpf_map_lookup_elem, bpf_sk_assign, bpf_sk_release, bpf_skc_lookup_tcp,
    },
    macros::{classifier, map, sk_lookup, xdp},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, SockMap, lpm_trie::Key},
    programs::{SkLookupContext, TcContext, XdpContext},
};
use gateway_common::{
    Counter, ExpectKey, ExpectValue, FlowKey, PREFIX_HEAD_BITS, PrefixKey, config, counter, family, listener,
    steer_stat, v4_mapped,
};

use aya_log_ebpf::debug;
use packet::{Frag, Packet, Parsed, Proto};

/// Steered destination ports (host byte order) → listener kind.
#[map]
static STEER_PORTS: HashMap<u16, u32> = HashMap::with_max_entries(64, 0);

/// UDP destination ports dropped by XDP (QUIC to intercepted TLS ports).
#[map]
static UDP_DROP_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(16, 0);

/// Connections the gateway expects (FTP data channels) → listener kind and
/// the one client port admitted.
#[map]
static EXPECTATIONS: HashMap<ExpectKey, ExpectValue> = HashMap::with_max_entries(16384, 0);

/// Source prefixes that are never steered (per interface, or on any).
#[map]
static BYPASS: LpmTrie<PrefixKey, u8> = LpmTrie::with_max_entries(4096, 0);

/// Source or destination prefixes dropped by XDP.
#[map]
static BLOCK: LpmTrie<PrefixKey, u8> = LpmTrie::with_max_entries(16384, 0);

/// The gateway's listeners, at `listener::slot(generation, kind, family)`.
#[map]
static LISTENERS: SockMap = SockMap::with_max_entries(listener::SLOTS, 0);

/// SYNs handed to a TIME_WAIT socket, waiting for `reuse` → listener slot.
#[map]
static TW_SYN: LruHashMap<FlowKey, u32> = LruHashMap::with_max_entries(8192, 0);

/// A dropped first fragment's datagram (addresses, id, family): its later
/// fragments are dropped too, so nothing of it reaches the server.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FragKey {
    saddr: [u8; 16],
    daddr: [u8; 16],
    id: u32,
    v6: u32,
}

/// Datagrams whose first fragment was dropped on a steered port.
#[map]
static FRAG_DROPPED: LruHashMap<FragKey, u8> = LruHashMap::with_max_entries(4096, 0);

/// Settings userspace may change while the programs run.
#[map]
static CONFIG: Array<u32> = Array::with_max_entries(config::COUNT, 0);

/// Link-header length of each interface XDP is attached to (14 for
/// Ethernet, 0 for tun, WireGuard, PPP), by ifindex.
#[map]
static L2_LEN: HashMap<u32, u32> = HashMap::with_max_entries(256, 0);

/// XDP counters, see `gateway_common::counter`.
#[map]
static COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// TC steering counters, see `gateway_common::steer_stat`.
#[map]
static STEER_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(steer_stat::COUNT, 0);

/// fwmark for steered packets; set by userspace at load time.
#[unsafe(no_mangle)]
static FWMARK: u32 = 0;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

#[inline(always)]
fn count(map: &PerCpuArray<Counter>, index: u32, bytes: u32) {
    if let Some(c) = map.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += u64::from(bytes);
        }
    }
}

#[inline(always)]
fn flag(f: u32) -> bool {
    CONFIG.get(config::FLAGS).is_some_and(|v| v & f != 0)
}

/// The listener generation new flows go to.
#[inline(always)]
fn generation() -> u32 {
    CONFIG.get(config::GENERATION).copied().unwrap_or(0)
}

/// The prefix key of a 16-byte (IPv4-mapped for IPv4) address.
#[inline(always)]
fn prefix_key(ifindex: u32, v6: bool, a: &[u8; 16]) -> PrefixKey {
    if v6 {
        PrefixKey::new(ifindex, family::V6, *a)
    } else {
        let mut v4 = [0u8; 16];
        v4[..4].copy_from_slice(&a[12..16]);
        PrefixKey::new(ifindex, family::V4, v4)
    }
}

#[inline(always)]
fn in_trie(trie: &LpmTrie<PrefixKey, u8>, ifindex: u32, v6: bool, addr: &[u8; 16]) -> bool {
    let bits = PREFIX_HEAD_BITS + if v6 { 128 } else { 32 };
    trie.get(Key::new(bits, prefix_key(0, v6, addr))).is_some()
        || (ifindex != 0 && trie.get(Key::new(bits, prefix_key(ifindex, v6, addr))).is_some())
}

#[classifier]
pub fn steer(ctx: TcContext) -> i32 {
    match packet::tc(&ctx) {
        Parsed::NotIp => TC_ACT_OK,
        Parsed::Unparsed => drop(&ctx, steer_stat::DROP_UNPARSED),
        Parsed::Ip(p) if p.proto != Proto::Tcp => TC_ACT_OK,
        Parsed::Ip(p) if p.frag == Frag::Later => {
            // SAFETY: map lookup of a plain key.
            if unsafe { FRAG_DROPPED.get(&frag_key(&p)) }.is_some() {
                drop(&ctx, steer_stat::DROP_FRAGMENT)
            } else {
                TC_ACT_OK
            }
        }
        // A TCP first fragment too short to show its ports (RFC 1858).
        Parsed::Ip(p) if !p.ports => drop(&ctx, steer_stat::DROP_FRAGMENT),
        Parsed::Ip(p) => try_steer(&ctx, &p),
    }
}

#[inline(always)]
fn frag_key(p: &Packet) -> FragKey {
    FragKey { saddr: p.saddr, daddr: p.daddr, id: p.frag_id, v6: u32::from(p.v6) }
}

/// Drops the packet, counted under `stat` (and logged at debug level when
/// `[log] ebpf` is on; off, the verifier removes the logging as dead code:
/// AYA_LOG_LEVEL is a load-time constant).
#[inline(always)]
fn drop(ctx: &TcContext, stat: u32) -> i32 {
    count(&STEER_STATS, stat, ctx.len());
    debug!(ctx, "steer: drop (counter {})", stat);
    TC_ACT_SHOT
}

/// The listener slot for a TCP packet, if its port is steered or its
/// connection expected; `Err` with the drop counter for a second
/// connection to an expected port.
#[inline(always)]
fn slot_of(p: &Packet) -> Result<Option<u32>, u32> {
    let fam = if p.v6 { listener::V6 } else { listener::V4 };
    // SAFETY: map lookups return pointers valid for this program run.
    if let Some(kind) = unsafe { STEER_PORTS.get(p.dport) } {
        return Ok(Some(listener::slot(generation(), *kind, fam)));
    }
    let fam = if p.v6 { family::V6 } else { family::V4 };
    let key = ExpectKey { client: p.saddr, server: p.daddr, port: p.dport, family: fam, _pad: 0 };
    let Some(v) = EXPECTATIONS.get_ptr_mut(&key) else { return Ok(None) };
    // SAFETY: the value lives in the map; another CPU may race on the
    // first SYN, in which case both connections reach the gateway, which
    // hands one to the transfer and resets the other.
    unsafe {
        if (*v).client_port == 0 && p.syn {
            (*v).client_port = p.sport;
        } else if (*v).client_port != p.sport {
            return Err(steer_stat::DROP_SECOND_DATA);
        }
        Ok(Some((*v).slot))
    }
}

/// The listener in `slot`, referenced (release it or hand it to
/// `bpf_sk_assign`); null when there is none.
#[inline(always)]
fn listener_in(slot: u32) -> *mut bpf_sock {
    // SAFETY: SockMap is a transparent wrapper around its map definition; a
    // sockmap lookup from TC yields a referenced socket that must be released.
    unsafe {
        bpf_map_lookup_elem(core::ptr::from_ref(&LISTENERS).cast_mut().cast(), core::ptr::from_ref(&slot).cast())
            as *mut bpf_sock
    }
}

/// Whether the gateway process that owns `slot` is gone: not even its IPv4
/// listener of that kind is there (an absent IPv6 listener alone means
/// IPv6 is switched off, which drops).
#[inline(always)]
fn down(slot: u32) -> bool {
    let sk = listener_in(slot & !1);
    if sk.is_null() {
        return true;
    }
    // SAFETY: releasing the reference the lookup took.
    unsafe { bpf_sk_release(sk.cast()) };
    false
}

/// No gateway socket can take this packet: forward it untouched if the
/// gateway is down and configured to fail open, else drop it.
#[inline(always)]
fn unserved(ctx: &TcContext, slot: u32, stat: u32) -> i32 {
    if flag(config::flag::WHEN_DOWN_FORWARD) && down(slot) {
        count(&STEER_STATS, steer_stat::DOWN_FORWARDED, ctx.len());
        debug!(ctx, "steer: no gateway listens, forwarded (when_down = forward)");
        return TC_ACT_OK;
    }
    drop(ctx, stat)
}

fn try_steer(ctx: &TcContext, p: &Packet) -> i32 {
    let slot = match slot_of(p) {
        Ok(Some(k)) => k,
        Ok(None) => return TC_ACT_OK,
        Err(stat) => return drop(ctx, stat),
    };
    if p.frag == Frag::First {
        let _ = FRAG_DROPPED.insert(&frag_key(p), &1, 0);
        return drop(ctx, steer_stat::DROP_FRAGMENT);
    }
    if p.tagged {
        // The kernel would strip the tag and forward what TC let pass.
        return drop(ctx, steer_stat::DROP_TAGGED);
    }
    let ifindex = unsafe { (*ctx.skb.skb).ingress_ifindex };
    if in_trie(&BYPASS, ifindex, p.v6, &p.saddr) {
        count(&STEER_STATS, steer_stat::BYPASSED, ctx.len());
        return TC_ACT_OK;
    }

    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let tuple_len = if p.v6 {
        // SAFETY: writing plain integers into a zeroed union.
        unsafe {
            let t = &mut tuple.__bindgen_anon_1.ipv6;
            t.saddr = core::mem::transmute::<[u8; 16], [u32; 4]>(p.saddr);
            t.daddr = core::mem::transmute::<[u8; 16], [u32; 4]>(p.daddr);
            t.sport = p.sport.to_be();
            t.dport = p.dport.to_be();
        }
        core::mem::size_of::<aya_ebpf::bindings::bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2>()
    } else {
        // SAFETY: as above.
        unsafe {
            let t = &mut tuple.__bindgen_anon_1.ipv4;
            t.saddr = u32::from_ne_bytes([p.saddr[12], p.saddr[13], p.saddr[14], p.saddr[15]]);
            t.daddr = u32::from_ne_bytes([p.daddr[12], p.daddr[13], p.daddr[14], p.daddr[15]]);
            t.sport = p.sport.to_be();
            t.dport = p.dport.to_be();
        }
        core::mem::size_of::<aya_ebpf::bindings::bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>()
    };

    // A socket for this 4-tuple (established, SYN-received, closing or
    // TIME_WAIT) gets the packet, as the kernel's own lookup would give it.
    let sk =
        unsafe { bpf_skc_lookup_tcp(ctx.skb.skb.cast(), &mut tuple, tuple_len as u32, BPF_F_CURRENT_NETNS as u64, 0) };
    if !sk.is_null() {
        let state = unsafe { (*sk).state };
        if state != BPF_TCP_LISTEN {
            if state == BPF_TCP_TIME_WAIT && p.syn {
                // A client reused a port whose gateway-side socket is still
                // in TIME_WAIT. Assigning the SYN to the listener would fail
                // (the request clashes with the TIME_WAIT entry and is
                // dropped until it expires). The TIME_WAIT socket's own
                // logic accepts such a SYN and asks the listener lookup for
                // a socket: `reuse` answers that lookup with our listener.
                let key = FlowKey { client: p.saddr, server: p.daddr, client_port: p.sport, server_port: p.dport };
                let _ = TW_SYN.insert(&key, &slot, 0);
                return assign(ctx, sk, steer_stat::TIME_WAIT_SYN);
            }
            return assign(ctx, sk, steer_stat::ESTABLISHED);
        }
        unsafe { bpf_sk_release(sk.cast()) };
    }

    // No gateway socket: only a SYN may open one, and not to the host's own
    // services unless asked to.
    if !flag(config::flag::INTERCEPT_LOCAL) && is_local(ctx, p, ifindex) {
        count(&STEER_STATS, steer_stat::LOCAL, ctx.len());
        return TC_ACT_OK;
    }
    if !p.syn {
        // A segment of a flow that is not the gateway's (it escaped, or is
        // older than the gateway): forwarding it would let it go unscanned.
        return unserved(ctx, slot, steer_stat::DROP_STRAY);
    }
    let sk = listener_in(slot);
    if sk.is_null() {
        return unserved(ctx, slot, steer_stat::DROP_NO_LISTENER);
    }
    debug!(ctx, "steer: SYN to port {} → listener slot {}", p.dport, slot);
    assign(ctx, sk, steer_stat::LISTENER)
}

/// Whether the packet is for this host itself (the route lookup says it is
/// not forwarded).
#[inline(always)]
fn is_local(ctx: &TcContext, p: &Packet, ifindex: u32) -> bool {
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.l4_protocol = 6;
    params.sport = p.sport.to_be();
    params.dport = p.dport.to_be();
    params.ifindex = ifindex;
    // SAFETY: plain integers written into a zeroed struct of unions.
    unsafe {
        if p.v6 {
            params.family = AF_INET6;
            params.__bindgen_anon_3.ipv6_src = core::mem::transmute::<[u8; 16], [u32; 4]>(p.saddr);
            params.__bindgen_anon_4.ipv6_dst = core::mem::transmute::<[u8; 16], [u32; 4]>(p.daddr);
        } else {
            params.family = AF_INET;
            params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([p.saddr[12], p.saddr[13], p.saddr[14], p.saddr[15]]);
            params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([p.daddr[12], p.daddr[13], p.daddr[14], p.daddr[15]]);
        }
    }
    let r = unsafe { fib_lookup(ctx.skb.skb.cast(), &mut params, core::mem::size_of::<bpf_fib_lookup>() as i32, 0) };
    r == BPF_FIB_LKUP_RET_NOT_FWDED as i64
}

#[inline(always)]
fn assign(ctx: &TcContext, sk: *mut bpf_sock, stat: u32) -> i32 {
    let ret = unsafe { bpf_sk_assign(ctx.skb.skb.cast(), sk.cast(), 0) };
    unsafe { bpf_sk_release(sk.cast()) };
    if ret != 0 {
        return drop(ctx, steer_stat::DROP_ASSIGN);
    }
    let mark = unsafe { core::ptr::read_volatile(&FWMARK) };
    ctx.set_mark(mark);
    count(&STEER_STATS, stat, ctx.len());
    TC_ACT_OK
}

/// Runs on every listener lookup in the gateway's namespace; acts only on
/// SYNs that `steer` recorded in `TW_SYN`, so the host's own services are
/// never affected.
#[sk_lookup]
pub fn reuse(ctx: SkLookupContext) -> u32 {
    const SK_PASS: u32 = 1;
    const FAMILY_INET: u32 = 2;
    // SAFETY: the kernel hands a valid context.
    let lk = unsafe { &*ctx.lookup };
    let v6 = lk.family != FAMILY_INET;
    let (client, server) = if v6 {
        unsafe {
            (
                core::mem::transmute::<[u32; 4], [u8; 16]>(lk.remote_ip6),
                core::mem::transmute::<[u32; 4], [u8; 16]>(lk.local_ip6),
            )
        }
    } else {
        (v4_mapped(lk.remote_ip4.to_ne_bytes()), v4_mapped(lk.local_ip4.to_ne_bytes()))
    };
    let key = FlowKey { client, server, client_port: u16::from_be(lk.remote_port), server_port: lk.local_port as u16 };
    let Some(slot) = (unsafe { TW_SYN.get(&key) }).copied() else {
        return SK_PASS;
    };
    let _ = TW_SYN.remove(&key);
    if LISTENERS.redirect_sk_lookup(&ctx, slot, 0).is_ok() {
        count(&STEER_STATS, steer_stat::TIME_WAIT_REUSED, 0);
    }
    SK_PASS
}

#[xdp]
pub fn filter(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u32;
    let ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: map lookup; the value is a plain u32.
    let l2 = unsafe { L2_LEN.get(&ifindex) }.copied().unwrap_or(14) as usize;
    let p = match packet::xdp(&ctx, l2) {
        Parsed::Ip(p) => p,
        Parsed::NotIp | Parsed::Unparsed => {
            count(&COUNTERS, counter::OTHER, len);
            return xdp_action::XDP_PASS;
        }
    };
    if in_trie(&BLOCK, 0, p.v6, &p.saddr) || in_trie(&BLOCK, 0, p.v6, &p.daddr) {
        count(&COUNTERS, counter::BLOCKED, len);
        return xdp_action::XDP_DROP;
    }
    // SAFETY: map lookup of a plain key.
    if p.proto == Proto::Udp && p.ports && unsafe { UDP_DROP_PORTS.get(&p.dport) }.is_some() {
        count(&COUNTERS, counter::UDP_DROPPED, len);
        return xdp_action::XDP_DROP;
    }
    let index = match p.proto {
        Proto::Tcp => counter::TCP,
        Proto::Udp => counter::UDP,
        Proto::Icmp => counter::ICMP,
        Proto::Other => counter::OTHER,
    };
    count(&COUNTERS, index, len);
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
