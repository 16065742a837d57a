//! The client's first flight, read without taking it off the socket: the
//! ClientHello is peeked (MSG_PEEK), so that a flow that is spliced still
//! hands the server every byte the client sent, through the kernel.
//!
//! Only what the policy needs is parsed: the server name (SNI), the ALPN
//! list and whether an Encrypted Client Hello extension is present. rustls
//! reads the same bytes again when the gateway answers the handshake.

use std::{io, time::Duration};

use nix::sys::socket::{MsgFlags, recv};

use tokio::{io::Interest, net::TcpStream};

/// Bytes peeked at most: a ClientHello of this size is refused. Real ones
/// are under 2 KiB (with post-quantum key shares); TLS allows 16 KiB per
/// record and a hello over several records.
pub const MAX_HELLO: usize = 32 * 1024;

/// TLS extension numbers (IANA).
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const EXT_ECH: u16 = 0xfe0d;

/// What the policy needs from a ClientHello.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hello {
    /// The host name asked for, lower case, without a trailing dot.
    pub sni: Option<String>,
    /// Protocols offered (ALPN), in the client's order.
    pub alpn: Vec<Vec<u8>>,
    /// An Encrypted Client Hello extension is present: the real server
    /// name is inside it, unreadable.
    pub ech: bool,
}

/// Why a flow did not start with a usable ClientHello.
#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    /// The first bytes are not a TLS handshake record.
    #[error("not TLS (the first bytes are not a TLS handshake record)")]
    NotTls,
    /// A TLS record that does not hold a well-formed ClientHello.
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    /// Larger than [`MAX_HELLO`].
    #[error("ClientHello larger than {MAX_HELLO} bytes")]
    TooLarge,
    /// The client closed before its ClientHello was complete.
    #[error("the client closed before its ClientHello was complete")]
    Closed,
    /// Not complete within the handshake timeout.
    #[error("no complete ClientHello within {0:?}")]
    Timeout(Duration),
    /// A socket error.
    #[error("reading the ClientHello: {0}")]
    Io(#[from] io::Error),
}

/// The pause between peeks at a hello that keeps arriving in pieces.
const PEEK_SPACING: Duration = Duration::from_millis(5);
/// Records one ClientHello may span (real ones use one).
const MAX_RECORDS: usize = 16;

/// A parse that needs more bytes, or cannot succeed.
#[derive(Debug)]
enum Parse {
    More,
    Bad(HelloError),
}

impl From<HelloError> for Parse {
    fn from(e: HelloError) -> Parse {
        Parse::Bad(e)
    }
}

/// Waits (up to `wait`) for the whole ClientHello and parses it, leaving
/// the bytes on the socket.
pub async fn peek(tcp: &TcpStream, wait: Duration) -> Result<Hello, HelloError> {
    let mut buf = vec![0u8; MAX_HELLO];
    let mut partial = 0u32;
    let read = async {
        loop {
            // Every peek parses the hello from its start: a client that
            // trickles it a byte per segment would make that quadratic.
            // Past a couple of partial peeks (a real hello comes in one or
            // two segments) they are spaced out.
            if partial >= 2 {
                tokio::time::sleep(PEEK_SPACING).await;
            }
            // tokio registers for RDHUP: `read_closed` says the peer has
            // sent FIN, which a peek at a partial hello cannot tell.
            let closed = tcp.ready(Interest::READABLE).await?.is_read_closed();
            // Partial data: report WouldBlock so that readiness is cleared
            // and the next segment wakes us (peeking again at once would
            // spin on the same bytes).
            match tcp.try_io(Interest::READABLE, || peek_once(tcp, &mut buf, closed)) {
                Ok(hello) => return hello,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => partial += 1,
                Err(e) => return Err(HelloError::Io(e)),
            }
        }
    };
    tokio::time::timeout(wait, read).await.unwrap_or(Err(HelloError::Timeout(wait)))
}

/// One peek: `Ok(result)` when the hello is complete or hopeless,
/// WouldBlock when more bytes are needed. `closed`: the peer sent FIN.
fn peek_once(tcp: &TcpStream, buf: &mut [u8], closed: bool) -> io::Result<Result<Hello, HelloError>> {
    use std::os::fd::AsRawFd as _;
    let n = recv(tcp.as_raw_fd(), buf, MsgFlags::MSG_PEEK)?;
    match parse(&buf[..n]) {
        Ok(h) => Ok(Ok(h)),
        Err(Parse::Bad(e)) => Ok(Err(e)),
        Err(Parse::More) if n == 0 || closed => Ok(Err(HelloError::Closed)),
        Err(Parse::More) if n == buf.len() => Ok(Err(HelloError::TooLarge)),
        Err(Parse::More) => Err(io::ErrorKind::WouldBlock.into()),
    }
}

/// Gathers the handshake message from one or more records and parses it.
fn parse(bytes: &[u8]) -> Result<Hello, Parse> {
    let mut handshake = Vec::new();
    let mut at = 0;
    for _ in 0..MAX_RECORDS {
        let Some(header) = bytes.get(at..at + 5) else { return Err(Parse::More) };
        if header[0] != 22 || header[1] != 3 {
            return Err(
                if at == 0 { HelloError::NotTls } else { HelloError::Malformed("a record of another type") }.into()
            );
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > 16 * 1024 + 2048 {
            return Err(HelloError::Malformed("record length").into());
        }
        let Some(body) = bytes.get(at + 5..at + 5 + len) else { return Err(Parse::More) };
        handshake.extend_from_slice(body);
        at += 5 + len;
        if handshake.len() >= 4 {
            if handshake[0] != 1 {
                return Err(HelloError::Malformed("the first handshake message is not a ClientHello").into());
            }
            let want =
                4 + (usize::from(handshake[1]) << 16 | usize::from(handshake[2]) << 8 | usize::from(handshake[3]));
            if want > MAX_HELLO {
                return Err(HelloError::TooLarge.into());
            }
            if handshake.len() >= want {
                return client_hello(&handshake[4..want]).map_err(Parse::Bad);
            }
        }
    }
    Err(HelloError::Malformed("a ClientHello spread over more than 16 records").into())
}

/// A cursor over length-prefixed TLS structures.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], HelloError> {
        if self.0.len() < n {
            return Err(HelloError::Malformed("a field runs past its end"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<usize, HelloError> {
        Ok(usize::from(self.take(1)?[0]))
    }

    fn u16(&mut self) -> Result<usize, HelloError> {
        let b = self.take(2)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    /// A vector with a one- or two-byte length.
    fn vec8(&mut self) -> Result<Reader<'a>, HelloError> {
        let n = self.u8()?;
        self.take(n).map(Reader)
    }

    fn vec16(&mut self) -> Result<Reader<'a>, HelloError> {
        let n = self.u16()?;
        self.take(n).map(Reader)
    }
}

/// The ClientHello body: version, random, session id, suites,
/// compression, extensions.
fn client_hello(body: &[u8]) -> Result<Hello, HelloError> {
    let mut r = Reader(body);
    r.take(2 + 32)?;
    r.vec8()?;
    let suites = r.vec16()?;
    if suites.0.is_empty() || suites.0.len() % 2 != 0 {
        return Err(HelloError::Malformed("cipher suites"));
    }
    r.vec8()?;
    let mut hello = Hello::default();
    if r.0.is_empty() {
        return Ok(hello); // no extensions at all (SSL 3 style)
    }
    let mut exts = r.vec16()?;
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let mut data = exts.vec16()?;
        match kind as u16 {
            EXT_SERVER_NAME => hello.sni = server_name(&mut data)?,
            EXT_ALPN => hello.alpn = alpn(&mut data)?,
            EXT_ECH => hello.ech = true,
            _ => {}
        }
    }
    Ok(hello)
}

fn server_name(data: &mut Reader<'_>) -> Result<Option<String>, HelloError> {
    let mut list = data.vec16()?;
    while !list.0.is_empty() {
        let kind = list.u8()?;
        let name = list.vec16()?.0;
        if kind != 0 {
            continue;
        }
        let name = std::str::from_utf8(name).map_err(|_| HelloError::Malformed("server name is not ASCII"))?;
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        let ok = !name.is_empty()
            && name.len() <= 253
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        if !ok {
            return Err(HelloError::Malformed("server name is not a host name"));
        }
        return Ok(Some(name));
    }
    Ok(None)
}

fn alpn(data: &mut Reader<'_>) -> Result<Vec<Vec<u8>>, HelloError> {
    let mut list = data.vec16()?;
    let mut out = Vec::new();
    while !list.0.is_empty() {
        out.push(list.vec8()?.0.to_vec());
    }
    Ok(out)
}

/// Checks a `bypass_sni` entry: a host name, or `*.` and a host name.
pub fn check_glob(glob: &str) -> Result<(), String> {
    let name = glob.strip_prefix("*.").unwrap_or(glob);
    let ok = !name.is_empty()
        && !name.contains('*')
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    if ok { Ok(()) } else { Err(format!("{glob:?} is not a host name or \"*.\" and a host name")) }
}

/// Whether `sni` (lower case) matches `glob`: `*.example.org` matches any
/// name below example.org (not example.org itself); other globs match
/// exactly, case-insensitively.
pub fn matches(glob: &str, sni: &str) -> bool {
    match glob.strip_prefix("*.") {
        Some(base) => {
            sni.len() > base.len() + 1
                && sni[sni.len() - base.len()..].eq_ignore_ascii_case(base)
                && sni.as_bytes()[sni.len() - base.len() - 1] == b'.'
        }
        None => glob.eq_ignore_ascii_case(sni),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello with the given extensions, in one record.
    fn hello(exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one suite
        body.extend_from_slice(&[1, 0]); // null compression
        let mut e = Vec::new();
        for (k, d) in exts {
            e.extend_from_slice(&k.to_be_bytes());
            e.extend_from_slice(&(d.len() as u16).to_be_bytes());
            e.extend_from_slice(d);
        }
        body.extend_from_slice(&(e.len() as u16).to_be_bytes());
        body.extend_from_slice(&e);
        let mut hs = vec![1, 0, (body.len() >> 8) as u8, body.len() as u8];
        hs.extend_from_slice(&body);
        let mut rec = vec![22, 3, 1, (hs.len() >> 8) as u8, hs.len() as u8];
        rec.extend_from_slice(&hs);
        rec
    }

    fn sni_ext(name: &str) -> (u16, Vec<u8>) {
        let mut d = ((name.len() + 3) as u16).to_be_bytes().to_vec();
        d.push(0);
        d.extend_from_slice(&(name.len() as u16).to_be_bytes());
        d.extend_from_slice(name.as_bytes());
        (0, d)
    }

    fn alpn_ext(protos: &[&str]) -> (u16, Vec<u8>) {
        let mut l = Vec::new();
        for p in protos {
            l.push(p.len() as u8);
            l.extend_from_slice(p.as_bytes());
        }
        let mut d = (l.len() as u16).to_be_bytes().to_vec();
        d.extend_from_slice(&l);
        (16, d)
    }

    #[test]
    fn sni_alpn_and_ech_are_read() {
        let h =
            parse(&hello(&[sni_ext("WWW.Example.TEST."), alpn_ext(&["h2", "http/1.1"]), (0xfe0d, vec![0])])).unwrap();
        assert_eq!(h.sni.as_deref(), Some("www.example.test"));
        assert_eq!(h.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert!(h.ech);
        let h = parse(&hello(&[])).unwrap();
        assert_eq!(h, Hello::default());
    }

    #[test]
    fn partial_garbage_and_split_records() {
        let full = hello(&[sni_ext("a.example")]);
        for cut in [0, 3, 5, 9, full.len() - 1] {
            assert!(matches!(parse(&full[..cut]), Err(Parse::More)), "cut at {cut}");
        }
        assert!(matches!(parse(b"GET / HTTP/1.1\r\n\r\n"), Err(Parse::Bad(HelloError::NotTls))));
        // The handshake message split over two records.
        let hs = &full[5..];
        let mut two = vec![22, 3, 1, 0, 10];
        two.extend_from_slice(&hs[..10]);
        two.extend_from_slice(&[22, 3, 1, 0, (hs.len() - 10) as u8]);
        two.extend_from_slice(&hs[10..]);
        assert_eq!(parse(&two).unwrap().sni.as_deref(), Some("a.example"));
        // Lengths that lie.
        let mut bad = full.clone();
        bad[5 + 4 + 34] = 200; // session id longer than the message
        assert!(matches!(parse(&bad), Err(Parse::Bad(HelloError::Malformed(_)))));
        let mut not_hello = full;
        not_hello[5] = 2;
        assert!(matches!(parse(&not_hello), Err(Parse::Bad(HelloError::Malformed(_)))));
    }

    #[test]
    fn globs() {
        assert!(matches("*.bank.example", "www.bank.example"));
        assert!(matches("*.bank.example", "a.b.bank.example"));
        assert!(!matches("*.bank.example", "bank.example"));
        assert!(!matches("*.bank.example", "xbank.example"));
        assert!(matches("Updates.Example.org", "updates.example.org"));
        assert!(!matches("updates.example.org", "x.updates.example.org"));
        assert!(check_glob("*.bank.example").is_ok());
        assert!(check_glob("a.*.example").is_err());
        assert!(check_glob("*").is_err());
        assert!(check_glob("bad name").is_err());
    }
}
