//! Where a response head starts and ends, found the way Chromium finds it
//! (`HttpUtil::LocateStartOfStatusLine`, `LocateEndOfHeaders`,
//! `HttpStreamParser::FindAndParseResponseHeaders`): the status line
//! starts with `http` (any case) within the first 5 bytes, or the response
//! is HTTP/0.9; the head ends at LF LF or LF CR LF.

/// Bytes of junk tolerated before `http`.
const SLOP: usize = 4;
/// With this many bytes and no `http` among them, there is no status line.
const DECIDE_09: usize = SLOP + 4;

/// Where the status line starts in `buf`, if it is there yet.
pub fn status_line_start(buf: &[u8]) -> Option<usize> {
    let last = buf.len().checked_sub(4)?.min(SLOP);
    (0..=last).find(|&i| buf[i..i + 4].eq_ignore_ascii_case(b"http"))
}

/// What [`Locator::find`] found so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Located {
    /// The head is `buf[..end]` (junk before the status line included).
    Head(usize),
    /// No status line: an HTTP/0.9 response, all of it body.
    NoStatusLine,
    /// Not decided yet: read more.
    More,
}

/// Finds a head in a buffer that grows between calls, looking at each byte
/// once.
#[derive(Debug, Default, Clone)]
pub struct Locator {
    start: Option<usize>,
    at: usize,
    was_lf: bool,
    last: u8,
}

impl Locator {
    /// Examines `buf` (the same buffer, grown, on every call).
    pub fn find(&mut self, buf: &[u8]) -> Located {
        if self.start.is_none() {
            self.start = status_line_start(buf);
            let Some(start) = self.start else {
                return if buf.len() >= DECIDE_09 { Located::NoStatusLine } else { Located::More };
            };
            self.at = start;
        }
        for (i, &c) in buf.iter().enumerate().skip(self.at) {
            if c == b'\n' {
                if self.was_lf {
                    return Located::Head(i + 1);
                }
                self.was_lf = true;
            } else if c != b'\r' || self.last != b'\n' {
                // A CR right after a LF keeps the line break going (LF CR LF).
                self.was_lf = false;
            }
            self.last = c;
        }
        self.at = buf.len();
        Located::More
    }

    /// The connection closed with `buf` unread: a truncated head if a
    /// status line had started (Chromium accepts it over plain HTTP),
    /// otherwise HTTP/0.9.
    pub fn at_eof(&self, buf: &[u8]) -> Located {
        match status_line_start(buf) {
            Some(_) => Located::Head(buf.len()),
            None => Located::NoStatusLine,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find_all_at_once(buf: &[u8]) -> Located {
        Locator::default().find(buf)
    }

    #[test]
    fn status_line_within_five_bytes() {
        assert_eq!(status_line_start(b"HTTP/1.1 200"), Some(0));
        assert_eq!(status_line_start(b"\r\n\r\nhttp/1.1"), Some(4));
        assert_eq!(status_line_start(b"XXXXXHTTP/1.1"), None);
        assert_eq!(status_line_start(b"HTT"), None);
        assert_eq!(find_all_at_once(b"XXXXXHTTP/1.1 200 OK\r\n\r\n"), Located::NoStatusLine);
        assert_eq!(find_all_at_once(b"hi"), Located::More);
        assert_eq!(Locator::default().at_eof(b"hi"), Located::NoStatusLine);
    }

    #[test]
    fn ends_at_lf_lf_or_lf_cr_lf_only() {
        assert_eq!(find_all_at_once(b"HTTP/1.1 200 OK\nA: 1\n\nbody"), Located::Head(22));
        assert_eq!(find_all_at_once(b"HTTP/1.1 200 OK\r\nA: 1\r\n\r\nbody"), Located::Head(25));
        assert_eq!(find_all_at_once(b"HTTP/1.1 200 OK\rA: 1\r\rbody"), Located::More);
        assert_eq!(find_all_at_once(b"HTTP/1.1 200 OK\r\nA: 1\r\n \r\nB: 2\r\n\r\n"), Located::Head(34));
        assert_eq!(Locator::default().at_eof(b"HTTP/1.1 200 OK\r\n"), Located::Head(17));
    }

    #[test]
    fn byte_by_byte_finds_the_same_end() {
        let head = b"\nHTTP/1.1 200 OK\r\nX: 1\n\r\nbody";
        let mut loc = Locator::default();
        let found = (1..=head.len()).map(|n| loc.find(&head[..n])).find(|l| *l != Located::More);
        assert_eq!(found, Some(Located::Head(25)));
    }
}
