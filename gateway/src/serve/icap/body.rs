//! An encapsulated body as it arrives: chunked (the one chunked decoder,
//! [`crate::wire::ChunkedDecoder`]), with the `ieof` extension of a
//! preview's last chunk noticed, each piece handed to the scan without a
//! copy.

use bytes::{Buf as _, Bytes};

use super::{Status, conn::Conn, request::Refused};
use crate::{scan::Session, wire::ChunkedDecoder};

/// How reading a chunked body ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Ended {
    /// Its last chunk arrived; `ieof`: nothing follows a preview.
    Whole {
        /// The last chunk said `ieof`.
        ieof: bool,
    },
    /// The scan ended before the body did ([`Session::early`]): the rest
    /// was not read.
    Early,
}

/// Notices `0; ieof` among the framing lines the decoder went through.
#[derive(Default)]
struct Framing {
    line: Vec<u8>,
    ieof: bool,
}

impl Framing {
    fn saw(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                let line = std::mem::take(&mut self.line);
                let mut parts = line.split(|&c| c == b';');
                if parts.next().is_some_and(|size| size.trim_ascii() == b"0") {
                    self.ieof |= parts.any(|ext| ext.trim_ascii().eq_ignore_ascii_case(b"ieof"));
                }
            } else if self.line.len() < 64 {
                self.line.push(b);
            }
        }
    }
}

/// What to do with each piece of the body.
pub(super) enum Sink<'a> {
    /// Scan it (and hold it when `hold`).
    Scan(&'a mut Session, bool),
    /// Drop it (a body whose fate is decided, read to keep the connection).
    Discard,
}

/// Reads one chunked body from `conn` into `sink`, up to its last chunk.
pub(super) async fn read(conn: &mut Conn<'_>, sink: &mut Sink<'_>) -> Result<Ended, Refused> {
    let mut dec = ChunkedDecoder::new(4096);
    let mut framing = Framing::default();
    loop {
        if conn.buf.is_empty() {
            conn.fill().await?;
        }
        let step = dec
            .step(&conn.buf)
            .map_err(|e| Refused { status: Status::BadRequest, why: format!("encapsulated body: {e}") })?;
        match step.data {
            Some(range) => {
                framing.saw(&conn.buf[..range.start]);
                let piece: Bytes = conn.buf.split_to(step.consumed).freeze().slice(range);
                if let Sink::Scan(session, hold) = sink {
                    if *hold {
                        session.hold(&piece);
                    }
                    session.scan(piece).await;
                    if session.early().is_some() {
                        return Ok(Ended::Early);
                    }
                }
            }
            None => {
                framing.saw(&conn.buf[..step.consumed]);
                conn.buf.advance(step.consumed);
            }
        }
        if dec.done() {
            return Ok(Ended::Whole { ieof: framing.ieof });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ieof_is_seen_only_on_the_last_chunk() {
        let mut f = Framing::default();
        f.saw(b"4; ieof\r\n");
        assert!(!f.ieof);
        f.saw(b"0; ie");
        f.saw(b"of\r\n\r\n");
        assert!(f.ieof);
        let mut f = Framing::default();
        f.saw(b"0\r\n\r\n");
        assert!(!f.ieof);
    }
}
