//! Receiving a body for the scanner, the same for uploads and downloads:
//! each piece is held as it came (for delivery) and, decoded where it has
//! a Content-Encoding, streamed to the scanner; the decoder is pulled one
//! bounded piece at a time, so a full scan queue stops the reading. A
//! download may trickle meanwhile.

use std::time::Duration;

use super::{
    body::{BodyError, BodyReader},
    conn::Conn,
    decode::Decoder,
    trickle::Trickle,
};
use crate::scan::Session;

/// How receiving ended.
pub(super) enum Received {
    /// The body was read to its end.
    Whole,
    /// The session cannot take more ([`Session::early`] says why); the rest
    /// of the body was not read.
    Stopped,
}

/// Receiving failed on one side or the other.
pub(super) enum Failed {
    /// The sender's body.
    Body(BodyError),
    /// Trickling to the client.
    Client(std::io::Error),
}

/// Reads the body from `src` into `session` until it ends or the session
/// stops taking it; ticks `trickle` (with the client's connection) when due.
pub(super) async fn receive(
    src: &mut Conn,
    reader: &mut BodyReader,
    decoder: &mut Option<Decoder>,
    session: &mut Session,
    mut trickle: Option<(&mut Trickle, &mut Conn)>,
    wait: Duration,
) -> Result<Received, Failed> {
    loop {
        let due = trickle.as_ref().map(|(t, _)| t.due());
        let piece = tokio::select! {
            r = reader.next(src) => r.map_err(Failed::Body)?,
            () = sleep_until(due) => {
                if let Some((t, client)) = trickle.as_mut() {
                    t.tick(client, &*session, wait).await.map_err(Failed::Client)?;
                }
                continue;
            }
        };
        let Some(piece) = piece else { return Ok(Received::Whole) };
        take(piece, decoder, session).await;
        if session.early().is_some() {
            return Ok(Received::Stopped);
        }
    }
}

/// Holds a piece and scans it, decoded when there is a decoder; a decoding
/// failure or limit ends the scan there (what was scanned still counts).
async fn take(piece: Vec<u8>, decoder: &mut Option<Decoder>, session: &mut Session) {
    session.hold(&piece);
    let Some(d) = decoder.as_mut() else {
        session.scan(piece.into()).await;
        return;
    };
    d.push(piece);
    loop {
        match d.pull() {
            Ok(Some(out)) => session.scan(out.into()).await,
            Ok(None) => return,
            Err(e) => {
                session.scan_only_so_far(e.verdict());
                *decoder = None;
                return;
            }
        }
    }
}

/// Sleeps until `at`, or forever.
pub(super) async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
