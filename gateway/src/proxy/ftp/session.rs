//! One control session: commands from the client, replies from the server,
//! and what the gateway does between them (data connections, refusals).

use std::{
    net::{IpAddr, SocketAddr},
    sync::atomic::Ordering,
};

use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpListener, tcp::OwnedWriteHalf},
};
use tracing::{debug, info, warn};

use super::{
    FtpContext, FtpError,
    command::{
        format_eprt, format_hostport, parse_227, parse_229, parse_eprt, parse_hostport, parse_stou_name, split_command,
    },
    expect::Expected,
    lines::{LineError, Lines},
    transfer::{Plan, Transfer},
};
use crate::proxy::relay::Counts;

/// What the session loop does next.
pub(super) enum Next {
    /// Go on reading.
    Go,
    /// AUTH TLS was let through: relay the rest unread.
    Passthrough,
}

/// What arrived.
pub(super) enum Event {
    /// A client command (or its end).
    Client(Result<Option<String>, LineError>),
    /// A server reply (or its end).
    Server(Result<Option<(u16, Vec<String>)>, LineError>),
}

/// The state of one control session.
pub(super) struct Session<'a> {
    pub fx: &'a FtpContext,
    pub peer: SocketAddr,
    pub dst: SocketAddr,
    /// The gateway's own address towards the server (active mode listeners).
    near_server: IpAddr,
    cw: OwnedWriteHalf,
    sw: OwnedWriteHalf,
    pub plan: Option<Plan>,
    pub transfer: Option<Transfer>,
    pending_passive: bool,
    /// `TYPE A` in force (both line-end forms are scanned).
    pub ascii: bool,
    /// Commands read while a reply was held, handled after it (bounded).
    pub deferred: Vec<String>,
    counts: &'a Counts,
}

impl<'a> Session<'a> {
    pub fn new(
        fx: &'a FtpContext,
        peer: SocketAddr,
        dst: SocketAddr,
        near_server: IpAddr,
        cw: OwnedWriteHalf,
        sw: OwnedWriteHalf,
        counts: &'a Counts,
    ) -> Session<'a> {
        Session {
            fx,
            peer,
            dst,
            near_server,
            cw,
            sw,
            plan: None,
            transfer: None,
            pending_passive: false,
            ascii: false,
            deferred: Vec::new(),
            counts,
        }
    }

    /// The write halves back, for a passthrough.
    pub fn into_writers(self) -> (OwnedWriteHalf, OwnedWriteHalf) {
        (self.cw, self.sw)
    }

    /// The next command (a deferred one first) or reply. Idleness is the
    /// client's: a server waiting for the next command is silent, and only
    /// its EOF or an error ends the session.
    pub async fn next_event(&mut self, cr: &mut Lines, sr: &mut Lines) -> Event {
        if !self.deferred.is_empty() {
            return Event::Client(Ok(Some(self.deferred.remove(0))));
        }
        let idle = self.fx.cfg.idle_timeout.0;
        tokio::select! {
            l = cr.line(Some(idle)) => Event::Client(l),
            r = sr.reply(None) => Event::Server(r),
        }
    }

    /// Keeps a command for after the held reply, within the cap.
    pub fn defer(&mut self, line: String) -> Result<(), FtpError> {
        if self.deferred.len() >= self.fx.cfg.max_pending_commands {
            return Err(FtpError::TooManyPending(self.fx.cfg.max_pending_commands));
        }
        self.deferred.push(line);
        Ok(())
    }

    /// One reply line to the client, bounded by the data timeout.
    pub async fn tell_client(&mut self, line: &str) -> Result<(), FtpError> {
        debug!(target: "ftp", "client={} < {line}", self.peer);
        self.counts.down.fetch_add(line.len() as u64 + 2, Ordering::Relaxed);
        write_line(&mut self.cw, line, self.fx.cfg.data_timeout.0).await.map_err(FtpError::Client)
    }

    /// One command line to the server, bounded by the data timeout.
    pub async fn tell_server(&mut self, line: &str) -> Result<(), FtpError> {
        self.counts.up.fetch_add(line.len() as u64 + 2, Ordering::Relaxed);
        write_line(&mut self.sw, line, self.fx.cfg.data_timeout.0).await.map_err(FtpError::Server)
    }

    /// A command from the client.
    pub async fn command(&mut self, line: &str) -> Result<Next, FtpError> {
        debug!(target: "ftp", "client={} > {line}", self.peer);
        let (verb, arg) = split_command(line);
        match verb.as_str() {
            "AUTH" if !self.fx.cfg.allow_ftps => {
                self.tell_client("534 AUTH refused: encrypted FTP cannot be scanned by this gateway.").await?;
            }
            "AUTH" => {
                self.tell_server(line).await?;
                return Ok(Next::Passthrough);
            }
            "PORT" | "EPRT" => self.active(&verb, arg).await?,
            "PASV" | "EPSV" => {
                self.plan = None;
                self.pending_passive = true;
                self.tell_server(line).await?;
            }
            "LPSV" | "LPRT" | "SPSV" => {
                // Data addresses in forms the gateway does not steer: a
                // connection there would pass unscanned.
                self.tell_client(&format!("502 {verb} is not supported through this gateway; use PASV or EPSV."))
                    .await?;
            }
            "MODE" if !arg.trim().eq_ignore_ascii_case("S") => {
                // Block and compressed modes (MODE B, C, Z) carry the file in
                // a form the scanner cannot read.
                self.tell_client("504 Only MODE S (stream) is allowed through this gateway.").await?;
            }
            "TYPE" => {
                let t = arg.trim().to_ascii_uppercase();
                self.ascii = t.starts_with('A');
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
        Ok(Next::Go)
    }

    /// PORT/EPRT: only to the client's own address (anything else is an FTP
    /// bounce); the server is given a listener of the gateway's instead.
    async fn active(&mut self, verb: &str, arg: &str) -> Result<(), FtpError> {
        let target = if verb == "PORT" { parse_hostport(arg) } else { parse_eprt(arg) };
        let Some(target) = target else {
            return self.tell_client(&format!("501 Syntax error in {verb}.")).await;
        };
        if target.ip() != self.peer.ip() {
            warn!(target: "ftp", "client={} refused {verb} to {target}: not the client's address (FTP bounce)", self.peer);
            return self
                .tell_client(&format!("504 {verb} refused: the address is not the client's (FTP bounce)."))
                .await;
        }
        let listener = TcpListener::bind((self.near_server, 0)).await.map_err(FtpError::Listener)?;
        let ours = listener.local_addr().map_err(FtpError::Listener)?;
        let rewritten = match (verb, format_hostport(ours)) {
            ("PORT", Some(hp)) => format!("PORT {hp}"),
            _ => format!("EPRT {}", format_eprt(ours)),
        };
        self.plan = Some(Plan::Active { listener, client: target, server: self.dst.ip() });
        self.tell_server(&rewritten).await
    }

    /// A reply from the server.
    pub async fn reply(
        &mut self,
        code: u16,
        mut lines: Vec<String>,
        cr: &mut Lines,
        sr: &mut Lines,
    ) -> Result<Next, FtpError> {
        if self.pending_passive && code >= 200 {
            self.pending_passive = false;
            if (code == 227 || code == 229)
                && let Err(answer) = self.passive(code, &mut lines)
            {
                self.tell_client(answer).await?;
                return Ok(Next::Go);
            }
        }
        let last = lines.last().cloned().unwrap_or_default();
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
        Ok(Next::Go)
    }

    /// A 227/229: the data connection will go to the control connection's
    /// server address, whatever address a 227 names (a NAT'd server names
    /// its private one; clients connect to the control address anyway), so
    /// the expectation, the rewritten 227 and the gateway's own connection
    /// all use it: the gateway never connects where a server merely points.
    fn passive(&mut self, code: u16, lines: &mut [String]) -> Result<(), &'static str> {
        let last = lines.last().map(String::as_str).unwrap_or_default();
        let port = if code == 227 { parse_227(last).map(|a| a.port()) } else { parse_229(last) };
        let Some(port) = port else { return Err("425 The server's passive-mode reply was not understood.") };
        let server = SocketAddr::new(self.dst.ip(), port);
        if code == 227
            && let (Some(hp), Some(l)) = (format_hostport(server), lines.last_mut())
        {
            *l = format!("227 Entering Passive Mode ({hp}).");
        }
        match Expected::new((self.peer.ip(), server.ip(), port), self.fx) {
            Ok((expected, rx)) => {
                self.plan = Some(Plan::Passive { expected, rx, server });
                Ok(())
            }
            Err(e) => {
                warn!(target: "ftp", "client={} cannot steer the data connection to {server}: {e}", self.peer);
                Err("425 Cannot arrange the data connection.")
            }
        }
    }
}

/// Writes `line` and CRLF within `wait`: a peer that stops reading cannot
/// hold the session forever.
async fn write_line(w: &mut OwnedWriteHalf, line: &str, wait: std::time::Duration) -> std::io::Result<()> {
    let bytes = format!("{line}\r\n");
    match tokio::time::timeout(wait, w.write_all(bytes.as_bytes())).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}
