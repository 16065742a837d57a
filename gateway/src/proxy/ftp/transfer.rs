//! One transfer's life in the control session: the data connection it was
//! planned with, the task that moves (and scans) the file, and the
//! server's final reply, held until the verdict and then relayed or
//! replaced (`505 virus found in file: …`, `451 …`).

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::oneshot,
    task::JoinHandle,
};
use tracing::{Instrument as _, info, info_span, warn};

use super::{
    FtpError,
    command::split_command,
    data::{self, Outcome, Scanned, Trickle},
    expect::Expected,
    lines::Lines,
    session::{Next, Session},
};
use crate::{
    decide::{BlockClass, Subject, TransferKind},
    net::{ConnectError, Dialer, reset_on_close},
    scan::{Direction, ScanMeta},
};

/// The data connection arranged for the next transfer.
pub(super) enum Plan {
    /// The client will connect to the server's announced port (steered to us).
    Passive { expected: Expected, rx: oneshot::Receiver<TcpStream>, server: SocketAddr },
    /// The server will connect to our listener; we connect on to the client.
    Active { listener: TcpListener, client: SocketAddr, server: IpAddr },
}

/// A transfer under way.
pub(super) struct Transfer {
    handle: JoinHandle<Outcome>,
    pub verb: String,
    /// The file (for STOU, the name the server chose, once it says).
    pub name: String,
}

impl Drop for Transfer {
    /// A session that ends (client gone, server gone, error) takes its
    /// transfer with it: sockets, spool file and expectation entry.
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// Both ends of a data connection: (server side, client side), and the
/// expectation that keeps steering the client side while it lasts.
type Ends = (TcpStream, TcpStream, Option<Expected>);

async fn connect(dialer: &Dialer, to: SocketAddr) -> Result<TcpStream, String> {
    dialer.connect(to).await.map_err(|e: ConnectError| e.to_string())
}

/// Waits for the data connection of `plan` and makes the other half.
async fn open(plan: Plan, dialer: &Dialer, wait: Duration) -> Result<Ends, String> {
    match plan {
        Plan::Passive { expected, rx, server } => {
            let client = match tokio::time::timeout(wait, rx).await {
                Ok(Ok(c)) => c,
                _ => return Err("the client never opened the data connection".into()),
            };
            match connect(dialer, server).await {
                Ok(s) => Ok((s, client, Some(expected))),
                Err(e) => {
                    reset_on_close(&client);
                    Err(e)
                }
            }
        }
        Plan::Active { listener, client, server } => {
            let server_side = accept_from(&listener, server, wait).await?;
            match connect(dialer, client).await {
                Ok(c) => Ok((server_side, c, None)),
                Err(e) => {
                    reset_on_close(&server_side);
                    Err(e)
                }
            }
        }
    }
}

/// The server's connection to an active-mode listener; connections from
/// any other address are reset (the listener's port is guessable).
async fn accept_from(listener: &TcpListener, server: IpAddr, wait: Duration) -> Result<TcpStream, String> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, listener.accept()).await {
            Ok(Ok((s, peer))) if peer.ip() == server => return Ok(s),
            Ok(Ok((s, peer))) => {
                warn!(target: "ftp", "active-mode data connection from {peer} reset: only the server {server} may connect");
                reset_on_close(&s);
            }
            Ok(Err(e)) => return Err(format!("accepting the server's data connection: {e}")),
            Err(_) => return Err("the server never opened the data connection".into()),
        }
    }
}

impl Session<'_> {
    /// Starts the task that moves the file of `verb` over the planned data
    /// connection (nothing to do without one).
    pub fn start_transfer(&mut self, verb: &str, arg: &str) {
        let Some(plan) = self.plan.take() else { return };
        let fx = self.fx;
        let wait = fx.cfg.data_timeout.0;
        let upload = matches!(verb, "STOR" | "STOU" | "APPE");
        let scanned = fx.cfg.scan && (upload || verb == "RETR");
        let trickle = Trickle { every: fx.cfg.trickle_every.0, bytes: fx.cfg.trickle_bytes.0 };
        // STOU's argument, where a client gives one, is only a hint: the
        // file to delete is the one the server names in its 150 reply.
        let name = if verb == "STOU" { String::new() } else { arg.to_string() };
        let object = format!("ftp://{}/{}", self.dst, arg.trim_start_matches('/'));
        let kind = if upload { TransferKind::FtpUpload } else { TransferKind::FtpDownload };
        let subject = Subject::new(kind, self.peer, self.dst, object.clone());
        let direction = if upload { Direction::Upload } else { Direction::Download };
        let meta = ScanMeta { client: Some(self.peer), server: Some(self.dst), ..ScanMeta::named(&object, direction) };
        let scanner = fx.shared.scanner.clone();
        let dialer = fx.shared.dialer.clone();
        let ascii = self.ascii;
        let span = info_span!("transfer", id = %subject.id, verb, object = %object);
        let handle = tokio::spawn(
            async move {
                // `_expected` keeps the eBPF entry for the data connection's
                // whole life: its packets are steered by it.
                let (server_side, client_side, _expected) = match open(plan, &dialer, wait).await {
                    Ok(ends) => ends,
                    Err(why) => return Outcome::Failed(why),
                };
                if !scanned {
                    return data::relayed(server_side, client_side).await;
                }
                let (from, to) = if upload { (client_side, server_side) } else { (server_side, client_side) };
                data::scanned(from, to, Scanned { scanner, subject, meta, ascii, trickle, stall: wait }).await
            }
            .instrument(span),
        );
        self.transfer = Some(Transfer { handle, verb: verb.to_string(), name });
    }

    /// The server's final reply to a transfer: held until our side of the
    /// transfer is done, then relayed, or replaced when the file was
    /// blocked. Commands that arrive meanwhile wait (bounded); ABOR is
    /// answered at once.
    pub async fn end_transfer(
        &mut self,
        mut t: Transfer,
        code: u16,
        lines: Vec<String>,
        cr: &mut Lines,
        sr: &mut Lines,
    ) -> Result<Next, FtpError> {
        let outcome = if code >= 400 {
            // The server refused or failed: there is nothing to wait for.
            t.handle.abort();
            Outcome::Failed(format!("server replied {code}"))
        } else {
            let idle = self.fx.cfg.idle_timeout.0;
            loop {
                tokio::select! {
                    o = &mut t.handle => break o.unwrap_or_else(|e| Outcome::Failed(format!("transfer task: {e}"))),
                    l = cr.line(Some(idle)) => match l {
                        Ok(Some(line)) if split_command(&line).0 == "ABOR" => {
                            t.handle.abort();
                            info!(target: "ftp", "client={} {} {} aborted by the client before the verdict", self.peer, t.verb, t.name);
                            crate::metrics::events().ftp_transfer(&t.verb, "aborted");
                            self.tell_client("426 Transfer aborted; the data connection was closed.").await?;
                            self.tell_client("226 ABOR command successful.").await?;
                            return Ok(Next::Go);
                        }
                        Ok(Some(line)) => self.defer(line)?,
                        Ok(None) => return Err(FtpError::ClientGone),
                        Err(e) => return Err(FtpError::ClientLine(e)),
                    },
                }
            }
        };
        self.report(&t, code, lines, outcome, sr).await
    }

    /// Tells the client how the transfer ended, and logs it.
    async fn report(
        &mut self,
        t: &Transfer,
        code: u16,
        lines: Vec<String>,
        outcome: Outcome,
        sr: &mut Lines,
    ) -> Result<Next, FtpError> {
        let upload = matches!(t.verb.as_str(), "STOR" | "APPE" | "STOU");
        let ended = match &outcome {
            Outcome::Delivered { .. } => "delivered",
            Outcome::Blocked { class: BlockClass::Infected, .. } => "infected",
            Outcome::Blocked { .. } => "blocked",
            Outcome::Failed(_) => "failed",
        };
        crate::metrics::events().ftp_transfer(&t.verb, ended);
        match outcome {
            Outcome::Blocked { reason, class, threats, trickled, bytes } => {
                info!(target: "ftp", "client={} {} {} bytes={bytes} blocked: {reason} trickled={trickled} server-reply={code}", self.peer, t.verb, t.name);
                let answer = match class {
                    BlockClass::Infected => format!("505 virus found in file: {}", threats.join(", ")),
                    BlockClass::Policy | BlockClass::Unavailable => format!("451 Transfer aborted: {reason}."),
                };
                self.tell_client(&answer).await?;
                if upload {
                    self.delete_fragment(t, trickled, sr).await?;
                }
            }
            Outcome::Delivered { bytes, note, trickled } => {
                info!(target: "ftp", "client={} {} {} bytes={bytes} verdict={note} trickled={trickled} server-reply={code}", self.peer, t.verb, t.name);
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
        Ok(Next::Go)
    }

    /// DELE the fragment an aborted upload left on the server; the reply
    /// goes to the log, not to the client. APPE is the exception: its file
    /// held the user's data before, which a DELE would destroy, so only the
    /// few trickled bytes stay appended (logged).
    async fn delete_fragment(&mut self, t: &Transfer, trickled: u64, sr: &mut Lines) -> Result<(), FtpError> {
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
