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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use tokio::sync::{Notify, mpsc};

    use super::*;
    use crate::scan::Direction;

    /// FAULT INJECTOR (a real clamd cannot be told to fail one scan on
    /// cue): a member that reads the whole body, remembers it, and answers
    /// clean or fails with `fail`; `hold` keeps it busy until notified.
    struct Fake {
        name: &'static str,
        fail: Option<ErrorKind>,
        seen: Mutex<Vec<usize>>,
        hold: Option<Arc<Notify>>,
    }

    impl Fake {
        fn new(name: &'static str, fail: Option<ErrorKind>) -> Arc<Fake> {
            Arc::new(Fake { name, fail, seen: Mutex::default(), hold: None })
        }
    }

    impl Backend for Arc<Fake> {
        fn describe(&self) -> String {
            self.name.into()
        }

        fn health(&self) -> BoxFuture<'_, Result<String, String>> {
            Box::pin(async { Ok(self.name.to_string()) })
        }

        fn scan<'a>(&'a self, _meta: &'a ScanMeta, body: &'a mut Body) -> BoxFuture<'a, Verdict> {
            Box::pin(async move {
                if let Some(n) = &self.hold {
                    n.notified().await;
                }
                let mut n = 0;
                while let Some(c) = body.recv().await {
                    n += c.len();
                }
                self.seen.lock().unwrap().push(n);
                match self.fail {
                    Some(kind) => Verdict::error(kind, format!("{} failed", self.name)),
                    None => Verdict::Clean,
                }
            })
        }
    }

    fn pool(members: &[&Arc<Fake>], failures: u32) -> Pool {
        let settings = PoolSettings {
            health_interval: Duration::ZERO,
            health_timeout: Duration::from_secs(1),
            failures_before_suspend: failures,
            suspend: Duration::from_secs(60),
        };
        Pool::new(members.iter().map(|m| Box::new(Arc::clone(m)) as Box<dyn Backend>).collect(), settings)
    }

    async fn scan(pool: &Pool, sizes: &[usize]) -> Verdict {
        let (tx, rx) = mpsc::channel(64);
        for &s in sizes {
            tx.send(Bytes::from(vec![7u8; s])).await.unwrap();
        }
        drop(tx);
        pool.scan(&ScanMeta::named("x", Direction::Download), &mut Body::new(rx)).await
    }

    #[tokio::test]
    async fn a_failed_member_is_marked_down_and_the_next_gets_the_whole_body() {
        let (dead, ok) = (Fake::new("dead", Some(ErrorKind::Unavailable)), Fake::new("ok", None));
        let p = pool(&[&dead, &ok], 3);
        assert_eq!(scan(&p, &[1000, 2000, 3000]).await, Verdict::Clean);
        assert_eq!(*ok.seen.lock().unwrap(), [6000]);
        let st = p.status();
        assert_eq!((st[0].state, st[0].failures, st[1].scans), ("down", 1, 1));
        // Down, it is asked last: the next scan goes straight to the other.
        assert_eq!(scan(&p, &[10]).await, Verdict::Clean);
        assert_eq!(dead.seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_body_past_the_kept_mib_is_not_given_again() {
        let (bad, ok) = (Fake::new("bad", Some(ErrorKind::Io)), Fake::new("ok", None));
        let p = pool(&[&bad, &ok], 3);
        let v = scan(&p, &[REPLAY_TEST, REPLAY_TEST]).await;
        assert_eq!(v.error_kind(), Some(ErrorKind::Io), "{v:?}");
        assert!(ok.seen.lock().unwrap().is_empty(), "a partial body must not be scanned as whole elsewhere");
    }

    const REPLAY_TEST: usize = crate::scan::backend::REPLAY / 2 + 1;

    #[tokio::test]
    async fn failing_scans_in_a_row_suspend_a_member() {
        let flaky = Fake::new("flaky", Some(ErrorKind::Timeout));
        let p = pool(&[&flaky], 2);
        scan(&p, &[1]).await;
        assert_eq!(p.status()[0].state, "up");
        scan(&p, &[1]).await;
        assert_eq!(p.status()[0].state, "suspended");
        // Alone, it is still asked rather than the scan refused untried.
        assert_eq!(scan(&p, &[1]).await.error_kind(), Some(ErrorKind::Timeout));
        assert_eq!(flaky.seen.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn the_member_with_fewest_scans_in_flight_is_chosen() {
        let gate = Arc::new(Notify::new());
        let busy = Arc::new(Fake { name: "busy", fail: None, seen: Mutex::default(), hold: Some(gate.clone()) });
        let idle = Fake::new("idle", None);
        let p = Arc::new(pool(&[&busy, &idle], 3));
        let first = tokio::spawn({
            let p = p.clone();
            async move { scan(&p, &[5]).await }
        });
        while p.status()[0].in_flight == 0 {
            tokio::task::yield_now().await;
        }
        for _ in 0..3 {
            assert_eq!(scan(&p, &[5]).await, Verdict::Clean);
        }
        assert_eq!(idle.seen.lock().unwrap().len(), 3, "the busy member got none of them");
        gate.notify_one();
        assert_eq!(first.await.unwrap(), Verdict::Clean);
    }
}
