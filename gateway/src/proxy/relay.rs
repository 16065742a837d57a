//! Byte relay between two TCP sockets, in the kernel with splice(2).
//!
//! Each direction moves data socket → pipe → socket without copying it
//! through userspace; a 64 KiB userspace buffer reaches about half of
//! direct forwarding on this kind of host, splice gets close to it.
//! Half-close is honoured: EOF in one direction becomes a FIN (shutdown of
//! writes) towards the other side while the other direction goes on.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::atomic::{AtomicU64, Ordering},
};

use tokio::{io::Interest, net::TcpStream, time::Duration};

use crate::spool::Spool;

/// How a relay ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Both sides closed their sending direction.
    Closed,
    /// A side reset or failed; the other side was reset too.
    Reset,
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            End::Closed => "closed",
            End::Reset => "reset",
        })
    }
}

/// Byte counts of a relay, readable while it runs.
#[derive(Debug, Default)]
pub struct Counts {
    /// Client → server.
    pub up: AtomicU64,
    /// Server → client.
    pub down: AtomicU64,
}

/// Relays until both directions are finished or one fails.
pub async fn relay(client: &TcpStream, server: &TcpStream, pipe_size: u32, counts: &Counts) -> End {
    let result = async {
        let up_pipe = Pipe::new(pipe_size)?;
        let down_pipe = Pipe::new(pipe_size)?;
        tokio::try_join!(pump(client, server, &up_pipe, &counts.up), pump(server, client, &down_pipe, &counts.down),)
    }
    .await;
    match result {
        Ok(_) => End::Closed,
        Err(_) => {
            // Tell both peers the stream is broken rather than ending it cleanly.
            reset_on_close(client);
            reset_on_close(server);
            End::Reset
        }
    }
}

/// Makes the next close of `stream` send RST instead of FIN.
pub fn reset_on_close(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
}

async fn pump(src: &TcpStream, dst: &TcpStream, pipe: &Pipe, count: &AtomicU64) -> io::Result<()> {
    loop {
        let n = loop {
            src.readable().await?;
            match src.try_io(Interest::READABLE, || splice(src.as_raw_fd(), pipe.write.as_raw_fd(), pipe.size)) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            // SAFETY: valid socket fd.
            unsafe { libc::shutdown(dst.as_raw_fd(), libc::SHUT_WR) };
            return Ok(());
        }
        let mut left = n;
        while left > 0 {
            dst.writable().await?;
            match dst.try_io(Interest::WRITABLE, || splice(pipe.read.as_raw_fd(), dst.as_raw_fd(), left)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(m) => {
                    left -= m;
                    count.fetch_add(m as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain syscall on fds owned by the caller; null offsets.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
}

/// A non-blocking kernel pipe used as the splice buffer of one direction.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    size: usize,
}

impl Pipe {
    fn new(want: u32) -> io::Result<Pipe> {
        let mut fds = [0; 2];
        // SAFETY: fds has room for two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 returned two fresh descriptors we now own.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // A larger pipe means fewer wakeups; the kernel caps it at
        // fs.pipe-max-size, so fall back to whatever it has.
        // SAFETY: valid pipe fd.
        let got = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, want as libc::c_int) };
        let size = if got > 0 {
            got as usize
        } else {
            // SAFETY: valid pipe fd.
            let cur = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) };
            if cur > 0 { cur as usize } else { 65536 }
        };
        Ok(Pipe { read, write, size })
    }
}

/// Sends a held body from offset `from` to `stream`: from memory with
/// plain writes, from a spool file with sendfile(2) (no copy through
/// userspace). Each wait for the socket is bounded by `wait`.
pub async fn send_held(stream: &TcpStream, held: &Spool, from: u64, wait: Duration) -> io::Result<()> {
    if let Some(mem) = held.memory() {
        let mut rest = mem.get(from as usize..).unwrap_or_default();
        while !rest.is_empty() {
            tokio::time::timeout(wait, stream.writable())
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
            match stream.try_write(rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        return Ok(());
    }
    let Some(file) = held.file() else { return Ok(()) };
    let len = held.len() as i64;
    let mut off: i64 = from as i64;
    while off < len {
        tokio::time::timeout(wait, stream.writable()).await.map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        let res = stream.try_io(Interest::WRITABLE, || {
            let want = (len - off).min(1 << 30) as usize;
            // SAFETY: both descriptors are valid; off is ours.
            let n = unsafe { libc::sendfile(stream.as_raw_fd(), file.as_raw_fd(), &mut off, want) };
            if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
        });
        match res {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
