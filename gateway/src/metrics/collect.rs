//! The one collector: at each scrape it reads the counters the gateway
//! keeps anyway (the eBPF maps, the proxies' [`Stats`](crate::stats), the
//! spool budgets, the scanner pool's member states) and the event counters
//! of [`super::events`], and encodes them. Nothing here runs on the data
//! path.

use std::fmt;

use gateway_common::listener;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

use super::events::{Counts, Events, Table, backends, events};
use crate::{control::Sources, stats::Stats};

/// `protocol` label values by listener kind index.
const PROTOCOLS: [&str; listener::KINDS as usize] = ["http", "ftp", "ftp-data", "tls"];

/// Reads every series at scrape time.
pub struct Gateway {
    sources: Sources,
}

impl fmt::Debug for Gateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("metrics::collect::Gateway")
    }
}

impl Gateway {
    /// A collector over `sources` (the control socket's, so that `gateway
    /// stats` and `/metrics` read the same counters).
    pub fn new(sources: Sources) -> Gateway {
        Gateway { sources }
    }
}

impl Collector for Gateway {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let e = &mut enc;
        build_info(e)?;
        flows(e, &self.sources.stats)?;
        kernel(e, &self.sources)?;
        scanner(e, &self.sources)?;
        data_path(e, events())
    }
}

/// One metric family: `samples` are (labels, value) pairs.
fn family<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        let sample = m.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(value).encode(sample)?,
            _ => ConstGauge::new(value).encode(sample)?,
        }
    }
    Ok(())
}

/// A family without labels.
fn single(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, kind: MetricType, value: u64) -> fmt::Result {
    family::<[(&str, &str); 0]>(enc, name, help, kind, [([], value)])
}

/// A family of one label from [`Counts`].
fn counts<const N: usize>(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, c: &Counts<N>) -> fmt::Result {
    family(enc, name, help, MetricType::Counter, c.read().map(|(v, n)| ([(c.label.0, v)], n)))
}

/// A family of two labels from a [`Table`]; rows `keep_row` refuses
/// (`other`) are shown only where they counted something.
fn table<const R: usize, const C: usize>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    t: &Table<R, C>,
    keep_row: impl Fn(&str) -> bool,
) -> fmt::Result {
    let samples =
        t.read().filter(|([r, _], n)| *n > 0 || keep_row(r)).map(|([r, c], n)| ([(t.rows.0, r), (t.cols.0, c)], n));
    family(enc, name, help, MetricType::Counter, samples)
}

fn build_info(enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
    family(
        enc,
        "gateway_build_info",
        "The gateway's version (always 1).",
        MetricType::Gauge,
        [([("version", env!("CARGO_PKG_VERSION"))], 1)],
    )
}

fn flows(enc: &mut DescriptorEncoder<'_>, stats: &Stats) -> fmt::Result {
    use std::sync::atomic::Ordering::Relaxed;
    let by_kind = || PROTOCOLS.iter().zip(&stats.flows);
    family(
        enc,
        "gateway_flows",
        "Flows accepted from steered connections, by protocol.",
        MetricType::Counter,
        by_kind().map(|(p, k)| ([("protocol", *p)], k.total.load(Relaxed))),
    )?;
    family(
        enc,
        "gateway_flows_active",
        "Flows being served now, by protocol.",
        MetricType::Gauge,
        by_kind().map(|(p, k)| ([("protocol", *p)], k.active.load(Relaxed))),
    )?;
    let s = stats.snapshot();
    family(
        enc,
        "gateway_bytes",
        "Bytes relayed by the proxies: up = client to server, down = server to client (counted when a flow ends).",
        MetricType::Counter,
        [([("direction", "up")], s.bytes_up), ([("direction", "down")], s.bytes_down)],
    )?;
    single(
        enc,
        "gateway_connections_refused",
        "Connections turned away at proxy.max_connections or max_connections_per_client.",
        MetricType::Counter,
        s.refused,
    )?;
    single(
        enc,
        "gateway_upstream_connect_failures",
        "Flows whose original destination could not be reached.",
        MetricType::Counter,
        s.upstream_failures,
    )
}

fn kernel(enc: &mut DescriptorEncoder<'_>, src: &Sources) -> fmt::Result {
    let k = src.steering.stats();
    let xdp = || k.xdp.iter();
    family(
        enc,
        "gateway_xdp_packets",
        "Packets seen by the XDP filter on the client-facing interfaces, by counter (blocked, udp_dropped: dropped).",
        MetricType::Counter,
        xdp().map(|(n, c)| ([("counter", *n)], c.packets)),
    )?;
    family(
        enc,
        "gateway_xdp_bytes",
        "Bytes seen by the XDP filter, by counter.",
        MetricType::Counter,
        xdp().map(|(n, c)| ([("counter", *n)], c.bytes)),
    )?;
    let steer = || k.steer.iter();
    family(
        enc,
        "gateway_steer_packets",
        "Packets to steered ports by what the TC program did with them (drop_*: dropped).",
        MetricType::Counter,
        steer().map(|(n, c)| ([("outcome", *n)], c.packets)),
    )?;
    family(
        enc,
        "gateway_steer_bytes",
        "Bytes to steered ports by what the TC program did with them.",
        MetricType::Counter,
        steer().map(|(n, c)| ([("outcome", *n)], c.bytes)),
    )?;
    single(
        enc,
        "gateway_ftp_expectations",
        "Expected FTP data connections in the eBPF map now.",
        MetricType::Gauge,
        src.steering.expectations().len() as u64,
    )
}

fn scanner(enc: &mut DescriptorEncoder<'_>, src: &Sources) -> fmt::Result {
    let (memory, disk) = src.scanner.spool_usage();
    family(
        enc,
        "gateway_spool_bytes",
        "Body bytes held until their verdict, in memory and on disk.",
        MetricType::Gauge,
        [([("store", "memory")], memory), ([("store", "disk")], disk)],
    )?;
    let members = src.scanner.members();
    let states = ["up", "down", "suspended"];
    family(
        enc,
        "gateway_scanner_state",
        "Each scanner pool member (clamd, ICAP service): 1 for the state it is in (up, down: unreachable, suspended: failing), 0 for the others.",
        MetricType::Gauge,
        members.iter().flat_map(|m| {
            states.iter().map(move |s| ([("member", m.name.as_str()), ("state", *s)], u64::from(m.state == *s)))
        }),
    )?;
    family(
        enc,
        "gateway_scanner_in_flight",
        "Scans in flight per scanner pool member, those waiting for a slot included.",
        MetricType::Gauge,
        members.iter().map(|m| ([("member", m.name.as_str())], m.in_flight as u64)),
    )?;
    family(
        enc,
        "gateway_scanner_failures",
        "Scans a scanner pool member failed.",
        MetricType::Counter,
        members.iter().map(|m| ([("member", m.name.as_str())], m.failures)),
    )
}

fn data_path(enc: &mut DescriptorEncoder<'_>, ev: &Events) -> fmt::Result {
    counts(
        enc,
        "gateway_http_requests",
        "HTTP requests by the status class of the answer (none: reset or closed without an answer).",
        &ev.http,
    )?;
    table(
        enc,
        "gateway_scans",
        "Bodies scanned to the end, by backend and verdict (error: no answer, see gateway_scan_errors_total; the verdict cache's answers not included).",
        &ev.scans,
        |b| b != "other",
    )?;
    scan_latency(enc, ev)?;
    counts(
        enc,
        "gateway_scan_errors",
        "Scans that ended without a clean or infected answer, by kind (oversize, undecodable, and the scanner's failures).",
        &ev.scan_errors,
    )?;
    table(
        enc,
        "gateway_decisions",
        "Bodies decided, by transfer and decision (pass: delivered; infected, policy, unavailable: blocked).",
        &ev.decisions,
        |t| t != "other",
    )?;
    counts(
        enc,
        "gateway_verdict_cache_hits",
        "Verdicts answered by the verdict cache, by key (body hash, URL).",
        &ev.cache_hits,
    )?;
    counts(
        enc,
        "gateway_tls_handshakes",
        "TLS flows by what became of their ClientHello: intercepted (handshake with the client done), spliced (relayed unread), refused (alert), upstream_refused (the server's certificate: block page), failed (no hello, or the handshake failed).",
        &ev.tls,
    )?;
    table(
        enc,
        "gateway_ftp_transfers",
        "FTP data transfers by direction and outcome (infected: answered 505; blocked: 451).",
        &ev.ftp,
        |d| d != "other",
    )
}

fn scan_latency(enc: &mut DescriptorEncoder<'_>, ev: &Events) -> fmt::Result {
    let mut m = enc.encode_descriptor(
        "gateway_scan_duration_seconds",
        "Time from a body's last byte to its verdict, by backend.",
        None,
        MetricType::Histogram,
    )?;
    for (name, h) in backends().iter().zip(&ev.scan_seconds) {
        let r = h.read();
        if r.count == 0 && *name == "other" {
            continue;
        }
        let labels = [("backend", *name)];
        m.encode_family(&labels)?.encode_histogram::<[(&str, &str); 0]>(r.sum, r.count, &r.buckets, None)?;
    }
    Ok(())
}
