//! One INSTREAM scan on a session connection: the framing and clamd's
//! reply.

use std::time::Duration;

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _},
    sync::mpsc,
    time::timeout,
};

use super::conn::Conn;
use crate::scan::backend::Body;
use crate::verdict::{ErrorKind, Verdict};

/// Chunks smaller than this are gathered into one write with the framing.
const COPY_BELOW: usize = 16 * 1024;

/// How one attempt on one connection ended.
pub(super) enum Attempt {
    /// clamd answered; the connection may serve another scan.
    Answered(Verdict, bool),
    /// No answer came: the connection failed or clamd closed it.
    Unanswered(Verdict),
}

/// One INSTREAM on `s` (opening the session first when `new`): `body` as
/// it comes (from its start again after a rewind).
pub(super) async fn instream(s: &mut Conn, new: bool, body: &mut Body, t: Duration) -> Attempt {
    let sent = async {
        let mut out: Vec<u8> = Vec::with_capacity(COPY_BELOW);
        if new {
            out.extend_from_slice(b"zIDSESSION\0");
        }
        out.extend_from_slice(b"zINSTREAM\0");
        loop {
            // Small bodies go out in one write; larger ones as they come.
            let chunk = match body.try_recv() {
                Ok(c) => Some(c),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) => {
                    if !out.is_empty() {
                        timeout(t, s.write_all(&out)).await??;
                        out.clear();
                    }
                    body.recv().await
                }
            };
            match chunk {
                Some(c) if c.len() >= COPY_BELOW => {
                    // Large chunks go out as they are, not copied.
                    for part in c.chunks(1 << 20) {
                        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
                        timeout(t, s.write_all(&out)).await??;
                        out.clear();
                        timeout(t, s.write_all(part)).await??;
                    }
                }
                Some(c) => {
                    frame(&mut out, &c);
                    if out.len() >= COPY_BELOW {
                        timeout(t, s.write_all(&out)).await??;
                        out.clear();
                    }
                }
                None => break,
            }
        }
        out.extend_from_slice(&[0, 0, 0, 0]);
        timeout(t, s.write_all(&out)).await??;
        Ok::<(), std::io::Error>(())
    }
    .await;
    answer(s, sent, t).await
}

/// clamd's answer to a command whose sending ended with `sent`: read even
/// after a failed write, because clamd may have said why (a size limit).
pub(super) async fn answer<S: AsyncRead + Unpin>(s: &mut S, sent: std::io::Result<()>, t: Duration) -> Attempt {
    let (reply, read) = read_reply(s, t).await;
    let reply = String::from_utf8_lossy(&reply).trim_end_matches(['\0', '\n']).to_string();
    if !reply.is_empty() {
        let verdict = parse_reply(session_reply(&reply));
        let reusable = sent.is_ok() && matches!(read, Ok(true)) && !matches!(verdict, Verdict::Error { .. });
        return Attempt::Answered(verdict, reusable);
    }
    Attempt::Unanswered(match (sent, read) {
        (Err(e), _) if e.kind() == std::io::ErrorKind::TimedOut => {
            Verdict::error(ErrorKind::Timeout, "clamd stopped reading the stream")
        }
        (Err(e), _) => Verdict::error(ErrorKind::Io, format!("sending the stream to clamd failed: {e}")),
        (Ok(()), Err(ReadError::Timeout)) => Verdict::error(ErrorKind::Timeout, "clamd did not answer in time"),
        (Ok(()), Err(ReadError::Io(e))) => Verdict::error(ErrorKind::Io, format!("reading clamd's answer failed: {e}")),
        (Ok(()), Ok(_)) => Verdict::error(ErrorKind::Protocol, "clamd closed the connection without an answer"),
    })
}

/// Appends one INSTREAM chunk (clamd takes chunks up to its StreamMaxLength).
fn frame(out: &mut Vec<u8>, chunk: &[u8]) {
    for part in chunk.chunks(1 << 20) {
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part);
    }
}

enum ReadError {
    Timeout,
    Io(std::io::Error),
}

/// Reads one NUL-terminated reply; `Ok(true)` if it ended with its NUL
/// (the connection can go on), `Ok(false)` at EOF.
async fn read_reply<S: AsyncRead + Unpin>(s: &mut S, t: Duration) -> (Vec<u8>, Result<bool, ReadError>) {
    let mut reply = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match timeout(t, s.read(&mut buf)).await {
            Err(_) => return (reply, Err(ReadError::Timeout)),
            Ok(Err(e)) => return (reply, Err(ReadError::Io(e))),
            Ok(Ok(0)) => return (reply, Ok(false)),
            Ok(Ok(n)) => {
                reply.extend_from_slice(&buf[..n]);
                if reply.contains(&0) {
                    return (reply, Ok(true));
                }
            }
        }
    }
}

/// What follows `fd[N]: ` in a FILDES reply.
fn fd_reply(reply: &str) -> Option<&str> {
    let (n, rest) = reply.strip_prefix("fd[")?.split_once("]: ")?;
    n.bytes().all(|b| b.is_ascii_digit()).then_some(rest)
}

/// A session's reply carries the command's number: `1: stream: OK`.
fn session_reply(reply: &str) -> &str {
    match reply.split_once(": ") {
        Some((n, rest)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => rest,
        _ => reply,
    }
}

/// Parses clamd's INSTREAM or FILDES reply: `stream: OK`, `fd[12]: OK`,
/// `stream: NAME FOUND`, `INSTREAM size limit exceeded. ERROR`, `… ERROR`.
fn parse_reply(reply: &str) -> Verdict {
    let body = reply.strip_prefix("stream: ").or_else(|| fd_reply(reply)).unwrap_or(reply);
    if body == "OK" {
        Verdict::Clean
    } else if let Some(name) = body.strip_suffix(" FOUND") {
        Verdict::Infected { threats: vec![name.to_string()], engine: "clamd".into(), replacement: None }
    } else if body.contains("size limit exceeded") {
        Verdict::error(ErrorKind::Oversize, format!("clamd: {body}"))
    } else {
        Verdict::error(ErrorKind::Protocol, format!("clamd answered {reply:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies() {
        assert_eq!(parse_reply("stream: OK"), Verdict::Clean);
        assert!(matches!(parse_reply("stream: Test.EICAR.NDB.UNOFFICIAL FOUND"),
            Verdict::Infected { ref threats, .. } if threats == &["Test.EICAR.NDB.UNOFFICIAL"]));
        assert!(matches!(
            parse_reply("INSTREAM size limit exceeded. ERROR"),
            Verdict::Error { kind: ErrorKind::Oversize, .. }
        ));
        assert!(matches!(parse_reply("UNKNOWN COMMAND"), Verdict::Error { kind: ErrorKind::Protocol, .. }));
        assert_eq!(session_reply("12: stream: OK"), "stream: OK");
        assert_eq!(session_reply("INSTREAM size limit exceeded. ERROR"), "INSTREAM size limit exceeded. ERROR");
        assert_eq!(session_reply("stream: x: y FOUND"), "stream: x: y FOUND");
        assert_eq!(parse_reply(session_reply("3: fd[13]: OK")), Verdict::Clean);
        assert!(matches!(parse_reply("fd[13]: Test.EICAR.NDB.UNOFFICIAL FOUND"),
            Verdict::Infected { ref threats, .. } if threats == &["Test.EICAR.NDB.UNOFFICIAL"]));
        assert!(matches!(
            parse_reply("fd[13]: lstat() failed: Permission denied. ERROR"),
            Verdict::Error { kind: ErrorKind::Protocol, .. }
        ));
    }
}
