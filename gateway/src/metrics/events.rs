//! Counters of data-path events that no other counter holds: HTTP answers
//! by status class, scans by backend and verdict with their latency,
//! decisions, scan errors by kind, verdict-cache hits, FTP transfers.
//!
//! A leaf module: the data path imports it (one call at the place each
//! event happens) and it imports nothing of the data path but the
//! [`Verdict`] type, so there is no import loop. Every counter is a static
//! array of atomics with its label values fixed in advance: counting is
//! one relaxed atomic add, with no lock, lookup table or allocation. A
//! label value not in a list counts under its last entry (`other`), so a
//! kind added elsewhere is still counted, never lost.

use std::{
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use crate::verdict::{ErrorKind, Verdict};

/// The process's event counters (one gateway per process).
static EVENTS: Events = Events::new();

/// The event counters, to count into or to read.
pub fn events() -> &'static Events {
    &EVENTS
}

/// Upper bounds (seconds) of the scan latency buckets: from a verdict on a
/// small body (~1 ms with clamd sessions) to the whole-scan timeouts.
pub const SCAN_BUCKETS: [f64; 14] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

const BACKENDS: [&str; 3] = ["clamd", "icap", "other"];

/// All event counters.
pub struct Events {
    /// HTTP answers by status class (`none`: the connection was reset or
    /// closed without an answer).
    pub http: Counts<6>,
    /// Scans the backend answered, by backend and verdict.
    pub scans: Table<3, 4>,
    /// From a body's last byte to its verdict, per backend ([`BACKENDS`]).
    pub scan_seconds: [Histogram; 3],
    /// Scans that ended without a clean/infected answer, by [`ErrorKind`].
    pub scan_errors: Counts<9>,
    /// Decisions by transfer kind and outcome.
    pub decisions: Table<5, 4>,
    /// Verdicts answered from the verdict cache, by key.
    pub cache_hits: Counts<2>,
    /// FTP transfers by direction and how they ended.
    pub ftp: Table<3, 5>,
    /// TLS flows by what became of their ClientHello.
    pub tls: Counts<5>,
}

impl Events {
    const fn new() -> Events {
        Events {
            http: Counts::new("class", ["1xx", "2xx", "3xx", "4xx", "5xx", "none"]),
            scans: Table::new(("backend", BACKENDS), ("verdict", ["clean", "infected", "modified", "error"])),
            scan_seconds: [const { Histogram::new() }; 3],
            scan_errors: Counts::new(
                "kind",
                ["unavailable", "busy", "timeout", "protocol", "oversize", "undecodable", "spool", "io", "other"],
            ),
            decisions: Table::new(
                ("transfer", ["http-download", "http-upload", "ftp-download", "ftp-upload", "other"]),
                ("decision", ["pass", "infected", "policy", "unavailable"]),
            ),
            cache_hits: Counts::new("key", ["hash", "url"]),
            ftp: Table::new(
                ("direction", ["download", "upload", "other"]),
                ("outcome", ["delivered", "infected", "blocked", "failed", "aborted"]),
            ),
            tls: Counts::new("outcome", ["intercepted", "spliced", "refused", "upstream_refused", "failed"]),
        }
    }

    /// An HTTP answer with `status` went to the client (0: none, the
    /// connection was reset or closed).
    pub fn http_answered(&self, status: u16) {
        let class = match status {
            100..=599 => usize::from(status / 100 - 1),
            _ => 5,
        };
        self.http.add(class);
    }

    /// `backend` answered a scan with `verdict`, `after` the body's last byte.
    pub fn scanned(&self, backend: &str, verdict: &Verdict, after: Duration) {
        let b = index(&BACKENDS, backend);
        let v = match verdict {
            Verdict::Clean => 0,
            Verdict::Infected { .. } => 1,
            Verdict::Modified { .. } => 2,
            Verdict::Error { .. } => 3,
        };
        self.scans.add(b, v);
        self.scan_seconds[b].observe(after);
    }

    /// A scan ended without an answer, for this reason.
    pub fn scan_failed(&self, kind: ErrorKind) {
        self.scan_errors.add(self.scan_errors.index(kind.name()));
    }

    /// A body of `transfer` (`http-download` …) was decided: `decision` is
    /// `pass`, `infected`, `policy` or `unavailable`.
    pub fn decided(&self, transfer: &str, decision: &str) {
        self.decisions.add(self.decisions.rows.1.index(transfer), self.decisions.cols.1.index(decision));
    }

    /// The verdict cache answered, by body hash (`hash`) or URL (`url`).
    pub fn cache_hit(&self, key: &str) {
        self.cache_hits.add(self.cache_hits.index(key));
    }

    /// An FTP transfer of `verb` ended with `outcome` (`delivered`,
    /// `infected` (answered 505), `blocked`, `failed`, `aborted`).
    pub fn ftp_transfer(&self, verb: &str, outcome: &str) {
        let direction = match verb {
            "RETR" => 0,
            "STOR" | "STOU" | "APPE" => 1,
            _ => 2,
        };
        self.ftp.add(direction, self.ftp.cols.1.index(outcome));
    }

    /// A TLS flow was `intercepted` (handshake with the client done),
    /// `spliced`, `refused` (alert), `upstream_refused` (the server's
    /// certificate: block page) or `failed` (no hello, handshake failed).
    pub fn tls_handshake(&self, outcome: &str) {
        self.tls.add(self.tls.index(outcome));
    }
}

/// The position of `name` in `names`, or the last position.
fn index(names: &[&str], name: &str) -> usize {
    names.iter().position(|n| *n == name).unwrap_or(names.len() - 1)
}

/// A label and its values, in order.
pub type Label<const N: usize> = (&'static str, [&'static str; N]);

trait Values {
    fn index(&self, name: &str) -> usize;
}

impl<const N: usize> Values for [&'static str; N] {
    fn index(&self, name: &str) -> usize {
        index(self, name)
    }
}

/// Counters for the values of one label.
pub struct Counts<const N: usize> {
    /// The label's name and values.
    pub label: Label<N>,
    counts: [AtomicU64; N],
}

impl<const N: usize> Counts<N> {
    const fn new(name: &'static str, values: [&'static str; N]) -> Self {
        Counts { label: (name, values), counts: [const { AtomicU64::new(0) }; N] }
    }

    fn index(&self, name: &str) -> usize {
        self.label.1.index(name)
    }

    fn add(&self, i: usize) {
        self.counts[i.min(N - 1)].fetch_add(1, Relaxed);
    }

    /// Each value with its count.
    pub fn read(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.label.1.iter().zip(&self.counts).map(|(n, c)| (*n, c.load(Relaxed)))
    }
}

/// Counters for every pair of values of two labels.
pub struct Table<const R: usize, const C: usize> {
    /// The first label.
    pub rows: Label<R>,
    /// The second label.
    pub cols: Label<C>,
    counts: [[AtomicU64; C]; R],
}

impl<const R: usize, const C: usize> Table<R, C> {
    const fn new(rows: Label<R>, cols: Label<C>) -> Self {
        Table { rows, cols, counts: [const { [const { AtomicU64::new(0) }; C] }; R] }
    }

    fn add(&self, r: usize, c: usize) {
        self.counts[r.min(R - 1)][c.min(C - 1)].fetch_add(1, Relaxed);
    }

    /// Each pair of values with its count.
    pub fn read(&self) -> impl Iterator<Item = ([&'static str; 2], u64)> + '_ {
        self.rows
            .1
            .iter()
            .zip(&self.counts)
            .flat_map(move |(r, row)| self.cols.1.iter().zip(row).map(move |(c, n)| ([*r, *c], n.load(Relaxed))))
    }
}

/// A latency histogram of atomics (prometheus-client's own takes a lock
/// per observation). Buckets are [`SCAN_BUCKETS`]; the sum is kept in
/// microseconds.
pub struct Histogram {
    buckets: [AtomicU64; SCAN_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// A histogram's figures as Prometheus encodes them.
pub struct HistogramRead {
    /// Sum of the observations, seconds.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
    /// `(upper bound, observations in this bucket only)`, `+Inf` last.
    pub buckets: Vec<(f64, u64)>,
}

impl Histogram {
    const fn new() -> Histogram {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; SCAN_BUCKETS.len()],
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = SCAN_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.sum_micros.fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// The figures now, read without a lock: a scrape racing an
    /// observation may see it in the count (+Inf) but not yet in its
    /// bucket; the next scrape agrees again.
    pub fn read(&self) -> HistogramRead {
        // Buckets before the count: `observe` adds in that order, so the
        // buckets never add up to more than the count.
        let mut buckets: Vec<(f64, u64)> =
            SCAN_BUCKETS.iter().zip(&self.buckets).map(|(b, n)| (*b, n.load(Relaxed))).collect();
        let count = self.count.load(Relaxed);
        let finite: u64 = buckets.iter().map(|(_, n)| n).sum();
        // OpenMetrics wants the +Inf bucket written out (the classic
        // encoder adds it when it is missing, the OpenMetrics one does not).
        buckets.push((f64::INFINITY, count.saturating_sub(finite)));
        HistogramRead { buckets, count, sum: self.sum_micros.load(Relaxed) as f64 / 1e6 }
    }
}

/// The backends the scan counters know, in label order.
pub fn backends() -> [&'static str; 3] {
    BACKENDS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_label_values_count_as_other() {
        let e = Events::new();
        e.decided("http-download", "infected");
        e.decided("sftp-upload", "pass");
        e.scan_failed(ErrorKind::Oversize);
        let d: Vec<_> = e.decisions.read().filter(|(_, n)| *n > 0).collect();
        assert_eq!(d, vec![(["http-download", "infected"], 1), (["other", "pass"], 1)]);
        assert_eq!(e.scan_errors.read().find(|(k, _)| *k == "oversize"), Some(("oversize", 1)));
    }

    #[test]
    fn status_classes() {
        let e = Events::new();
        for s in [101, 200, 204, 304, 403, 503, 0, 999] {
            e.http_answered(s);
        }
        let got: Vec<u64> = e.http.read().map(|(_, n)| n).collect();
        assert_eq!(got, vec![1, 2, 1, 1, 1, 2]);
    }

    #[test]
    fn histogram_buckets_and_sum() {
        let h = Histogram::new();
        h.observe(Duration::from_micros(800));
        h.observe(Duration::from_millis(40));
        h.observe(Duration::from_secs(60));
        let r = h.read();
        assert_eq!(r.count, 3);
        assert!((r.sum - 60.0408).abs() < 1e-9, "{}", r.sum);
        assert_eq!(r.buckets[0], (0.001, 1));
        assert_eq!(r.buckets.iter().find(|(b, _)| *b == 0.05), Some(&(0.05, 1)));
        assert_eq!(r.buckets.last(), Some(&(f64::INFINITY, 1)), "60 s is only in +Inf");
        assert_eq!(r.buckets.iter().map(|(_, n)| n).sum::<u64>(), 3);
    }
}
