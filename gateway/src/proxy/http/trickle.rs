//! Trickling (HAVP's approach): when a download's verdict has not come
//! `trickle_after` after its head arrived, the head goes out, then
//! `trickle_bytes` of body each interval, read back from what the session
//! holds, so that the client does not time out. An infected verdict then
//! resets the connection: the client is left with a fragment it can tell
//! is broken, never a file that looks complete.

use std::{io, time::Duration};

use tokio::time::Instant;

use super::{
    conn::Conn,
    head::{Framing, Head},
    outgoing::Out,
};
use crate::scan::Held;

/// Trickling state of one download.
pub(super) struct Trickle {
    every: Duration,
    bytes: usize,
    next: Instant,
    /// The head to send at the first tick; `None` once sent.
    head: Option<Vec<u8>>,
    out: Out,
    sent: u64,
    written: u64,
}

impl Trickle {
    /// Trickling for a response `head` framed as `framing` to a client
    /// speaking HTTP/1.`minor`.
    pub fn new(every: Duration, bytes: usize, head: &Head, framing: Framing, minor: u8) -> Trickle {
        let mut head = head.clone();
        let out = Out::for_body(framing, minor, &mut head);
        Trickle {
            every,
            bytes,
            next: Instant::now() + every,
            head: Some(head.response_bytes()),
            out,
            sent: 0,
            written: 0,
        }
    }

    /// When the next tick is due.
    pub fn due(&self) -> Instant {
        self.next
    }

    /// Whether the head went out.
    pub fn started(&self) -> bool {
        self.head.is_none()
    }

    /// Body bytes sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Bytes written to the client, head included.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// How the body is framed towards the client.
    pub fn out(&self) -> Out {
        self.out
    }

    /// Sends the head (the first time) and the next trickle of body.
    pub async fn tick(&mut self, client: &mut Conn, held: &dyn Held, wait: Duration) -> io::Result<()> {
        if let Some(head) = self.head.take() {
            client.write_all(&head, wait).await?;
            self.written += head.len() as u64;
        }
        let mut buf = vec![0u8; self.bytes];
        let n = held.read_held(self.sent, &mut buf);
        if n > 0 {
            self.out.piece(client, &buf[..n], wait).await?;
            self.sent += n as u64;
            self.written += n as u64;
        }
        self.next = Instant::now() + self.every;
        Ok(())
    }
}
