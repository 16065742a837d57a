//! The transparent FTP gateway: the control channel relayed line by line,
//! data channels set up through the eBPF expectations map (passive) or a
//! listener of the gateway's own (active), and files scanned with trickling
//! (Barracuda's approach): for every `trickle_every` received, `trickle_bytes`
//! go on to the receiver before the verdict; an infected file aborts the
//! data connection and the client gets `505 virus found in file: <name>`
//! instead of the server's 226.

pub mod command;
pub mod data;

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use log::{info, warn};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::oneshot,
    task::JoinHandle,
};

use self::{
    command::{
        final_code, format_eprt, format_hostport, parse_227, parse_229, parse_eprt, parse_hostport, parse_stou_name,
        split_command,
    },
    data::{DataWaiters, Expected, Outcome, Trickle},
};
use super::relay;
use crate::{
    config,
    detections::{self, Detections, Record},
    scan::{Direction, Scanner},
    steering::Expectations,
};

/// What the FTP gateway needs besides the connection.
pub struct FtpContext {
    /// `[ftp]`.
    pub cfg: config::Ftp,
    /// The scanning core.
    pub scanner: Arc<Scanner>,
    /// Where detection records go.
    pub detections: Arc<Detections>,
    /// The eBPF expectations map.
    pub expectations: Expectations,
    /// Sessions waiting for passive data connections.
    pub waiters: Arc<DataWaiters>,
}

/// Line-oriented reading with a length limit; cancel-safe (nothing is
/// consumed until a whole line or reply is there).
struct Lines {
    r: OwnedReadHalf,
    buf: Vec<u8>,
    max: usize,
}

#[derive(Debug)]
enum LineError {
    TooLong,
    Idle,
    Io(std::io::Error),
}

impl Lines {
    /// Reads more; `idle: None` waits as long as it takes (EOF or error
    /// still end it).
    async fn more(&mut self, idle: Option<Duration>) -> Result<bool, LineError> {
        if self.buf.len() > self.max {
            return Err(LineError::TooLong);
        }
        let read = self.r.read_buf(&mut self.buf);
        let r = match idle {
            Some(idle) => tokio::time::timeout(idle, read).await.map_err(|_| LineError::Idle)?,
            None => read.await,
        };
        match r {
            Ok(0) => Ok(false),
            Ok(_) => {
                self.past_urgent_mark();
                Ok(true)
            }
            Err(e) => Err(LineError::Io(e)),
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
        // SAFETY: valid socket fd and buffer; non-blocking.
        let n = unsafe { libc::recv(fd, tmp.as_mut_ptr().cast(), tmp.len(), libc::MSG_DONTWAIT) };
        if n > 0 {
            self.buf.extend_from_slice(&tmp[..n as usize]);
        }
    }

    fn take_line(&mut self) -> Option<String> {
        let i = self.buf.iter().position(|&b| b == b'\n')?;
        let mut line: Vec<u8> = self.buf.drain(..=i).collect();
        // Telnet IAC sequences (IP, Synch) some clients put before ABOR.
        while line.first() == Some(&0xff) && line.len() >= 2 {
            line.drain(..2);
        }
        line.retain(|&b| b != 0xff && b != 0xf2);
        Some(String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n']).to_string())
    }

    /// One command line; `None` at EOF.
    async fn line(&mut self, idle: Option<Duration>) -> Result<Option<String>, LineError> {
        loop {
            if let Some(l) = self.take_line() {
                if l.len() > self.max {
                    return Err(LineError::TooLong);
                }
                return Ok(Some(l));
            }
            if !self.more(idle).await? {
                return Ok(None);
            }
        }
    }

    /// One whole reply (multi-line ones included); `None` at EOF.
    async fn reply(&mut self, idle: Option<Duration>) -> Result<Option<(u16, Vec<String>)>, LineError> {
        loop {
            if let Some(end) = self.reply_end() {
                let raw: Vec<u8> = self.buf.drain(..end).collect();
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

    /// Bytes up to the end of the first complete reply in the buffer.
    fn reply_end(&self) -> Option<usize> {
        let mut start = 0;
        let mut first: Option<u16> = None;
        while let Some(i) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&self.buf[start..start + i]);
            let line = line.trim_end_matches('\r');
            if first.is_none() {
                first = line.get(..3).and_then(|c| c.parse().ok());
            }
            start += i + 1;
            if final_code(line, first).is_some() {
                return Some(start);
            }
        }
        None
    }
}

/// The data connection arranged for the next transfer.
enum Plan {
    /// The client will connect to the server's announced port (steered to us).
    Passive { expected: Expected, rx: oneshot::Receiver<TcpStream>, server: SocketAddr },
    /// The server will connect to our listener; we connect on to the client.
    Active { listener: TcpListener, client: SocketAddr },
}

struct Transfer {
    handle: JoinHandle<Outcome>,
    verb: String,
    name: String,
}

impl Drop for Transfer {
    /// A session that ends (client gone, server gone, error) takes its
    /// transfer with it: sockets, spool file and expectation entry.
    fn drop(&mut self) {
        self.handle.abort();
    }
}

struct Session<'a> {
    fx: &'a FtpContext,
    peer: SocketAddr,
    dst: SocketAddr,
    /// The gateway's own address towards the server (active mode listeners).
    near_server: IpAddr,
    cw: OwnedWriteHalf,
    sw: OwnedWriteHalf,
    plan: Option<Plan>,
    transfer: Option<Transfer>,
    pending_passive: bool,
    /// Commands read while a reply was held, handled after it.
    deferred: Vec<String>,
    counts: &'a relay::Counts,
}

enum Event {
    Client(Result<Option<String>, LineError>),
    Server(Result<Option<(u16, Vec<String>)>, LineError>),
}

/// Serves one FTP control connection.
pub async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    dst: SocketAddr,
    upstream: TcpStream,
    fx: &FtpContext,
    counts: &relay::Counts,
) -> String {
    let near_server = match upstream.local_addr() {
        Ok(a) => a.ip(),
        Err(e) => return format!("no local address: {e}"),
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    // Clients send ABOR with its last byte as TCP urgent data (ftplib does);
    // keep it in the stream so the line is complete.
    let _ = socket2::SockRef::from(&client).set_out_of_band_inline(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = upstream.into_split();
    let max = fx.cfg.max_line;
    let mut cr = Lines { r: cr, buf: Vec::new(), max };
    let mut sr = Lines { r: sr, buf: Vec::new(), max };
    let mut s = Session {
        fx,
        peer,
        dst,
        near_server,
        cw,
        sw,
        plan: None,
        transfer: None,
        pending_passive: false,
        deferred: Vec::new(),
        counts,
    };
    let idle = fx.cfg.idle_timeout.0;
    loop {
        let ev = if s.deferred.is_empty() {
            // Idleness is the client's: a server waiting for the next
            // command is silent, and only its EOF or an error ends the session.
            tokio::select! {
                l = cr.line(Some(idle)) => Event::Client(l),
                r = sr.reply(None) => Event::Server(r),
            }
        } else {
            Event::Client(Ok(Some(s.deferred.remove(0))))
        };
        let r = match ev {
            Event::Client(Ok(Some(line))) => s.command(&line).await,
            Event::Client(Ok(None)) => return "client closed".into(),
            Event::Client(Err(LineError::TooLong)) => {
                let _ = s.tell_client("500 Command line too long.").await;
                return "client line too long".into();
            }
            Event::Client(Err(LineError::Idle)) => {
                let _ = s.tell_client("421 Idle timeout, closing the control connection.").await;
                return "idle".into();
            }
            Event::Client(Err(LineError::Io(e))) => return format!("client: {e}"),
            Event::Server(Ok(Some((code, lines)))) => s.reply(code, lines, &mut cr, &mut sr).await,
            Event::Server(Ok(None)) => {
                let _ = s.tell_client("421 The server closed the control connection.").await;
                return "server closed".into();
            }
            Event::Server(Err(e)) => {
                let _ = s.tell_client("421 The server's control connection failed.").await;
                return format!("server: {e:?}");
            }
        };
        match r {
            Ok(Flow::Go) => {}
            Ok(Flow::Passthrough) => {
                // AUTH TLS allowed: the rest of the session cannot be read.
                let (Ok(client), Ok(server)) = (cr.r.reunite(s.cw), sr.r.reunite(s.sw)) else {
                    return "reuniting for passthrough failed".into();
                };
                let end = relay::relay(&client, &server, 1 << 20, counts).await;
                return format!("passed through unscanned (FTPS), {end}");
            }
            Err(e) => return e,
        }
    }
}

enum Flow {
    Go,
    Passthrough,
}

impl Session<'_> {
    async fn tell_client(&mut self, line: &str) -> Result<(), String> {
        log::debug!(target: "ftp", "client={} < {line}", self.peer);
        self.counts.down.fetch_add(line.len() as u64 + 2, std::sync::atomic::Ordering::Relaxed);
        self.cw.write_all(format!("{line}\r\n").as_bytes()).await.map_err(|e| format!("client: {e}"))
    }

    async fn tell_server(&mut self, line: &str) -> Result<(), String> {
        self.counts.up.fetch_add(line.len() as u64 + 2, std::sync::atomic::Ordering::Relaxed);
        self.sw.write_all(format!("{line}\r\n").as_bytes()).await.map_err(|e| format!("server: {e}"))
    }

    async fn command(&mut self, line: &str) -> Result<Flow, String> {
        log::debug!(target: "ftp", "client={} > {line}", self.peer);
        let (verb, arg) = split_command(line);
        match verb.as_str() {
            "AUTH" if !self.fx.cfg.allow_ftps => {
                self.tell_client("534 AUTH refused: encrypted FTP cannot be scanned by this gateway.").await?;
            }
            "AUTH" => {
                self.tell_server(line).await?;
                return Ok(Flow::Passthrough);
            }
            "PORT" | "EPRT" => {
                let target = if verb == "PORT" { parse_hostport(arg) } else { parse_eprt(arg) };
                let Some(target) = target else {
                    return self.tell_client(&format!("501 Syntax error in {verb}.")).await.map(|()| Flow::Go);
                };
                if target.ip() != self.peer.ip() {
                    warn!(target: "ftp", "client={} refused {verb} to {target}: not the client's address (FTP bounce)", self.peer);
                    return self
                        .tell_client(&format!("504 {verb} refused: the address is not the client's (FTP bounce)."))
                        .await
                        .map(|()| Flow::Go);
                }
                let listener =
                    TcpListener::bind((self.near_server, 0)).await.map_err(|e| format!("active-mode listener: {e}"))?;
                let ours = listener.local_addr().map_err(|e| e.to_string())?;
                let rewritten = match (verb.as_str(), format_hostport(ours)) {
                    ("PORT", Some(hp)) => format!("PORT {hp}"),
                    _ => format!("EPRT {}", format_eprt(ours)),
                };
                self.plan = Some(Plan::Active { listener, client: target });
                self.tell_server(&rewritten).await?;
            }
            "PASV" | "EPSV" => {
                self.plan = None;
                self.pending_passive = true;
                self.tell_server(line).await?;
            }
            "REST" if !self.fx.cfg.allow_resume => {
                self.tell_client("504 REST (resume) is disabled by policy.").await?;
            }
            "RETR" | "STOR" | "STOU" | "APPE" | "LIST" | "NLST" | "MLSD" => {
                self.tell_server(line).await?;
                self.start_transfer(&verb, arg);
            }
            "ABOR" => {
                // Dropping the transfer aborts it, before ABOR reaches the server.
                if let Some(t) = self.transfer.take() {
                    info!(target: "ftp", "client={} {} {} aborted by the client", self.peer, t.verb, t.name);
                }
                self.plan = None;
                self.tell_server(line).await?;
            }
            _ => self.tell_server(line).await?,
        }
        Ok(Flow::Go)
    }

    fn start_transfer(&mut self, verb: &str, arg: &str) {
        let Some(plan) = self.plan.take() else { return };
        let fx = self.fx;
        let wait = fx.cfg.data_timeout.0;
        let upload = matches!(verb, "STOR" | "STOU" | "APPE");
        let scanned = fx.cfg.scan && (upload || verb == "RETR");
        let scanner = fx.scanner.clone();
        let trickle = Trickle { every: fx.cfg.trickle_every.0, bytes: fx.cfg.trickle_bytes.0 };
        let (peer, dst) = (self.peer, self.dst);
        let name = arg.to_string();
        let object = format!("ftp://{}/{}", dst, arg.trim_start_matches('/'));
        let handle = tokio::spawn(async move {
            // `_expected` keeps the eBPF entry for the data connection's
            // whole life: removing it mid-transfer resets the connection.
            let (server_side, client_side, _expected) = match plan {
                Plan::Passive { expected, rx, server } => {
                    let client = match tokio::time::timeout(wait, rx).await {
                        Ok(Ok(c)) => c,
                        _ => return Outcome::Failed("the client never opened the data connection".into()),
                    };
                    match data::connect(server, wait).await {
                        Ok(s) => (s, client, Some(expected)),
                        Err(e) => {
                            relay::reset_on_close(&client);
                            return Outcome::Failed(e);
                        }
                    }
                }
                Plan::Active { listener, client } => {
                    let server = match tokio::time::timeout(wait, listener.accept()).await {
                        Ok(Ok((s, _))) => s,
                        _ => return Outcome::Failed("the server never opened the data connection".into()),
                    };
                    match data::connect(client, wait).await {
                        Ok(c) => (server, c, None),
                        Err(e) => {
                            relay::reset_on_close(&server);
                            return Outcome::Failed(e);
                        }
                    }
                }
            };
            if !scanned {
                return data::relayed(server_side, client_side).await;
            }
            let (from, to, dir) = if upload {
                (client_side, server_side, Direction::Upload)
            } else {
                (server_side, client_side, Direction::Download)
            };
            data::scanned(from, to, scanner, data::meta(&object, peer, dst, dir), trickle, wait).await
        });
        self.transfer = Some(Transfer { handle, verb: verb.to_string(), name });
    }

    async fn reply(&mut self, code: u16, lines: Vec<String>, cr: &mut Lines, sr: &mut Lines) -> Result<Flow, String> {
        let last = lines.last().cloned().unwrap_or_default();
        if self.pending_passive && (code == 227 || code == 229) {
            self.pending_passive = false;
            let server = if code == 227 {
                parse_227(&last)
            } else {
                parse_229(&last).map(|p| SocketAddr::new(self.dst.ip(), p))
            };
            match server {
                Some(server) => {
                    let key = (self.peer.ip(), server.ip(), server.port());
                    match Expected::new(key, self.fx.expectations.clone(), self.fx.waiters.clone()) {
                        Ok((expected, rx)) => self.plan = Some(Plan::Passive { expected, rx, server }),
                        Err(e) => {
                            warn!(target: "ftp", "client={} cannot steer the data connection to {server}: {e}", self.peer);
                            return self
                                .tell_client("425 Cannot arrange the data connection.")
                                .await
                                .map(|()| Flow::Go);
                        }
                    }
                }
                None => {
                    return self
                        .tell_client("425 The server's passive-mode reply was not understood.")
                        .await
                        .map(|()| Flow::Go);
                }
            }
        } else if code >= 200 && (code == 227 || code == 229) {
            self.pending_passive = false;
        }
        if matches!(code, 125 | 150)
            && let Some(t) = self.transfer.as_mut().filter(|t| t.verb == "STOU")
            && let Some(name) = parse_stou_name(&last)
        {
            // The fragment to delete if the upload turns out infected.
            t.name = name.to_string();
        }
        if code >= 200
            && let Some(t) = self.transfer.take()
        {
            return self.end_transfer(t, code, lines, cr, sr).await;
        }
        for l in lines {
            self.tell_client(&l).await?;
        }
        Ok(Flow::Go)
    }

    /// The server's final reply to a transfer: held until our side of the
    /// transfer is done, then relayed, or replaced when we blocked the file.
    async fn end_transfer(
        &mut self,
        mut t: Transfer,
        code: u16,
        lines: Vec<String>,
        cr: &mut Lines,
        sr: &mut Lines,
    ) -> Result<Flow, String> {
        let outcome = if code >= 400 {
            // The server refused or failed: there is nothing to wait for.
            t.handle.abort();
            Outcome::Failed(format!("server replied {code}"))
        } else {
            // The server is done; the client still waits for our verdict,
            // and may abort meanwhile.
            let idle = self.fx.cfg.idle_timeout.0;
            loop {
                tokio::select! {
                    o = &mut t.handle => break o.unwrap_or_else(|e| Outcome::Failed(format!("transfer task: {e}"))),
                    l = cr.line(Some(idle)) => match l {
                        Ok(Some(line)) if split_command(&line).0 == "ABOR" => {
                            t.handle.abort();
                            info!(target: "ftp", "client={} {} {} aborted by the client before the verdict", self.peer, t.verb, t.name);
                            self.tell_client("426 Transfer aborted; the data connection was closed.").await?;
                            self.tell_client("226 ABOR command successful.").await?;
                            return Ok(Flow::Go);
                        }
                        Ok(Some(line)) => self.deferred.push(line),
                        Ok(None) => return Err("client closed during a transfer".into()),
                        Err(e) => return Err(format!("client: {e:?}")),
                    },
                }
            }
        };
        let upload = matches!(t.verb.as_str(), "STOR" | "APPE" | "STOU");
        let kind = if upload { "ftp-upload" } else { "ftp-download" };
        let object = format!("ftp://{}/{}", self.dst, t.name.trim_start_matches('/'));
        match outcome {
            Outcome::Infected { threats, trickled, bytes, engine } => {
                let reason = format!("infected: {}", threats.join(", "));
                self.record(kind, &object, &threats, &reason, &engine, bytes, trickled);
                info!(target: "ftp", "client={} {} {} bytes={bytes} verdict=infected:{} trickled={trickled} server-reply={code}", self.peer, t.verb, t.name, threats.join(","));
                self.tell_client(&format!("505 virus found in file: {}", threats.join(", "))).await?;
                if upload {
                    self.delete_fragment(&t, trickled, sr).await?;
                }
            }
            Outcome::Blocked { reason, trickled } => {
                self.record(kind, &object, &[], &reason, "policy", 0, trickled);
                info!(target: "ftp", "client={} {} {} blocked: {reason} trickled={trickled}", self.peer, t.verb, t.name);
                self.tell_client(&format!("451 Transfer aborted: {reason}.")).await?;
                if upload {
                    self.delete_fragment(&t, trickled, sr).await?;
                }
            }
            Outcome::Delivered { bytes, verdict, trickled } => {
                info!(target: "ftp", "client={} {} {} bytes={bytes} verdict={verdict} trickled={trickled} server-reply={code}", self.peer, t.verb, t.name);
                for l in lines {
                    self.tell_client(&l).await?;
                }
            }
            Outcome::Failed(why) => {
                info!(target: "ftp", "client={} {} {} data connection: {why}; server-reply={code}", self.peer, t.verb, t.name);
                for l in lines {
                    self.tell_client(&l).await?;
                }
            }
        }
        Ok(Flow::Go)
    }

    /// Writes the detection record of a blocked transfer.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        kind: &str,
        object: &str,
        threats: &[String],
        reason: &str,
        engine: &str,
        bytes: u64,
        trickled: u64,
    ) {
        self.fx.detections.record(&Record {
            id: &detections::new_id(),
            time: detections::now(),
            kind,
            client: self.peer.to_string(),
            server: self.dst.to_string(),
            object,
            threats,
            reason,
            engine,
            bytes,
            delivered_before_verdict: trickled,
        });
    }

    /// DELE the fragment an aborted upload left on the server; the reply
    /// goes to the log, not to the client. APPE is the exception: its file
    /// held the user's data before, which a DELE would destroy, so only the
    /// few trickled bytes stay appended (logged).
    async fn delete_fragment(&mut self, t: &Transfer, trickled: u64, sr: &mut Lines) -> Result<(), String> {
        let name = t.name.as_str();
        if t.verb == "APPE" {
            info!(target: "ftp", "client={} APPE {name}: not deleted (the file existed before); {trickled} bytes were appended before the verdict", self.peer);
            return Ok(());
        }
        if name.is_empty() {
            warn!(target: "ftp", "client={} {}: the server did not name the stored file; its fragment was not deleted", self.peer, t.verb);
            return Ok(());
        }
        self.tell_server(&format!("DELE {name}")).await?;
        match sr.reply(Some(self.fx.cfg.data_timeout.0)).await {
            Ok(Some((code, lines))) => {
                let ok = (200..300).contains(&code);
                info!(target: "ftp", "client={} DELE of the infected fragment {name}: {} ({})", self.peer, if ok { "deleted" } else { "not deleted" }, lines.join(" "));
            }
            other => warn!(target: "ftp", "client={} DELE of {name}: no reply ({other:?})", self.peer),
        }
        Ok(())
    }
}
