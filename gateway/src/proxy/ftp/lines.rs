//! Reading the control connection: commands line by line, replies whole
//! (multi-line ones included), each bounded — a line by `max_line`, a reply
//! by `max_reply` — and cancel-safe (nothing is consumed until a whole line
//! or reply is there).

use std::time::Duration;

use tokio::{io::AsyncReadExt as _, net::tcp::OwnedReadHalf};

use super::command::final_code;

/// Reading a line or reply failed.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// A line longer than `max_line`.
    #[error("a line longer than {0} bytes")]
    TooLong(usize),
    /// A reply longer than `max_reply`.
    #[error("a reply longer than {0} bytes")]
    ReplyTooLong(u64),
    /// Nothing within the idle timeout.
    #[error("idle timeout")]
    Idle,
    /// Socket error.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// One direction of the control connection.
pub struct Lines {
    /// The socket's read half.
    pub r: OwnedReadHalf,
    buf: Vec<u8>,
    /// Where the reply being gathered has its first unfinished line, and
    /// its code: each byte is looked at once however the reply arrives.
    reply_at: usize,
    reply_code: Option<u16>,
    max_line: usize,
    max_reply: u64,
}

impl Lines {
    /// Reads from `r` with these limits.
    pub fn new(r: OwnedReadHalf, max_line: usize, max_reply: u64) -> Lines {
        Lines { r, buf: Vec::new(), reply_at: 0, reply_code: None, max_line, max_reply }
    }

    /// Reads more; `idle: None` waits as long as it takes (EOF or error
    /// still end it). `false` at EOF.
    async fn more(&mut self, idle: Option<Duration>) -> Result<bool, LineError> {
        self.buf.reserve(4096);
        let read = self.r.read_buf(&mut self.buf);
        let r = match idle {
            Some(idle) => tokio::time::timeout(idle, read).await.map_err(|_| LineError::Idle)?,
            None => read.await,
        };
        match r? {
            0 => Ok(false),
            _ => {
                self.past_urgent_mark();
                Ok(true)
            }
        }
    }

    /// Clients send ABOR with its last byte as TCP urgent data. A read stops
    /// at the urgent mark (`ABOR\r`), and tokio, seeing a short read, waits
    /// for a new readiness event that the byte after the mark never raises;
    /// so that byte is fetched here directly.
    fn past_urgent_mark(&mut self) {
        if self.buf.last() != Some(&b'\r') {
            return;
        }
        let mut tmp = [0u8; 512];
        let fd = std::os::fd::AsRawFd::as_raw_fd(self.r.as_ref());
        if let Ok(n) = nix::sys::socket::recv(fd, &mut tmp, nix::sys::socket::MsgFlags::MSG_DONTWAIT) {
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }

    /// Takes the first line if it is complete.
    fn take_line(&mut self) -> Result<Option<String>, LineError> {
        let Some(i) = self.buf.iter().position(|&b| b == b'\n') else {
            if self.buf.len() > self.max_line {
                return Err(LineError::TooLong(self.max_line));
            }
            return Ok(None);
        };
        if i > self.max_line {
            return Err(LineError::TooLong(self.max_line));
        }
        let mut line: Vec<u8> = self.buf.drain(..=i).collect();
        // Telnet IAC sequences (IP, Synch) some clients put before ABOR.
        while line.first() == Some(&0xff) && line.len() >= 2 {
            line.drain(..2);
        }
        line.retain(|&b| b != 0xff && b != 0xf2);
        Ok(Some(String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n']).to_string()))
    }

    /// One command line; `None` at EOF.
    pub async fn line(&mut self, idle: Option<Duration>) -> Result<Option<String>, LineError> {
        loop {
            if let Some(l) = self.take_line()? {
                return Ok(Some(l));
            }
            if !self.more(idle).await? {
                return Ok(None);
            }
        }
    }

    /// One whole reply (multi-line ones included); `None` at EOF.
    pub async fn reply(&mut self, idle: Option<Duration>) -> Result<Option<(u16, Vec<String>)>, LineError> {
        loop {
            if let Some(end) = self.reply_end()? {
                let raw: Vec<u8> = self.buf.drain(..end).collect();
                (self.reply_at, self.reply_code) = (0, None);
                let lines: Vec<String> = String::from_utf8_lossy(&raw)
                    .split('\n')
                    .filter(|l| !l.is_empty())
                    .map(|l| l.trim_end_matches('\r').to_string())
                    .collect();
                let code = lines.last().and_then(|l| l.get(..3)).and_then(|c| c.parse().ok()).unwrap_or(0);
                return Ok(Some((code, lines)));
            }
            if !self.more(idle).await? {
                return Ok(None);
            }
        }
    }

    /// Bytes up to the end of the first complete reply in the buffer,
    /// checking each line's length and the reply's.
    fn reply_end(&mut self) -> Result<Option<usize>, LineError> {
        while let Some(i) = self.buf[self.reply_at..].iter().position(|&b| b == b'\n') {
            if i > self.max_line {
                return Err(LineError::TooLong(self.max_line));
            }
            let start = self.reply_at;
            let line = String::from_utf8_lossy(&self.buf[start..start + i]);
            let line = line.trim_end_matches('\r');
            if self.reply_code.is_none() {
                self.reply_code = line.get(..3).and_then(|c| c.parse().ok());
            }
            self.reply_at += i + 1;
            if self.reply_at as u64 > self.max_reply {
                return Err(LineError::ReplyTooLong(self.max_reply));
            }
            if final_code(line, self.reply_code).is_some() {
                return Ok(Some(self.reply_at));
            }
        }
        if self.buf.len() - self.reply_at > self.max_line {
            return Err(LineError::TooLong(self.max_line));
        }
        if self.buf.len() as u64 > self.max_reply {
            return Err(LineError::ReplyTooLong(self.max_reply));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use tokio::{io::AsyncWriteExt as _, net::TcpListener};

    use super::*;

    async fn pair(max_line: usize, max_reply: u64) -> (tokio::net::TcpStream, Lines) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = tokio::net::TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        let (r, _w) = b.into_split();
        std::mem::forget(_w);
        (a, Lines::new(r, max_line, max_reply))
    }

    #[tokio::test]
    async fn a_long_multi_line_reply_is_bounded_by_max_reply_not_max_line() {
        let (mut w, mut lines) = pair(100, 10_000).await;
        let mut reply = b"211-Status of /:\r\n".to_vec();
        for i in 0..200 {
            reply.extend_from_slice(format!(" file-{i:04}.txt\r\n").as_bytes());
        }
        reply.extend_from_slice(b"211 End of status\r\n");
        assert!(reply.len() > 3000);
        w.write_all(&reply).await.unwrap();
        let (code, got) = lines.reply(None).await.unwrap().unwrap();
        assert_eq!((code, got.len()), (211, 202));
        // Past max_reply: an error, not unbounded growth.
        let (mut w, mut lines) = pair(100, 1000).await;
        w.write_all(&reply).await.unwrap();
        assert!(matches!(lines.reply(None).await, Err(LineError::ReplyTooLong(1000))));
        // A single line past max_line.
        let (mut w, mut lines) = pair(100, 10_000).await;
        w.write_all(&[b'x'; 300]).await.unwrap();
        assert!(matches!(lines.line(None).await, Err(LineError::TooLong(100))));
    }
}
