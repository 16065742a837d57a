//! One scan request to the API on the wire: HTTP/1.1, the form sent
//! chunked as the body arrives, the JSON answer read back (httparse for
//! the head, the one chunked decoder for a chunked answer).

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use serde::Deserialize;
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    net::TcpStream,
    time::timeout,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

use super::ApiUrl;
use crate::{
    scan::{backend::Body, idle::Reusable},
    verdict::{ErrorKind, Verdict},
    wire::ChunkedDecoder,
};

/// Longest answer (head and JSON) read.
const MAX_ANSWER: usize = 1 << 20;

/// A connection to the API, plain or TLS.
pub(super) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Reusable for Stream {
    fn socket(&self) -> socket2::SockRef<'_> {
        match self {
            Stream::Plain(s) => socket2::SockRef::from(s),
            Stream::Tls(s) => socket2::SockRef::from(s.get_ref().0),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

fn err(kind: ErrorKind, msg: impl Into<String>) -> Verdict {
    Verdict::error(kind, msg)
}

/// Connects (and shakes hands, checking the certificate against the host).
pub(super) async fn connect(
    addr: &str,
    url: &ApiUrl,
    tls: Option<&TlsConnector>,
    t: Duration,
) -> Result<Stream, Verdict> {
    let tcp = match crate::net::connect_timeout(addr, t).await {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            return Err(err(ErrorKind::Timeout, format!("connecting to the API at {} timed out", url.url)));
        }
        Err(e) => return Err(err(ErrorKind::Unavailable, format!("the API at {} is unreachable: {e}", url.url))),
    };
    let _ = tcp.set_nodelay(true);
    let Some(tls) = tls else { return Ok(Stream::Plain(tcp)) };
    let name = rustls::pki_types::ServerName::try_from(url.host.clone())
        .map_err(|e| err(ErrorKind::Protocol, format!("API host {:?}: {e}", url.host)))?;
    match timeout(t, tls.connect(name, tcp)).await {
        Ok(Ok(s)) => Ok(Stream::Tls(Box::new(s))),
        Ok(Err(e)) => Err(err(ErrorKind::Protocol, format!("TLS with the API at {} failed: {e}", url.url))),
        Err(_) => Err(err(ErrorKind::Timeout, format!("TLS with the API at {} timed out", url.url))),
    }
}

/// What a request needs besides the body.
pub(super) struct Request<'a> {
    pub url: &'a ApiUrl,
    pub key: Option<&'a str>,
    pub name: &'a str,
    pub io_timeout: Duration,
}

/// How a request failed: before any answer (a kept connection may be
/// replaced), or in the answer.
pub(super) enum Failed {
    Unanswered(Verdict),
    Answered(Verdict),
}

/// The answer's JSON.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ScanResult {
    clean_result: bool,
    #[serde(default)]
    found_viruses: Option<Vec<VirusFound>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct VirusFound {
    #[serde(default)]
    virus_name: Option<String>,
}

fn boundary() -> String {
    use sha2::Digest as _;
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let seed = format!("{n}-{:?}-{}", std::time::SystemTime::now(), std::process::id());
    let d = sha2::Sha256::digest(seed.as_bytes());
    format!("gateway{}", d[..12].iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// A file name fit for the form's quoted `filename`.
fn form_name(name: &str) -> String {
    let base = name.rsplit('/').next().unwrap_or(name);
    let clean: String = base.chars().filter(|c| !c.is_control() && *c != '"' && *c != '\\').collect();
    if clean.is_empty() { "file".into() } else { clean }
}

/// Sends the form with `body` and reads the verdict; `true`: the
/// connection may be kept.
pub(super) async fn scan(s: &mut Stream, req: &Request<'_>, body: &mut Body) -> Result<(Verdict, bool), Failed> {
    let t = req.io_timeout;
    let b = boundary();
    let mut out = format!(
        "POST {}/virus/scan/file HTTP/1.1\r\nHost: {}\r\nUser-Agent: gateway/{}\r\nAccept: application/json\r\n\
         Content-Type: multipart/form-data; boundary={b}\r\nTransfer-Encoding: chunked\r\n",
        req.url.base,
        req.url.authority(),
        env!("CARGO_PKG_VERSION")
    )
    .into_bytes();
    if let Some(k) = req.key {
        out.extend_from_slice(format!("Apikey: {k}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    let part = format!(
        "--{b}\r\nContent-Disposition: form-data; name=\"inputFile\"; filename=\"{}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n",
        form_name(req.name)
    );
    crate::wire::push_chunk(&mut out, part.as_bytes());
    let send = |e: std::io::Error| Failed::Unanswered(err(ErrorKind::Io, format!("sending to the API: {e}")));
    let timed = |_| Failed::Unanswered(err(ErrorKind::Timeout, "the API stopped reading the request"));
    timeout(t, s.write_all(&out)).await.map_err(timed)?.map_err(send)?;
    let mut frame = Vec::with_capacity(16);
    while let Some(chunk) = body.recv().await {
        if chunk.is_empty() {
            continue;
        }
        frame.clear();
        crate::wire::push_chunk_header(&mut frame, chunk.len() as u64);
        timeout(t, s.write_all(&frame)).await.map_err(timed)?.map_err(send)?;
        timeout(t, s.write_all(&chunk)).await.map_err(timed)?.map_err(send)?;
        timeout(t, s.write_all(b"\r\n")).await.map_err(timed)?.map_err(send)?;
    }
    let mut tail = Vec::new();
    crate::wire::push_chunk(&mut tail, format!("\r\n--{b}--\r\n").as_bytes());
    tail.extend_from_slice(crate::wire::LAST_CHUNK);
    timeout(t, s.write_all(&tail)).await.map_err(timed)?.map_err(send)?;
    timeout(t, s.flush()).await.map_err(timed)?.map_err(send)?;
    read_answer(s, t, req.url).await
}

/// Reads the answer: head, body (length or chunked), JSON → verdict.
async fn read_answer(s: &mut Stream, t: Duration, url: &ApiUrl) -> Result<(Verdict, bool), Failed> {
    let mut buf = Vec::with_capacity(4096);
    let end = loop {
        if let Some(end) = crate::wire::head_end(&buf) {
            break end;
        }
        if buf.len() > MAX_ANSWER {
            return Err(Failed::Answered(err(ErrorKind::Protocol, "the API's answer head is too long")));
        }
        let first = buf.is_empty();
        read_more(s, &mut buf, t, first).await?;
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut res = httparse::Response::new(&mut headers);
    let bad = |m: String| Failed::Answered(err(ErrorKind::Protocol, m));
    res.parse(&buf[..end]).map_err(|e| bad(format!("the API's answer head: {e}")))?;
    let status = res.code.unwrap_or(0);
    let header = |n: &str| {
        res.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(n))
            .map(|h| String::from_utf8_lossy(h.value).to_string())
    };
    let keep = header("connection").is_none_or(|c| !c.eq_ignore_ascii_case("close"));
    let chunked = header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let length: Option<usize> = header("content-length").and_then(|v| v.trim().parse().ok());
    let mut rest = buf.split_off(end);
    let (json, extra) = if chunked {
        read_chunked(s, rest, t).await?
    } else if let Some(n) = length.filter(|&n| n <= MAX_ANSWER) {
        while rest.len() < n {
            read_more(s, &mut rest, t, false).await.map_err(|f| match f {
                Failed::Unanswered(v) | Failed::Answered(v) => Failed::Answered(v),
            })?;
        }
        let extra = rest.len() > n;
        rest.truncate(n);
        (rest, extra)
    } else {
        return Err(bad(format!("the API's answer ({status}) has no usable length")));
    };
    // Bytes past the answer would be read as the next file's answer.
    Ok((verdict(status, &json, url), keep && !extra))
}

async fn read_more(s: &mut Stream, buf: &mut Vec<u8>, t: Duration, first: bool) -> Result<(), Failed> {
    let mut tmp = [0u8; 16 * 1024];
    let fail = |v| if first { Failed::Unanswered(v) } else { Failed::Answered(v) };
    match timeout(t, s.read(&mut tmp)).await {
        Ok(Ok(0)) => Err(fail(err(ErrorKind::Io, "the API closed the connection without an answer"))),
        Ok(Ok(n)) => {
            buf.extend_from_slice(&tmp[..n]);
            Ok(())
        }
        Ok(Err(e)) => Err(fail(err(ErrorKind::Io, format!("reading the API's answer: {e}")))),
        Err(_) => Err(Failed::Answered(err(ErrorKind::Timeout, "the API did not answer in time"))),
    }
}

/// The chunked answer, and whether bytes followed it.
async fn read_chunked(s: &mut Stream, mut raw: Vec<u8>, t: Duration) -> Result<(Vec<u8>, bool), Failed> {
    let mut dec = ChunkedDecoder::new(4096);
    let mut out = Vec::new();
    loop {
        let used = dec
            .decode_into(&raw, &mut out)
            .map_err(|e| Failed::Answered(err(ErrorKind::Protocol, format!("the API's chunked answer: {e}"))))?;
        raw.drain(..used);
        if dec.done() {
            return Ok((out, !raw.is_empty()));
        }
        if out.len() > MAX_ANSWER {
            return Err(Failed::Answered(err(ErrorKind::Protocol, "the API's answer is too long")));
        }
        read_more(s, &mut raw, t, false).await?;
    }
}

/// The verdict for an answer.
fn verdict(status: u16, json: &[u8], url: &ApiUrl) -> Verdict {
    let text = || String::from_utf8_lossy(&json[..json.len().min(200)]).to_string();
    match status {
        200 => match serde_json::from_slice::<ScanResult>(json) {
            // Named viruses win over the flag.
            Ok(r) if r.clean_result && r.found_viruses.as_ref().is_none_or(Vec::is_empty) => Verdict::Clean,
            Ok(r) => {
                let mut threats: Vec<String> =
                    r.found_viruses.unwrap_or_default().into_iter().filter_map(|v| v.virus_name).collect();
                if threats.is_empty() {
                    threats.push("unknown threat (CleanResult false)".into());
                }
                Verdict::Infected { threats, engine: url.url.clone(), replacement: None }
            }
            Err(e) => err(ErrorKind::Protocol, format!("the API at {} answered JSON that does not fit: {e}", url.url)),
        },
        413 => err(ErrorKind::Oversize, format!("the API at {} refused the file as too large", url.url)),
        401 | 403 => err(ErrorKind::Protocol, format!("the API at {} refused the key ({status}): {}", url.url, text())),
        429 | 500.. => err(ErrorKind::Unavailable, format!("the API at {} answered {status}: {}", url.url, text())),
        _ => err(ErrorKind::Protocol, format!("the API at {} answered {status}: {}", url.url, text())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_become_verdicts() {
        let u = ApiUrl::parse("https://api.example").unwrap();
        assert_eq!(verdict(200, br#"{"CleanResult":true,"FoundViruses":null}"#, &u), Verdict::Clean);
        let v = verdict(200, br#"{"CleanResult":true,"FoundViruses":[{"FileName":"a","VirusName":"Eicar"}]}"#, &u);
        assert!(matches!(v, Verdict::Infected { .. }), "{v:?}");
        let v = verdict(200, br#"{"CleanResult":false,"FoundViruses":[{"FileName":"a","VirusName":"Eicar"}]}"#, &u);
        assert_eq!(v.threats(), ["Eicar"]);
        assert!(verdict(200, br#"{"CleanResult":false}"#, &u).is_infected());
        assert_eq!(verdict(200, b"not json", &u).error_kind(), Some(ErrorKind::Protocol));
        assert_eq!(verdict(401, b"{}", &u).error_kind(), Some(ErrorKind::Protocol));
        assert_eq!(verdict(503, b"{}", &u).error_kind(), Some(ErrorKind::Unavailable));
        assert_eq!(verdict(413, b"{}", &u).error_kind(), Some(ErrorKind::Oversize));
        assert_eq!(form_name("http://x/a/\"evil\r\n.exe"), "evil.exe");
    }
}
