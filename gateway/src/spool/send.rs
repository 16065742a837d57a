//! Delivering a held body: from memory with plain writes, from a spool file
//! with sendfile(2) where the stream is a plain socket (no copy through
//! userspace), else read back in pieces and written.

use std::{io, os::fd::AsFd as _, time::Duration};

use tokio::io::{AsyncWriteExt as _, Interest};

use super::Spool;
use crate::transport::Transport;

/// Piece size when a spool file is copied through userspace (TLS).
const COPY_PIECE: usize = 256 * 1024;

/// Sends the held body from offset `from` to `out`. Each wait for the
/// stream to take more is bounded by `wait`.
pub async fn send_held(out: &mut dyn Transport, held: &Spool, from: u64, wait: Duration) -> io::Result<()> {
    if let Some(mem) = held.memory() {
        let rest = mem.get(from as usize..).unwrap_or_default();
        return write_all(out, rest, wait).await;
    }
    if held.file().is_none() || from >= held.len() {
        return Ok(());
    }
    if out.plain() {
        return sendfile(out, held, from, wait).await;
    }
    let mut buf = vec![0u8; COPY_PIECE];
    let mut off = from;
    while off < held.len() {
        let n = held.read_at(off, &mut buf)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        write_all(out, &buf[..n], wait).await?;
        off += n as u64;
    }
    Ok(())
}

/// `write_all`, each write bounded by `wait`.
pub async fn write_all(out: &mut dyn Transport, mut data: &[u8], wait: Duration) -> io::Result<()> {
    while !data.is_empty() {
        let n = tokio::time::timeout(wait, out.write(data))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        data = &data[n..];
    }
    tokio::time::timeout(wait, out.flush()).await.map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

async fn sendfile(out: &mut dyn Transport, held: &Spool, from: u64, wait: Duration) -> io::Result<()> {
    let Some(file) = held.file() else { return Ok(()) };
    let stream = out.tcp();
    let len = held.len() as i64;
    let mut off = from as i64;
    while off < len {
        tokio::time::timeout(wait, stream.writable()).await.map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        let res = stream.try_io(Interest::WRITABLE, || {
            let want = (len - off).min(1 << 30) as usize;
            nix::sys::sendfile::sendfile64(stream.as_fd(), file.as_fd(), Some(&mut off), want).map_err(io::Error::from)
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
