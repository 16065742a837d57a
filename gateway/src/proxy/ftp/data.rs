//! Moving one file over a data connection: scanned with trickling (for
//! every `trickle_every` received, `trickle_bytes` go on before the
//! verdict), or relayed (listings). The verdict goes through the shared
//! decision ([`crate::decide`]); the control session acts on the outcome.
//!
//! In ASCII mode (`TYPE A`) the wire carries CRLF line ends that a Unix
//! receiver stores as LF, and a signature may match one form and not the
//! other; both forms are scanned.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use crate::{
    decide::{BlockClass, Decision, Subject},
    net::reset_on_close,
    proxy::relay,
    scan::{ScanMeta, Scanner, Session},
    spool::send_held,
    verdict::{Outcome as ScanOutcome, Verdict},
};

/// How a transfer ended, for the control session's reply.
#[derive(Debug)]
pub enum Outcome {
    /// Delivered (clean, or allowed by policy) or relayed unscanned.
    Delivered {
        /// Bytes.
        bytes: u64,
        /// The decision's note (`clean`, `unscanned (…) …`).
        note: String,
        /// Bytes that went on before the verdict.
        trickled: u64,
    },
    /// Refused; the receiver's connection was closed after the trickle.
    Blocked {
        /// Why.
        reason: String,
        /// Infected, policy or scanner trouble.
        class: BlockClass,
        /// Threat names, if infected.
        threats: Vec<String>,
        /// Bytes sent before the verdict.
        trickled: u64,
        /// Bytes seen.
        bytes: u64,
    },
    /// The data connection failed or never came.
    Failed(String),
}

/// Trickle settings.
#[derive(Clone, Copy, Debug)]
pub struct Trickle {
    /// For every this many bytes received …
    pub every: u64,
    /// … this many go on before the verdict.
    pub bytes: u64,
}

/// One file to scan on its way.
pub struct Scanned {
    /// The scanner.
    pub scanner: Arc<Scanner>,
    /// The decision's subject.
    pub subject: Subject,
    /// The scan metadata.
    pub meta: ScanMeta,
    /// `TYPE A` in force.
    pub ascii: bool,
    /// Trickling.
    pub trickle: Trickle,
    /// Bound on each stall of either connection.
    pub stall: Duration,
}

/// CRLF → LF across piece boundaries (what a Unix receiver stores).
#[derive(Default)]
struct Unix {
    cr: bool,
}

impl Unix {
    fn convert(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + 1);
        for &b in data {
            if self.cr && b != b'\n' {
                out.push(b'\r');
            }
            self.cr = b == b'\r';
            if !self.cr {
                out.push(b);
            }
        }
        out
    }
}

/// Moves one file from `from` to `to`, scanning it; `to` gets the trickle
/// before the verdict and the rest after a clean one. A blocked file's
/// receiving connection is closed after the trickle, not reset: a client
/// reset on the data socket fails there and never shows the `505`, and a
/// server (pyftpdlib) that sees the reset before it has taken the
/// connection sends no final reply at all, leaving the session hanging.
/// The server therefore stores the trickled fragment as if complete, and
/// the control session deletes it.
pub async fn scanned(mut from: TcpStream, mut to: TcpStream, s: Scanned) -> Outcome {
    let mut session = s.scanner.start(s.meta.clone(), true);
    let mut unix = s.ascii.then(|| (s.scanner.start(s.meta.clone(), false), Unix::default()));
    let mut buf = vec![0u8; 256 * 1024];
    let mut sent: u64 = 0;
    let mut received: u64 = 0;
    loop {
        let n = match tokio::time::timeout(s.stall, from.read(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return failed(&to, format!("reading the data connection: {e}")),
            Err(_) => return failed(&to, "the data connection stalled".into()),
        };
        if n == 0 {
            break;
        }
        received += n as u64;
        session.feed(&buf[..n]).await;
        if let Some((lf, conv)) = unix.as_mut() {
            lf.scan(Bytes::from(conv.convert(&buf[..n]))).await;
        }
        if let Some(v) = session.early().cloned() {
            return stopped(from, to, session, &s, v, sent).await;
        }
        if let Err(why) = trickle(&mut to, &session, received, s.trickle, &mut sent, &mut buf).await {
            return Outcome::Failed(why);
        }
    }
    let done = session.finish().await;
    let mut outcome = done.outcome;
    if let Some((lf, _)) = unix {
        outcome = worse(outcome, lf.finish().await.outcome);
    }
    let decision = s.scanner.decider().decide(&s.subject, &outcome, sent);
    match (decision, done.body) {
        (Decision::Pass { note }, Some(held)) => {
            if let Err(e) = send_held(&mut to, &held, sent, s.stall).await {
                return failed(&to, format!("delivering the file: {e}"));
            }
            let _ = to.shutdown().await;
            Outcome::Delivered { bytes: held.len(), note, trickled: sent }
        }
        (Decision::Pass { .. }, None) => failed(&to, "the file could not be held".into()),
        (Decision::Block { reason, class, threats, .. }, _) => {
            let _ = to.shutdown().await;
            Outcome::Blocked { reason, class, threats, trickled: sent, bytes: outcome.bytes }
        }
    }
}

/// The receiver's due trickle: `bytes` for every `every` received.
async fn trickle(
    to: &mut TcpStream,
    session: &Session,
    received: u64,
    t: Trickle,
    sent: &mut u64,
    buf: &mut [u8],
) -> Result<(), String> {
    use crate::scan::Held as _;
    let allowed = received.checked_div(t.every).map_or(0, |w| w * t.bytes);
    while *sent < allowed {
        let want = ((allowed - *sent) as usize).min(buf.len());
        let got = session.read_held(*sent, &mut buf[..want]);
        if got == 0 {
            break;
        }
        if to.write_all(&buf[..got]).await.is_err() {
            return Err("the receiver went away".into());
        }
        *sent += got as u64;
    }
    Ok(())
}

/// The scan cannot take the file further (too large, not holdable): the
/// decision comes now. Allowed → what is held, then the rest unscanned.
async fn stopped(from: TcpStream, mut to: TcpStream, session: Session, s: &Scanned, v: Verdict, sent: u64) -> Outcome {
    let outcome = ScanOutcome::early(v, session.scanned(), false);
    let decision = s.scanner.decider().decide(&s.subject, &outcome, sent);
    let held = session.into_held();
    match (decision, held) {
        (Decision::Pass { note }, Some(held)) => {
            if let Err(e) = send_held(&mut to, &held, sent, s.stall).await {
                return failed(&to, format!("delivering the file: {e}"));
            }
            let counts = relay::Counts::default();
            let end = relay::relay(&from, &to, 1 << 20, &counts).await;
            let bytes = held.len() + counts.up.load(std::sync::atomic::Ordering::Relaxed);
            Outcome::Delivered { bytes, note: format!("{note}, relayed ({end})"), trickled: sent }
        }
        (Decision::Pass { .. }, None) => failed(&to, "the file could not be held".into()),
        (Decision::Block { reason, class, threats, .. }, _) => {
            let _ = to.shutdown().await;
            Outcome::Blocked { reason, class, threats, trickled: sent, bytes: outcome.bytes }
        }
    }
}

/// The worse of two scans of the same file: infected beats error beats
/// clean.
fn worse(a: ScanOutcome, b: ScanOutcome) -> ScanOutcome {
    let rank = |v: &Verdict| match v {
        Verdict::Infected { .. } => 3,
        Verdict::Modified { .. } => 2,
        Verdict::Error { .. } => 1,
        Verdict::Clean => 0,
    };
    if rank(&b.verdict) > rank(&a.verdict) { ScanOutcome { verdict: b.verdict, ..a } } else { a }
}

fn failed(to: &TcpStream, why: String) -> Outcome {
    reset_on_close(to);
    Outcome::Failed(why)
}

/// Relays a listing (or anything not scanned) byte for byte.
pub async fn relayed(from: TcpStream, to: TcpStream) -> Outcome {
    let counts = relay::Counts::default();
    let end = relay::relay(&from, &to, 1 << 20, &counts).await;
    let bytes =
        counts.up.load(std::sync::atomic::Ordering::Relaxed) + counts.down.load(std::sync::atomic::Ordering::Relaxed);
    Outcome::Delivered { bytes, note: format!("unscanned ({end})"), trickled: 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf_becomes_lf_across_pieces() {
        let mut u = Unix::default();
        let mut out = u.convert(b"a\r\nb\r");
        out.extend(u.convert(b"\nc\rd\r"));
        out.extend(u.convert(b"e"));
        assert_eq!(out, b"a\nb\nc\rd\re");
    }
}
