//! Kept-alive scanner connections. Each backend keeps the connections its
//! scans left open (clamd sessions, ICAP and API keep-alive), bounded in
//! number and age, and looks at each for EOF before using it again (unless
//! the backend trusts one idle only for a moment, [`Idle::trusting`]).

use std::{
    future::Future,
    sync::Mutex,
    time::{Duration, Instant},
};

use socket2::SockRef;

use crate::verdict::Verdict;

/// A connection that can wait idle.
pub trait Reusable {
    /// Its socket, to look at without reading.
    fn socket(&self) -> SockRef<'_>;

    /// Still open with nothing unread: a connection the scanner closed
    /// while it was idle shows EOF here (or data it should not have sent).
    fn is_usable(&self) -> bool {
        let mut b = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        matches!(self.socket().peek(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// Idle connections, newest last.
#[derive(Debug)]
pub struct Idle<C> {
    conns: Mutex<Vec<(C, Instant)>>,
    max: usize,
    max_age: Duration,
    /// Connections idle for less than this are used without a look.
    trust: Duration,
}

impl<C: Reusable> Idle<C> {
    /// At most `max` kept, none used once idle for `max_age`.
    pub fn new(max: usize, max_age: Duration) -> Idle<C> {
        Idle { conns: Mutex::new(Vec::new()), max, max_age, trust: Duration::ZERO }
    }

    /// Like [`Idle::new`], using a connection idle for less than `trust`
    /// without looking at it first (a system call per scan saved). For a
    /// backend that closes a connection only after seconds idle, and whose
    /// scans replay on a new connection when a kept one turns out closed.
    pub fn trusting(max: usize, max_age: Duration, trust: Duration) -> Idle<C> {
        Idle { trust, ..Idle::new(max, max_age) }
    }

    /// The newest usable idle connection; older or closed ones are dropped.
    pub fn take(&self) -> Option<C> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((conn, since)) = conns.pop() {
            let idle = since.elapsed();
            if idle < self.max_age && (idle < self.trust || conn.is_usable()) {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps `conn` for the next scan, unless `max` are kept already.
    pub fn put(&self, conn: C) {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if conns.len() < self.max {
            conns.push((conn, Instant::now()));
        }
    }

    /// An idle connection (`true`: reused), else a new one from `connect`.
    pub async fn take_or(&self, connect: impl Future<Output = Result<C, Verdict>>) -> Result<(C, bool), Verdict> {
        match self.take() {
            Some(c) => Ok((c, true)),
            None => connect.await.map(|c| (c, false)),
        }
    }
}
