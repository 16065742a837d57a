//! Byte relay between two connections: in the kernel with splice(2) when
//! both are plain TCP, through a userspace copy otherwise (TLS).
//!
//! splice moves data socket → pipe → socket without copying it through
//! userspace; a 64 KiB userspace buffer reaches about half of direct
//! forwarding on this kind of host, splice gets close to it. Half-close is
//! honoured: EOF in one direction becomes a FIN (shutdown of writes)
//! towards the other side while the other direction goes on.

use std::{
    io,
    os::fd::{AsFd, OwnedFd},
    sync::atomic::{AtomicU64, Ordering},
};

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use tokio::{io::Interest, net::TcpStream};

use crate::{net::reset_on_close, transport::Transport};

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

/// Byte counts of a flow, readable while it runs.
#[derive(Debug, Default)]
pub struct Counts {
    /// Client → server.
    pub up: AtomicU64,
    /// Server → client.
    pub down: AtomicU64,
}

/// Relays between two TCP sockets until both directions are finished or
/// one fails.
pub async fn relay(client: &TcpStream, server: &TcpStream, pipe_size: u32, counts: &Counts) -> End {
    let result = async {
        let up_pipe = Pipe::new(pipe_size)?;
        let down_pipe = Pipe::new(pipe_size)?;
        tokio::try_join!(pump(client, server, &up_pipe, &counts.up), pump(server, client, &down_pipe, &counts.down))
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

/// Relays between any two streams: splice when both are plain TCP, else a
/// copy through userspace.
pub async fn relay_any(client: &mut dyn Transport, server: &mut dyn Transport, pipe_size: u32, counts: &Counts) -> End {
    if client.plain() && server.plain() {
        return relay(client.tcp(), server.tcp(), pipe_size, counts).await;
    }
    match tokio::io::copy_bidirectional(client, server).await {
        Ok((up, down)) => {
            counts.up.fetch_add(up, Ordering::Relaxed);
            counts.down.fetch_add(down, Ordering::Relaxed);
            End::Closed
        }
        Err(_) => {
            reset_on_close(client.tcp());
            reset_on_close(server.tcp());
            End::Reset
        }
    }
}

async fn pump(src: &TcpStream, dst: &TcpStream, pipe: &Pipe, count: &AtomicU64) -> io::Result<()> {
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    loop {
        let n = loop {
            src.readable().await?;
            match src.try_io(Interest::READABLE, || {
                splice(src.as_fd(), None, pipe.write.as_fd(), None, pipe.size, flags).map_err(io::Error::from)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            let _ = socket2::SockRef::from(dst).shutdown(std::net::Shutdown::Write);
            return Ok(());
        }
        let mut left = n;
        while left > 0 {
            dst.writable().await?;
            match dst.try_io(Interest::WRITABLE, || {
                splice(pipe.read.as_fd(), None, dst.as_fd(), None, left, flags).map_err(io::Error::from)
            }) {
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

/// A non-blocking kernel pipe used as the splice buffer of one direction.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    size: usize,
}

impl Pipe {
    fn new(want: u32) -> io::Result<Pipe> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        // A larger pipe means fewer wakeups; the kernel caps it at
        // fs.pipe-max-size, so fall back to whatever it has.
        let size = match fcntl(&write, FcntlArg::F_SETPIPE_SZ(i32::try_from(want).unwrap_or(i32::MAX))) {
            Ok(got) if got > 0 => got as usize,
            _ => fcntl(&write, FcntlArg::F_GETPIPE_SZ).map_or(65536, |n| n.max(4096) as usize),
        };
        Ok(Pipe { read, write, size })
    }
}
