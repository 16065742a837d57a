//! Stage 4: the server's answer head, read the way Chromium reads it.
//!
//! Requests are read strictly (they go on to servers whose parsers
//! differ). Responses are different: the gateway re-frames every body it
//! delivers, so nobody downstream reads the server's framing. Refusing what
//! browsers accept would only break sites; the safe course is to read a
//! response exactly as the browser would ([`locate`], [`parse`], [`rules`]),
//! scan the body that reading yields, and hand the client that body in a
//! clean form (HTTP/1.1 status line, unfolded fields, one Content-Length
//! of exactly the scanned bytes). There is then nothing left for the client
//! to read differently.
//!
//! What Chromium refuses is refused (502): a NUL in the head, differing
//! Content-Length (unless chunked), Location or Content-Disposition values,
//! an invalid Content-Encoding, a head over the limit, HTTP/0.9 off the
//! default port or after an interim answer.

pub mod locate;
pub mod parse;
pub mod rules;

use std::time::Duration;

use tokio::time::Instant;

use self::{
    locate::{Located, Locator},
    parse::Parsed,
    rules::Coding,
};
use super::{
    conn::{Conn, ReadError},
    error::{Cause, HttpError, Stage},
    exchange::{Flow, Request},
    head::{Framing, Head, HeadError},
};

/// The server's final answer head.
pub(super) struct Response {
    /// The head the client gets (normalised).
    pub head: Head,
    /// How the server delimits the body.
    pub framing: Framing,
    /// What the browser would undo of the body's Content-Encoding.
    pub coding: Coding,
    /// Whether the server keeps its connection after this answer.
    pub server_keep: bool,
}

/// What the server sent first.
enum Found {
    /// A head (junk before its status line included); `truncated`: the
    /// connection closed before the head ended.
    Head { raw: Vec<u8>, truncated: bool },
    /// No status line: HTTP/0.9, all of it body (left in the buffer);
    /// `short`: decided only by the connection closing.
    NoStatusLine { short: bool },
}

/// Reads until a head is found or ruled out; `Ok(None)` when the server
/// closed without a byte.
async fn find_head(conn: &mut Conn, max: usize, wait: Duration) -> Result<Option<Found>, ReadError> {
    let deadline = Instant::now() + wait;
    let mut locator = Locator::default();
    loop {
        match locator.find(conn.buffered()) {
            Located::Head(end) if end > max => return Err(ReadError::TooLarge(max)),
            Located::Head(end) => {
                let raw = conn.buffered()[..end].to_vec();
                conn.consume(end);
                return Ok(Some(Found::Head { raw, truncated: false }));
            }
            Located::NoStatusLine => return Ok(Some(Found::NoStatusLine { short: false })),
            Located::More if conn.buffered().len() > max => return Err(ReadError::TooLarge(max)),
            Located::More => {}
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if conn.fill(left).await? > 0 {
            continue;
        }
        let buf = conn.buffered();
        return Ok(match locator.at_eof(buf) {
            _ if buf.is_empty() => None,
            Located::Head(end) => {
                let raw = buf[..end].to_vec();
                conn.consume(end);
                Some(Found::Head { raw, truncated: true })
            }
            _ => Some(Found::NoStatusLine { short: true }),
        });
    }
}

impl Flow<'_> {
    /// The server's final answer head; interim answers (103 Early Hints …)
    /// go on to the client normalised, 100 Continue was the gateway's own,
    /// a 101 nobody asked for is skipped as Chromium skips it.
    pub(super) async fn read_response(&mut self, req: &Request) -> Result<Response, HttpError> {
        let at = |e: Cause| HttpError::at(Stage::ResponseHead, e);
        let (max, wait) = (self.hx.cfg.max_response_header_bytes.0 as usize, self.body_wait());
        let secure = !self.client.io.plain();
        let mut interim = false;
        loop {
            let up = self.upstream.as_mut().ok_or_else(|| at(Cause::Closed))?;
            let (raw, truncated) = match find_head(up, max, wait).await.map_err(|e| at(e.into()))? {
                None => return Err(at(Cause::Closed)),
                Some(Found::NoStatusLine { short }) => {
                    return self.http09(req, interim, short).map_err(|e| at(e.into()));
                }
                Some(Found::Head { raw, truncated }) => (raw, truncated),
            };
            if truncated && secure {
                return Err(at(HeadError::Malformed("the connection closed inside the head".into()).into()));
            }
            let parsed = parse::parse(&raw).map_err(|e| at(e.into()))?;
            rules::check_duplicates(&parsed).map_err(|e| at(e.into()))?;
            let status = parsed.status;
            if (100..200).contains(&status) && !(status == 101 && req.upgrade) {
                interim = true;
                if status != 100 && status != 101 {
                    let head = rules::normalise(&parsed, Framing::None, &Coding::Identity, &req.head.method);
                    self.write_client(&head.response_bytes()).await?;
                }
                continue;
            }
            return final_answer(&parsed, req, truncated).map_err(|e| at(e.into()));
        }
    }

    /// An answer without a status line: a body of its own, where Chromium
    /// takes it as HTTP/0.9 (a GET or HEAD on the default port, or an ICY
    /// stream on any; never after an interim answer, never cut short over
    /// TLS).
    fn http09(&self, req: &Request, interim: bool, short: bool) -> Result<Response, HeadError> {
        let refuse = |why: &str| Err(HeadError::Malformed(why.into()));
        let secure = !self.client.io.plain();
        let method = &req.head.method;
        if interim {
            return refuse("no status line after an interim answer");
        }
        if !method.eq_ignore_ascii_case("GET") && !method.eq_ignore_ascii_case("HEAD") {
            return refuse("an answer without a status line (HTTP/0.9) to a method other than GET");
        }
        if secure && short {
            return refuse("the connection closed inside the head");
        }
        let default_port = if secure { 443 } else { 80 };
        let icy = !secure
            && self
                .upstream
                .as_ref()
                .is_some_and(|u| u.buffered().get(..3).is_some_and(|b| b.eq_ignore_ascii_case(b"ICY")));
        if self.dst.port() != default_port && !icy {
            return refuse("an answer without a status line (HTTP/0.9) off the default port");
        }
        let parsed =
            Parsed { version: parse::Version::Http09, status: 200, reason: b"OK".to_vec(), headers: Vec::new() };
        let framing = if method.eq_ignore_ascii_case("HEAD") { Framing::None } else { Framing::Close };
        Ok(Response {
            head: rules::normalise(&parsed, framing, &Coding::Identity, method),
            framing,
            coding: Coding::Identity,
            server_keep: false,
        })
    }
}

/// The final answer from its parsed head. A truncated head has no body.
fn final_answer(parsed: &Parsed, req: &Request, truncated: bool) -> Result<Response, HeadError> {
    let method = &req.head.method;
    let framing = if truncated { Framing::None } else { rules::framing(parsed, method) };
    let coding = rules::coding(parsed)?;
    Ok(Response {
        head: rules::normalise(parsed, framing, &coding, method),
        framing,
        coding,
        server_keep: !truncated && rules::keep_alive(parsed),
    })
}
