//! A streaming `multipart/form-data` reader (RFC 7578): parts are found as
//! the body arrives, a file part's content is handed on piece by piece and
//! never held whole. Only a small tail (a possible delimiter's start) and
//! one part head at a time are kept.

use bytes::{Bytes, BytesMut};

/// Longest part head accepted.
const MAX_PART_HEAD: usize = 16 * 1024;

/// A form that does not follow the rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    /// No `boundary=` in the Content-Type.
    #[error("multipart/form-data without a boundary")]
    NoBoundary,
    /// A part head is longer than 16 KiB or does not parse.
    #[error("malformed part head")]
    PartHead,
    /// The body ended before the closing delimiter.
    #[error("the form ended before its closing delimiter")]
    Truncated,
}

/// What the reader found.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A part begins: its field name and file name.
    Part {
        /// `name=` of its Content-Disposition.
        name: String,
        /// `filename=`, if any.
        filename: Option<String>,
    },
    /// Content of the current part.
    Data(Bytes),
    /// The closing delimiter: the form is complete.
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Preamble,
    /// After a delimiter: `\r\n` (a part follows) or `--` (the end).
    AfterDelimiter,
    PartHead,
    PartBody,
    Done,
}

/// The reader of one form.
pub struct Multipart {
    /// `\r\n--BOUNDARY`.
    delimiter: Vec<u8>,
    buf: BytesMut,
    state: State,
}

/// The boundary of a `multipart/form-data` Content-Type.
pub fn boundary(content_type: &str) -> Result<String, FormError> {
    let mut parts = content_type.split(';');
    if !parts.next().is_some_and(|t| t.trim().eq_ignore_ascii_case("multipart/form-data")) {
        return Err(FormError::NoBoundary);
    }
    parts
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"').to_string())
        .filter(|b| !b.is_empty() && b.len() <= 70)
        .ok_or(FormError::NoBoundary)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = *needle.first()?;
    let mut from = 0;
    while let Some(i) = hay[from..].iter().position(|&b| b == first) {
        let at = from + i;
        if hay.len() - at < needle.len() {
            return None;
        }
        if &hay[at..at + needle.len()] == needle {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

impl Multipart {
    /// A reader for a form with this boundary.
    pub fn new(boundary: &str) -> Multipart {
        Multipart { delimiter: format!("\r\n--{boundary}").into_bytes(), buf: BytesMut::new(), state: State::Preamble }
    }

    /// More of the body.
    pub fn push(&mut self, data: &[u8]) {
        if self.state != State::Done {
            self.buf.extend_from_slice(data);
        }
    }

    /// Whether the closing delimiter was read.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// The body ended: an error unless the form was complete.
    pub fn finish(&self) -> Result<(), FormError> {
        if self.done() { Ok(()) } else { Err(FormError::Truncated) }
    }

    /// The next event from what was pushed; `None`: push more.
    pub fn next_event(&mut self) -> Result<Option<Event>, FormError> {
        loop {
            match self.state {
                State::Done => return Ok(None),
                State::Preamble => {
                    // The first delimiter may open the body without its CRLF.
                    let dash = &self.delimiter[2..];
                    match find(&self.buf, dash) {
                        Some(at) if at == 0 || self.buf[..at].ends_with(b"\r\n") => {
                            let _ = self.buf.split_to(at + dash.len());
                            self.state = State::AfterDelimiter;
                        }
                        Some(at) => {
                            let _ = self.buf.split_to(at + 1);
                        }
                        None => {
                            let keep = dash.len() + 2;
                            if self.buf.len() > keep {
                                let _ = self.buf.split_to(self.buf.len() - keep);
                            }
                            return Ok(None);
                        }
                    }
                }
                State::AfterDelimiter => {
                    if self.buf.len() < 2 {
                        return Ok(None);
                    }
                    let two = self.buf.split_to(2);
                    if &two[..] == b"--" {
                        self.state = State::Done;
                        self.buf.clear();
                        return Ok(Some(Event::End));
                    }
                    if &two[..] != b"\r\n" {
                        return Err(FormError::PartHead);
                    }
                    self.state = State::PartHead;
                }
                State::PartHead => return self.part_head(),
                State::PartBody => {
                    let event = self.part_body();
                    if event.is_some() || self.state == State::PartBody {
                        return Ok(event);
                    }
                }
            }
        }
    }

    fn part_head(&mut self) -> Result<Option<Event>, FormError> {
        let Some(end) =
            find(&self.buf, b"\r\n\r\n").map(|i| i + 4).or_else(|| self.buf.starts_with(b"\r\n").then_some(2))
        else {
            if self.buf.len() > MAX_PART_HEAD {
                return Err(FormError::PartHead);
            }
            return Ok(None);
        };
        let head = self.buf.split_to(end);
        let text = std::str::from_utf8(&head).map_err(|_| FormError::PartHead)?;
        let disposition = text
            .split("\r\n")
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-disposition"))
            .map(|(_, v)| v)
            .ok_or(FormError::PartHead)?;
        let param = |key: &str| {
            disposition.split(';').skip(1).find_map(|p| {
                let (k, v) = p.trim().split_once('=')?;
                k.trim().eq_ignore_ascii_case(key).then(|| v.trim().trim_matches('"').to_string())
            })
        };
        self.state = State::PartBody;
        Ok(Some(Event::Part { name: param("name").ok_or(FormError::PartHead)?, filename: param("filename") }))
    }

    fn part_body(&mut self) -> Option<Event> {
        let d = self.delimiter.len();
        if let Some(at) = find(&self.buf, &self.delimiter) {
            if at > 0 {
                return Some(Event::Data(self.buf.split_to(at).freeze()));
            }
            let _ = self.buf.split_to(d);
            self.state = State::AfterDelimiter;
            return None;
        }
        // Everything but what may be the start of a delimiter.
        let safe = self.buf.len().saturating_sub(d - 1);
        (safe > 0).then(|| Event::Data(self.buf.split_to(safe).freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Parts = Vec<(String, Vec<u8>)>;

    fn events(body: &[u8], piece: usize) -> Result<(Parts, bool), FormError> {
        let mut m = Multipart::new("XyZ");
        let mut parts: Parts = Vec::new();
        let mut ended = false;
        for p in body.chunks(piece) {
            m.push(p);
            while let Some(e) = m.next_event()? {
                match e {
                    Event::Part { name, .. } => parts.push((name, Vec::new())),
                    Event::Data(d) => parts.last_mut().unwrap().1.extend_from_slice(&d),
                    Event::End => ended = true,
                }
            }
        }
        Ok((parts, ended))
    }

    #[test]
    fn parts_come_whole_whatever_the_pieces() {
        let body = b"preamble\r\n--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nfirst\r\n--X\r\n\
--XyZ\r\nContent-Disposition: form-data; name=\"inputFile\"; filename=\"e.com\"\r\nContent-Type: application/octet-stream\r\n\r\n\
binary\r\n--Xy data\r\n--XyZ--\r\nepilogue";
        for piece in [1, 2, 3, 7, 64, body.len()] {
            let (parts, ended) = events(body, piece).unwrap();
            assert!(ended, "piece {piece}");
            assert_eq!(parts[0], ("a".to_string(), b"first\r\n--X".to_vec()), "piece {piece}");
            assert_eq!(parts[1], ("inputFile".to_string(), b"binary\r\n--Xy data".to_vec()), "piece {piece}");
        }
    }

    #[test]
    fn boundaries_and_broken_forms() {
        assert_eq!(boundary("multipart/form-data; boundary=\"abc\"").unwrap(), "abc");
        assert!(boundary("application/json").is_err());
        assert!(boundary("multipart/form-data").is_err());
        let (_, ended) = events(b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nno end", 5).unwrap();
        assert!(!ended);
        assert_eq!(events(b"--XyZ\r\nno disposition\r\n\r\nx\r\n--XyZ--", 4).unwrap_err(), FormError::PartHead);
    }
}
