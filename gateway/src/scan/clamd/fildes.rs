//! Small bodies to a local clamd as a file descriptor (FILDES): the body is
//! written to a memfd and the descriptor passed over the Unix socket, so
//! clamd scans it where it lies instead of receiving a stream and writing
//! it to a temporary file first (docs/BENCHMARKS.md has the figures). The
//! small-object rate is bounded by clamd's CPU, so what clamd saves is
//! the rate gained.
//!
//! Only bodies that end within [`GATHER`] bytes go this way: they are
//! gathered whole first (clamd could not begin before their end anyway);
//! a longer body is rewound and streamed with INSTREAM as it arrives.
//!
//! The memfds are kept and rewritten ([`Memfds`]): creating one per body
//! cost the gateway more than the stream it replaced.

use std::{
    io::IoSlice,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    sync::Mutex,
    time::Duration,
};

use bytes::Bytes;
use nix::sys::{
    memfd::{MFdFlags, memfd_create},
    socket::{ControlMessage, MsgFlags, sendmsg},
};
use tokio::{
    io::{AsyncWriteExt as _, Interest},
    net::UnixStream,
    time::timeout,
};

use super::instream::{Attempt, answer};
use crate::{
    scan::backend::Body,
    verdict::{ErrorKind, Verdict},
};

/// The largest body sent as a descriptor: the small objects whose rate
/// clamd's per-scan cost bounds, well within what [`Body`] keeps for a
/// rewind (a longer one is streamed from its start). Kept small because
/// clamd checks StreamMaxLength only on streams: a FILDES body past it
/// would meet MaxFileSize alone, and clamd answers OK for a file it skips
/// as too large. No sane MaxFileSize is below 64 KiB.
pub(super) const GATHER: usize = 64 * 1024;

/// The whole body, as the chunks [`Body`] keeps anyway (nothing is
/// copied), if it ends within [`GATHER`] bytes; `None` for a longer one.
/// The caller rewinds the body either way.
pub(super) async fn gather(body: &mut Body) -> Option<Vec<Bytes>> {
    let (mut chunks, mut len) = (Vec::new(), 0);
    while let Some(chunk) = body.recv().await {
        len += chunk.len();
        if len > GATHER {
            return None;
        }
        chunks.push(chunk);
    }
    Some(chunks)
}

/// A memfd and the length of what it holds.
#[derive(Debug)]
pub(super) struct Memfd {
    fd: OwnedFd,
    len: usize,
}

/// Memfds free for the next body: one per scan in flight at most, each at
/// most [`GATHER`] bytes, kept up to `max`.
#[derive(Debug)]
pub(super) struct Memfds {
    free: Mutex<Vec<Memfd>>,
    max: usize,
}

impl Memfds {
    pub(super) fn new(max: usize) -> Memfds {
        Memfds { free: Mutex::new(Vec::new()), max }
    }

    /// A memfd holding exactly the bytes of `chunks`, in order.
    pub(super) fn fill(&self, chunks: &[Bytes]) -> std::io::Result<Memfd> {
        let kept = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut m = match kept {
            Some(m) => m,
            None => Memfd { fd: memfd_create("gateway-scan", MFdFlags::MFD_CLOEXEC)?, len: 0 },
        };
        let len = chunks.iter().map(Bytes::len).sum();
        let mut at = 0;
        while at < len {
            at += nix::sys::uio::pwritev(m.fd.as_fd(), &unwritten(chunks, at), at as i64)?;
        }
        if m.len > len {
            // What the last body left past this one's end must not be scanned.
            nix::unistd::ftruncate(m.fd.as_fd(), len as i64)?;
        }
        m.len = len;
        Ok(m)
    }

    /// Takes back a memfd clamd is done with: it answered with a verdict
    /// (after an error it may still be reading).
    pub(super) fn give(&self, m: Memfd) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < self.max {
            free.push(m);
        }
    }
}

/// Slices one vectored write takes at most (Linux's IOV_MAX): a body sent
/// in one-byte chunks takes several writes.
const IOV_MAX: usize = 1024;

/// The bytes of `chunks` from offset `at` on, for one vectored write.
fn unwritten(chunks: &[Bytes], mut at: usize) -> Vec<IoSlice<'_>> {
    let mut out = Vec::with_capacity(chunks.len().min(IOV_MAX));
    for c in chunks {
        if at >= c.len() {
            at -= c.len();
            continue;
        }
        out.push(IoSlice::new(&c[at..]));
        at = 0;
        if out.len() == IOV_MAX {
            break;
        }
    }
    out
}

/// One FILDES scan of `memfd` on `s` (opening the session first when
/// `new`).
pub(super) async fn fildes(s: &mut UnixStream, new: bool, memfd: &Memfd, t: Duration) -> Attempt {
    // clamd shares the descriptor's offset: one that read the last body
    // (or this one, before a replay) with read(2) left it at the end.
    if let Err(e) = nix::unistd::lseek(&memfd.fd, 0, nix::unistd::Whence::SeekSet) {
        return Attempt::Unanswered(Verdict::error(ErrorKind::Io, format!("rewinding a memfd for clamd: {e}")));
    }
    let command: &[u8] = if new { b"zIDSESSION\0zFILDES\0" } else { b"zFILDES\0" };
    let fds = [memfd.fd.as_raw_fd()];
    let raw = s.as_raw_fd();
    // clamd takes a descriptor only after it has read the command: on a
    // message of its own, with one byte (a descriptor on the command's
    // bytes is a protocol error).
    let send = || {
        let cmsg = [ControlMessage::ScmRights(&fds)];
        sendmsg::<()>(raw, &[IoSlice::new(b"\0")], &cmsg, MsgFlags::MSG_NOSIGNAL, None).map_err(std::io::Error::from)
    };
    let sent = async {
        timeout(t, s.write_all(command)).await??;
        loop {
            match s.try_io(Interest::WRITABLE, send) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => timeout(t, s.writable()).await??,
                Err(e) => return Err(e),
            }
        }
    }
    .await;
    answer(s, sent, t).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written in pieces (short writes, more chunks than one write takes),
    /// the memfd holds the body exactly, and a shorter body after a longer
    /// one leaves nothing of it behind.
    #[test]
    fn a_kept_memfd_holds_exactly_the_last_body() {
        use std::io::Read as _;
        let read = |m: &Memfd| {
            let mut f = std::fs::File::from(m.fd.try_clone().unwrap());
            let mut out = Vec::new();
            nix::unistd::lseek(&m.fd, 0, nix::unistd::Whence::SeekSet).unwrap();
            f.read_to_end(&mut out).unwrap();
            out
        };
        let at =
            |chunks: &[Bytes], at: usize| unwritten(chunks, at).iter().flat_map(|s| s.to_vec()).collect::<Vec<u8>>();
        let chunks = [Bytes::from_static(b"abc"), Bytes::from_static(b"de"), Bytes::from_static(b"f")];
        assert_eq!(at(&chunks, 0), b"abcdef");
        assert_eq!(at(&chunks, 4), b"ef");
        assert_eq!(at(&chunks, 6), b"");
        let memfds = Memfds::new(1);
        let many: Vec<Bytes> = (0..3000u32).map(|i| Bytes::from(vec![(i % 251) as u8])).collect();
        let m = memfds.fill(&many).unwrap();
        assert_eq!(read(&m), many.iter().flat_map(|b| b.to_vec()).collect::<Vec<u8>>());
        memfds.give(m);
        let m = memfds.fill(&chunks).unwrap();
        assert_eq!(read(&m), b"abcdef");
    }
}
