//! Framing a body on its way out when it is not delivered whole with a
//! fresh Content-Length: trickled, streamed unscanned, or passed on after
//! an allowed limit.

use std::{io, time::Duration};

use super::{
    conn::Conn,
    head::{Framing, Head},
};
use crate::{
    spool::{Spool, send_held},
    wire::{LAST_CHUNK, push_chunk, push_chunk_header},
};

/// How a body is framed towards its receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Out {
    /// The sender's length, as the Content-Length.
    Length,
    /// Chunked (length unknown, HTTP/1.1 receiver).
    Chunked,
    /// Until close (length unknown, HTTP/1.0 receiver).
    Close,
}

impl Out {
    /// The framing for a body that came as `framing` going to a receiver
    /// speaking HTTP/1.`minor`, when its length is not known up front;
    /// adjusts `head` to match (chunked is sent as HTTP/1.1).
    pub fn for_body(framing: Framing, minor: u8, head: &mut Head) -> Out {
        let out = match framing {
            Framing::Length(_) => Out::Length,
            _ if minor >= 1 => Out::Chunked,
            _ => Out::Close,
        };
        if out == Out::Chunked {
            head.minor = 1;
        }
        out.apply(framing, head);
        out
    }

    /// The framing a body came with, kept (bodies passed on unscanned).
    pub fn as_sent(framing: Framing, head: &mut Head) -> Out {
        let out = match framing {
            Framing::Chunked => Out::Chunked,
            Framing::Close => Out::Close,
            Framing::Length(_) | Framing::None => Out::Length,
        };
        out.apply(framing, head);
        out
    }

    /// Sets `head`'s framing fields for a body that came as `framing`
    /// (a bodiless head keeps what it has).
    fn apply(self, framing: Framing, head: &mut Head) {
        match self {
            Out::Length => {
                head.remove("transfer-encoding");
                if let Framing::Length(n) = framing {
                    head.set("Content-Length", n.to_string());
                }
            }
            Out::Chunked => {
                head.remove("content-length");
                head.set("Transfer-Encoding", "chunked");
            }
            Out::Close => {
                head.remove("content-length");
                head.remove("transfer-encoding");
                head.set("Connection", "close");
            }
        }
    }

    /// Sends one piece in this framing.
    pub async fn piece(self, to: &mut Conn, data: &[u8], wait: Duration) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if self == Out::Chunked {
            let mut framed = Vec::with_capacity(data.len() + 16);
            push_chunk(&mut framed, data);
            return to.write_all(&framed, wait).await;
        }
        to.write_all(data, wait).await
    }

    /// Sends held bytes from `from` in this framing (one chunk when
    /// chunked); zero-copy where the stream allows.
    pub async fn held(self, to: &mut Conn, held: &Spool, from: u64, wait: Duration) -> io::Result<()> {
        let len = held.len().saturating_sub(from);
        if len == 0 {
            return Ok(());
        }
        if self == Out::Chunked {
            let mut size = Vec::with_capacity(18);
            push_chunk_header(&mut size, len);
            to.write_all(&size, wait).await?;
        }
        send_held(to.io.as_mut(), held, from, wait).await?;
        if self == Out::Chunked {
            to.write_all(b"\r\n", wait).await?;
        }
        Ok(())
    }

    /// Ends the body (the last chunk, when chunked).
    pub async fn end(self, to: &mut Conn, wait: Duration) -> io::Result<()> {
        if self == Out::Chunked { to.write_all(LAST_CHUNK, wait).await } else { Ok(()) }
    }
}
