//! The gateway's kernel side.
//!
//! * `steer` (TC ingress on client-facing interfaces): hands forwarded TCP
//!   flows for steered ports, and connections announced in `EXPECTATIONS`,
//!   to the gateway's sockets with `bpf_sk_assign` and marks them so that
//!   policy routing delivers them locally.
//! * `filter` (XDP on the same interfaces): drops blocked prefixes early and
//!   keeps per-CPU counters by protocol.
//!
//! * `reuse` (sk_lookup in the gateway's network namespace): completes the
//!   one case TC cannot, a client SYN that reuses a port whose gateway-side
//!   socket is still in TIME_WAIT (see `try_steer`).
//!
//! Anything that does not match is left to the kernel's forwarding path.
#![no_std]
#![no_main]

mod packet;

use aya_ebpf::{
    bindings::{
        BPF_F_CURRENT_NETNS, BPF_TCP_LISTEN, BPF_TCP_TIME_WAIT, TC_ACT_OK, bpf_sock, bpf_sock_tuple, xdp_action,
    },
    helpers::generated::{bpf_map_lookup_elem, bpf_sk_assign, bpf_sk_release, bpf_skc_lookup_tcp},
    macros::{classifier, map, sk_lookup, xdp},
    maps::{HashMap, LpmTrie, LruHashMap, PerCpuArray, SockMap, lpm_trie::Key},
    programs::{SkLookupContext, TcContext, XdpContext},
};
use gateway_common::{Counter, ExpectKey, ExpectValue, FlowKey, LpmAddr, counter, listener, steer_stat, v4_mapped};

use packet::{Flow, Proto};

/// Steered destination ports (host byte order) → listener kind.
#[map]
static STEER_PORTS: HashMap<u16, u32> = HashMap::with_max_entries(64, 0);

/// Connections the gateway expects (FTP data channels) → listener kind.
#[map]
static EXPECTATIONS: HashMap<ExpectKey, ExpectValue> = HashMap::with_max_entries(16384, 0);

/// Source prefixes that are never steered.
#[map]
static BYPASS: LpmTrie<LpmAddr, u8> = LpmTrie::with_max_entries(4096, 0);

/// Source or destination prefixes dropped by XDP.
#[map]
static BLOCK: LpmTrie<LpmAddr, u8> = LpmTrie::with_max_entries(16384, 0);

/// The gateway's listeners, at `listener::slot(kind, family)`.
#[map]
static LISTENERS: SockMap = SockMap::with_max_entries(listener::SLOTS, 0);

/// SYNs handed to a TIME_WAIT socket, waiting for `reuse` → listener kind.
#[map]
static TW_SYN: LruHashMap<FlowKey, u32> = LruHashMap::with_max_entries(8192, 0);

/// XDP counters, see `gateway_common::counter`.
#[map]
static COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// TC steering counters, see `gateway_common::steer_stat`.
#[map]
static STEER_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(steer_stat::COUNT, 0);

/// fwmark for steered packets; set by userspace at load time.
#[unsafe(no_mangle)]
static FWMARK: u32 = 0;

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
fn in_trie(trie: &LpmTrie<LpmAddr, u8>, addr: LpmAddr) -> bool {
    trie.get(Key::new(128, addr)).is_some()
}

#[classifier]
pub fn steer(ctx: TcContext) -> i32 {
    if let Some(flow) = packet::tc_flow(&ctx)
        && flow.proto == Proto::Tcp
    {
        try_steer(&ctx, &flow);
    }
    TC_ACT_OK
}

fn try_steer(ctx: &TcContext, flow: &Flow) {
    let kind = match unsafe { STEER_PORTS.get(flow.dport) } {
        Some(kind) => *kind,
        None => {
            let key = ExpectKey { client: flow.saddr, server: flow.daddr, port: flow.dport, _pad: [0; 2] };
            match unsafe { EXPECTATIONS.get(&key) } {
                Some(v) => v.kind,
                None => return,
            }
        }
    };
    if in_trie(&BYPASS, flow.saddr) {
        count(&STEER_STATS, steer_stat::BYPASSED, ctx.len());
        return;
    }

    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let (tuple_len, family) = if flow.v6 {
        // SAFETY: writing plain integers into a zeroed union.
        unsafe {
            let t = &mut tuple.__bindgen_anon_1.ipv6;
            t.saddr = core::mem::transmute::<[u8; 16], [u32; 4]>(flow.saddr);
            t.daddr = core::mem::transmute::<[u8; 16], [u32; 4]>(flow.daddr);
            t.sport = flow.sport.to_be();
            t.dport = flow.dport.to_be();
        }
        (core::mem::size_of::<aya_ebpf::bindings::bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2>(), listener::V6)
    } else {
        unsafe {
            let t = &mut tuple.__bindgen_anon_1.ipv4;
            t.saddr = u32::from_ne_bytes([flow.saddr[12], flow.saddr[13], flow.saddr[14], flow.saddr[15]]);
            t.daddr = u32::from_ne_bytes([flow.daddr[12], flow.daddr[13], flow.daddr[14], flow.daddr[15]]);
            t.sport = flow.sport.to_be();
            t.dport = flow.dport.to_be();
        }
        (core::mem::size_of::<aya_ebpf::bindings::bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>(), listener::V4)
    };

    // A gateway socket for this 4-tuple (established, SYN-received, closing
    // or TIME_WAIT) gets the packet, as the kernel's own lookup would give it.
    let sk =
        unsafe { bpf_skc_lookup_tcp(ctx.skb.skb.cast(), &mut tuple, tuple_len as u32, BPF_F_CURRENT_NETNS as u64, 0) };
    if !sk.is_null() {
        let state = unsafe { (*sk).state };
        if state != BPF_TCP_LISTEN {
            if state == BPF_TCP_TIME_WAIT && flow.syn {
                // A client reused a port whose gateway-side socket is still
                // in TIME_WAIT. Assigning the SYN to the listener would fail
                // (the request clashes with the TIME_WAIT entry and is
                // dropped until it expires). The TIME_WAIT socket's own
                // logic accepts such a SYN and asks the listener lookup for
                // a socket: `reuse` answers that lookup with our listener.
                let key = FlowKey {
                    client: flow.saddr,
                    server: flow.daddr,
                    client_port: flow.sport,
                    server_port: flow.dport,
                };
                let _ = TW_SYN.insert(&key, &kind, 0);
                assign(ctx, sk, steer_stat::TIME_WAIT_SYN);
            } else {
                assign(ctx, sk, steer_stat::ESTABLISHED);
            }
            return;
        }
        unsafe { bpf_sk_release(sk.cast()) };
    }

    // Only a SYN may open a connection on a listener. Other packets of
    // flows that are not ours (started before the gateway, or after it
    // restarted) keep being forwarded instead of being reset by a listener.
    if !flow.syn {
        return;
    }
    let slot = listener::slot(kind, family);
    // SAFETY: SockMap is a transparent wrapper around its map definition; a
    // sockmap lookup from TC yields a referenced socket that must be released.
    let sk = unsafe {
        bpf_map_lookup_elem(core::ptr::from_ref(&LISTENERS).cast_mut().cast(), core::ptr::from_ref(&slot).cast())
    } as *mut bpf_sock;
    if sk.is_null() {
        count(&STEER_STATS, steer_stat::NO_LISTENER, ctx.len());
        return;
    }
    assign(ctx, sk, steer_stat::LISTENER);
}

#[inline(always)]
fn assign(ctx: &TcContext, sk: *mut bpf_sock, stat: u32) {
    let ret = unsafe { bpf_sk_assign(ctx.skb.skb.cast(), sk.cast(), 0) };
    unsafe { bpf_sk_release(sk.cast()) };
    if ret == 0 {
        let mark = unsafe { core::ptr::read_volatile(&FWMARK) };
        ctx.set_mark(mark);
        count(&STEER_STATS, stat, ctx.len());
    } else {
        count(&STEER_STATS, steer_stat::ASSIGN_FAILED, ctx.len());
    }
}

/// Runs on every listener lookup in the gateway's namespace; acts only on
/// SYNs that `steer` recorded in `TW_SYN`, so the host's own services are
/// never affected.
#[sk_lookup]
pub fn reuse(ctx: SkLookupContext) -> u32 {
    const SK_PASS: u32 = 1;
    const AF_INET: u32 = 2;
    // SAFETY: the kernel hands a valid context.
    let lk = unsafe { &*ctx.lookup };
    let v6 = lk.family != AF_INET;
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
    let Some(kind) = (unsafe { TW_SYN.get(&key) }).copied() else {
        return SK_PASS;
    };
    let _ = TW_SYN.remove(&key);
    let family = if v6 { listener::V6 } else { listener::V4 };
    if LISTENERS.redirect_sk_lookup(&ctx, listener::slot(kind, family), 0).is_ok() {
        count(&STEER_STATS, steer_stat::TIME_WAIT_REUSED, 0);
    }
    SK_PASS
}

#[xdp]
pub fn filter(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u32;
    let Some(flow) = packet::xdp_flow(&ctx) else {
        count(&COUNTERS, counter::OTHER, len);
        return xdp_action::XDP_PASS;
    };
    if in_trie(&BLOCK, flow.saddr) || in_trie(&BLOCK, flow.daddr) {
        count(&COUNTERS, counter::BLOCKED, len);
        return xdp_action::XDP_DROP;
    }
    let index = match flow.proto {
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
