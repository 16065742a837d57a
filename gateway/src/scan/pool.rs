//! A pool of scanners of one kind (`[scan] clamd = [...]`, `icap = [...]`,
//! `[scan.api] url = [...]`): each scan goes to the member with the fewest
//! scans in flight; a member that fails before the body is committed
//! (see [`Body::rewind`]) is left for the next one; members are checked on
//! an interval (clamd PING and VERSION, ICAP OPTIONS, …), and a failing one
//! is taken out and brought back.
//!
//! A member is *down* when it could not be reached (by a scan or a health
//! check) until a health check finds it again, or — with health checks off
//! — until `suspend` has passed; it is *suspended* for `suspend` after
//! `failures_before_suspend` failed scans in a row (timeouts, garbage).
//! Members that are down or suspended are still asked when no other one is
//! left: a pool never refuses a scan without trying. A pool of one member
//! behaves like that member alone.

use std::{
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{
    ScanMeta,
    backend::{Backend, Body, BoxFuture},
};
use crate::verdict::{ErrorKind, Verdict};

/// How a pool treats its members.
#[derive(Clone, Debug)]
pub struct PoolSettings {
    /// Time between health checks (zero: none).
    pub health_interval: Duration,
    /// Bound on one health check.
    pub health_timeout: Duration,
    /// Failed scans in a row that suspend a member …
    pub failures_before_suspend: u32,
    /// … for this long.
    pub suspend: Duration,
}

/// A member's state, as `gateway stats` shows it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct MemberStatus {
    /// What and where (`clamd at unix:/run/clamav/clamd.ctl`).
    pub name: String,
    /// `up`, `down` (unreachable) or `suspended` (failing).
    pub state: &'static str,
    /// Scans in flight now, waiting for a slot included.
    pub in_flight: usize,
    /// Scans it answered.
    pub scans: u64,
    /// Scans it failed.
    pub failures: u64,
    /// Its last health answer (engine and signature versions, ISTag).
    pub health: Option<String>,
    /// Why it last failed.
    pub last_error: Option<String>,
}

#[derive(Default)]
struct State {
    /// Failed scans in a row.
    consecutive: u32,
    suspended_until: Option<Instant>,
    /// Since when it could not be reached.
    down: Option<Instant>,
    health: Option<String>,
    last_error: Option<String>,
}

struct Member {
    backend: Box<dyn Backend>,
    in_flight: AtomicUsize,
    scans: AtomicU64,
    failures: AtomicU64,
    state: Mutex<State>,
}

struct Inner {
    members: Vec<Member>,
    settings: PoolSettings,
    /// Rotates the starting point among equally loaded members.
    turn: AtomicUsize,
}

/// The pool: a [`Backend`] made of backends.
pub struct Pool {
    inner: Arc<Inner>,
}

/// Counts a scan in flight on a member for as long as it lives.
struct InFlight<'a>(&'a Member);

impl<'a> InFlight<'a> {
    fn start(m: &'a Member) -> InFlight<'a> {
        m.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(m)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether a verdict is the member's failure (another may be asked), and
/// whether it means the member is unreachable.
fn failure(v: &Verdict) -> Option<bool> {
    match v {
        Verdict::Error { kind: ErrorKind::Unavailable, .. } => Some(true),
        Verdict::Error { kind: ErrorKind::Timeout | ErrorKind::Protocol | ErrorKind::Io, .. } => Some(false),
        // Busy: the body already waited its queue_timeout; oversize and
        // the rest are the body's, not the member's.
        _ => None,
    }
}

fn message(v: &Verdict) -> String {
    match v {
        Verdict::Error { message, .. } => message.clone(),
        other => format!("{other:?}"),
    }
}

impl Member {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn usable(&self, s: &PoolSettings, now: Instant) -> bool {
        let st = self.lock();
        let suspended = st.suspended_until.is_some_and(|t| now < t);
        let down = st.down.is_some_and(|since| !s.health_interval.is_zero() || now < since + s.suspend);
        !suspended && !down
    }

    fn answered(&self) {
        self.scans.fetch_add(1, Ordering::Relaxed);
        let mut st = self.lock();
        st.consecutive = 0;
        if st.down.take().is_some() {
            tracing::info!("scanner {} answers again", self.backend.describe());
        }
    }

    fn failed(&self, v: &Verdict, unreachable: bool, s: &PoolSettings) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut st = self.lock();
        st.last_error = Some(message(v));
        st.consecutive += 1;
        if unreachable && st.down.is_none() {
            st.down = Some(Instant::now());
            tracing::warn!("scanner {} is down: {}", self.backend.describe(), message(v));
        } else if !unreachable && st.consecutive >= s.failures_before_suspend {
            st.consecutive = 0;
            st.suspended_until = Some(Instant::now() + s.suspend);
            tracing::warn!(
                "scanner {} suspended for {:?} after {} failed scans in a row: {}",
                self.backend.describe(),
                s.suspend,
                s.failures_before_suspend,
                message(v)
            );
        }
    }

    fn checked(&self, result: Result<String, String>) {
        let mut st = self.lock();
        match result {
            Ok(h) => {
                if st.down.take().is_some() {
                    tracing::info!("scanner {} is back: {h}", self.backend.describe());
                }
                st.health = Some(h);
            }
            Err(e) => {
                if st.down.is_none() {
                    tracing::warn!("scanner {} is down: {e}", self.backend.describe());
                    st.down = Some(Instant::now());
                }
                st.last_error = Some(e);
            }
        }
    }

    fn status(&self, s: &PoolSettings) -> MemberStatus {
        let now = Instant::now();
        let st = self.lock();
        let state = if st.suspended_until.is_some_and(|t| now < t) {
            "suspended"
        } else if st.down.is_some_and(|since| !s.health_interval.is_zero() || now < since + s.suspend) {
            "down"
        } else {
            "up"
        };
        MemberStatus {
            name: self.backend.describe(),
            state,
            in_flight: self.in_flight.load(Ordering::Relaxed),
            scans: self.scans.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            health: st.health.clone(),
            last_error: st.last_error.clone(),
        }
    }
}

impl Pool {
    /// A pool of `members`. Inside a tokio runtime, health checks start at
    /// once and run every `health_interval` for as long as the pool lives.
    pub fn new(members: Vec<Box<dyn Backend>>, settings: PoolSettings) -> Pool {
        let members = members
            .into_iter()
            .map(|backend| Member {
                backend,
                in_flight: AtomicUsize::new(0),
                scans: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                state: Mutex::default(),
            })
            .collect();
        let inner = Arc::new(Inner { members, settings, turn: AtomicUsize::new(0) });
        if !inner.settings.health_interval.is_zero()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(health_checks(Arc::downgrade(&inner)));
        }
        Pool { inner }
    }

    /// Every member's state.
    pub fn status(&self) -> Vec<MemberStatus> {
        self.inner.members.iter().map(|m| m.status(&self.inner.settings)).collect()
    }

    /// Checks every member now; returns the results in member order.
    pub async fn check(&self) -> Vec<Result<String, String>> {
        check_all(&self.inner).await
    }

    /// What the members said of themselves at their last health check
    /// (engine and signature versions): changes when signatures change.
    pub fn signatures(&self) -> Vec<String> {
        self.inner.members.iter().map(|m| m.lock().health.clone().unwrap_or_default()).collect()
    }

    /// The order in which members are asked: usable ones by scans in
    /// flight (ties taking turns), then the others as a last resort.
    fn order(&self) -> Vec<usize> {
        let inner = &self.inner;
        let n = inner.members.len();
        let start = inner.turn.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut order: Vec<(bool, usize, usize, usize)> = (0..n)
            .map(|i| {
                let m = &inner.members[i];
                let usable = m.usable(&inner.settings, now);
                (!usable, m.in_flight.load(Ordering::Relaxed), (i + n - start % n) % n, i)
            })
            .collect();
        order.sort_unstable();
        order.into_iter().map(|(_, _, _, i)| i).collect()
    }

    async fn scan_pooled(&self, meta: &ScanMeta, body: &mut Body) -> Verdict {
        let mut last = None;
        for i in self.order() {
            let m = &self.inner.members[i];
            let verdict = {
                let _counted = InFlight::start(m);
                m.backend.scan(meta, body).await
            };
            let Some(unreachable) = failure(&verdict) else {
                if !matches!(verdict, Verdict::Error { .. }) {
                    m.answered();
                }
                return verdict;
            };
            m.failed(&verdict, unreachable, &self.inner.settings);
            if !body.rewind() {
                return verdict;
            }
            if self.inner.members.len() > 1 {
                tracing::warn!("scanner {} failed ({}); asking another", m.backend.describe(), message(&verdict));
            }
            last = Some(verdict);
        }
        last.unwrap_or_else(|| Verdict::error(ErrorKind::Unavailable, "no scanner configured"))
    }
}

async fn check_all(inner: &Inner) -> Vec<Result<String, String>> {
    let t = inner.settings.health_timeout;
    let checks = inner.members.iter().map(|m| async move {
        let r = match tokio::time::timeout(t, m.backend.health()).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer to the health check within {t:?}")),
        };
        m.checked(r.clone());
        r
    });
    futures::future::join_all(checks).await
}

async fn health_checks(pool: Weak<Inner>) {
    loop {
        let Some(inner) = pool.upgrade() else { return };
        check_all(&inner).await;
        let every = inner.settings.health_interval;
        drop(inner);
        tokio::time::sleep(every).await;
    }
}

impl Backend for Pool {
    fn describe(&self) -> String {
        match self.inner.members.as_slice() {
            [one] => one.backend.describe(),
            all => {
                let names: Vec<String> = all.iter().map(|m| m.backend.describe()).collect();
                format!("pool of {}: {}", all.len(), names.join(", "))
            }
        }
    }

    fn health(&self) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async {
            let results = self.check().await;
            let up = results.iter().filter(|r| r.is_ok()).count();
            let lines: Vec<String> = self
                .inner
                .members
                .iter()
                .zip(&results)
                .map(|(m, r)| match r {
                    Ok(h) => format!("{}: {h}", m.backend.describe()),
                    Err(e) => format!("{}: DOWN ({e})", m.backend.describe()),
                })
                .collect();
            let text = if results.len() == 1 {
                results[0].clone().map_err(|e| e.to_string())
            } else {
                Ok(format!("{up}/{} up; {}", results.len(), lines.join("; ")))
            };
            if up == 0 { Err(text.unwrap_or_else(|e| e)) } else { text }
        })
    }

    fn scan<'a>(&'a self, meta: &'a ScanMeta, body: &'a mut Body) -> BoxFuture<'a, Verdict> {
        Box::pin(self.scan_pooled(meta, body))
    }
}
