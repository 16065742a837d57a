//! Stage 5: the response body. Passed on unscanned where there is nothing
//! to scan; otherwise refused at once if its URL is known infected, else
//! received, decoded and scanned (trickling if the verdict is slow), and
//! handed to the decision.

use std::sync::atomic::Ordering;

use super::{
    body::{BodyError, BodyReader},
    decode::Decoder,
    deliver::UploadNote,
    error::{HttpError, Stage},
    exchange::{Flow, Line, Next, Request},
    head::Framing,
    outgoing::Out,
    receive::{Failed, Received, receive, sleep_until},
    response::{Response, rules::Coding},
    trickle::Trickle,
};
use crate::{
    decide::{Decision, Subject, TransferKind},
    net::reset_on_close,
    scan::{Direction, Held},
    spool::Spool,
    verdict::Outcome,
};

/// What the client is owed after the verdict.
struct Received2 {
    subject: Subject,
    framing: Framing,
    client_alive: bool,
    trickle: Option<Trickle>,
}

impl Flow<'_> {
    /// Stage 5 and the decision: the response body to the client, or the
    /// block page instead.
    pub(super) async fn download(
        &mut self,
        req: &Request,
        mut res: Response,
        up: Option<UploadNote>,
    ) -> Result<Next, HttpError> {
        let framing = res.framing;
        let upstream_keep = res.server_keep && framing != Framing::Close;
        // The gateway re-frames scanned bodies with a length, so even a
        // close-delimited one can leave the client's connection open.
        let client_alive = req.keep && (res.server_keep || framing == Framing::Close);
        if !client_alive {
            res.head.set("Connection", "close");
        }
        if framing == Framing::None || !self.hx.cfg.scan_downloads {
            return self.pass_through(req, res, framing, client_alive, upstream_keep, up).await;
        }
        let mut subject = self.subject(req, TransferKind::HttpDownload);
        subject.validators = res.head.validators();
        let scanner = self.hx.shared.scanner.clone();
        if let Some(v) = scanner.decider().known(&subject) {
            // Known infected: refused without fetching the body.
            self.upstream = None;
            let decision = scanner.decider().decide(&subject, &Outcome::early(v, 0, true), 0);
            let status = self.block(req, &decision, req.keep).await?;
            self.log(req, Line { status, bytes: 0, verdict: "infected (cached)".into(), scan_ms: Some(0.0) });
            return Ok(if req.keep { Next::KeepAlive } else { Next::Close("blocked".into()) });
        }
        let trickle = self
            .hx
            .cfg
            .trickle_after
            .map(|t| Trickle::new(t.0, self.hx.cfg.trickle_bytes.0 as usize, &res.head, framing, req.head.minor));
        let mut r = Received2 { subject, framing, client_alive, trickle };
        self.scan_download(req, res, upstream_keep, &mut r).await
    }

    async fn scan_download(
        &mut self,
        req: &Request,
        res: Response,
        upstream_keep: bool,
        r: &mut Received2,
    ) -> Result<Next, HttpError> {
        let (mut decoder, fallback) = match &res.coding {
            Coding::Decode(codings) => self.decoder(codings),
            Coding::Identity | Coding::Raw => (None, None),
        };
        let scanner = self.hx.shared.scanner.clone();
        let mut session = scanner.start(self.meta(req, Some(&res.head), Direction::Download), true);
        if let Some(v) = fallback {
            session.fall_back_on(v);
        }
        let mut reader = BodyReader::response(r.framing, self.body_wait());
        let wait = self.body_wait();
        let got = {
            let Flow { client, upstream, .. } = self;
            let up =
                upstream.as_mut().ok_or_else(|| HttpError::at(Stage::ResponseBody, super::error::Cause::Closed))?;
            let trickle = r.trickle.as_mut().map(|t| (t, client));
            receive(up, &mut reader, &mut decoder, &mut session, trickle, wait).await
        };
        let got = match got {
            Ok(g) => g,
            Err(Failed::Body(BodyError::Short(_)))
                if decoded_to_length(decoder.as_ref(), r.framing)
                    && !r.trickle.as_ref().is_some_and(Trickle::started) =>
            {
                // Chromium forgives a body shorter than its Content-Length
                // when it decodes to exactly that length. Not once a
                // trickled head has promised the client that length.
                self.upstream = None;
                Received::Whole
            }
            Err(Failed::Client(e)) => return Err(HttpError::at(Stage::Delivery, e)),
            Err(Failed::Body(e)) => {
                if r.trickle.as_ref().is_some_and(Trickle::started) {
                    self.answered = true;
                }
                return Err(HttpError::at(Stage::ResponseBody, e));
            }
        };
        match got {
            Received::Whole => {
                if !upstream_keep {
                    self.upstream = None;
                }
                let (outcome, held) = self.verdict(session, r).await?;
                self.decided(req, res, r, outcome, held, None).await
            }
            Received::Stopped => {
                let v = session.early().cloned().unwrap_or(crate::verdict::Verdict::Clean);
                let outcome = Outcome::early(v, session.scanned(), false);
                let held = session.into_held();
                self.decided(req, res, r, outcome, held, Some(reader)).await
            }
        }
    }

    /// Waits for the verdict, trickling meanwhile.
    async fn verdict(
        &mut self,
        session: crate::scan::Session,
        r: &mut Received2,
    ) -> Result<(Outcome, Option<Spool>), HttpError> {
        let (mut pending, held) = session.end();
        let wait = self.body_wait();
        loop {
            let due = r.trickle.as_ref().map(Trickle::due);
            tokio::select! {
                o = pending.outcome() => return Ok((o, held)),
                () = sleep_until(due) => {
                    if let (Some(t), Some(h)) = (r.trickle.as_mut(), held.as_ref()) {
                        t.tick(&mut self.client, h as &dyn Held, wait).await.map_err(|e| HttpError::at(Stage::Delivery, e))?;
                    }
                }
            }
        }
    }

    /// Acts on the decision. `rest` is the reader of a body not read to its
    /// end (a limit stopped it): if the policy lets it pass, the rest
    /// follows unscanned.
    async fn decided(
        &mut self,
        req: &Request,
        res: Response,
        r: &mut Received2,
        outcome: Outcome,
        held: Option<Spool>,
        rest: Option<BodyReader>,
    ) -> Result<Next, HttpError> {
        let scanner = self.hx.shared.scanner.clone();
        if let Some(t) = r.trickle.as_ref() {
            self.counts.down.fetch_add(t.written(), Ordering::Relaxed);
        }
        let sent = r.trickle.as_ref().filter(|t| t.started()).map(Trickle::sent);
        let decision = scanner.decider().decide(&r.subject, &outcome, sent.unwrap_or(0));
        if rest.is_some() && matches!(decision, Decision::Block { .. }) {
            // The server's body was not read to its end: that connection
            // cannot carry another exchange.
            self.upstream = None;
        }
        let scan_ms = Some(outcome.after_last_byte.as_secs_f64() * 1e3);
        let verdict = outcome.verdict.name();
        match (&decision, sent, held) {
            (Decision::Block { .. }, Some(sent), _) => {
                // The head and part of the body are out: reset, so that the
                // client is left with an unusable fragment.
                reset_on_close(self.client.tcp());
                let verdict = format!("{verdict} (partially delivered: {sent} bytes, connection reset)");
                self.log(req, Line { status: res.head.status, bytes: sent, verdict, scan_ms });
                Ok(Next::Close("blocked after partial delivery".into()))
            }
            (Decision::Block { .. }, None, _) | (Decision::Pass { .. }, _, None) => {
                let keep = req.keep && rest.is_none() && matches!(decision, Decision::Block { .. });
                let status = self.block(req, &decision, keep).await?;
                self.log(req, Line { status, bytes: outcome.bytes, verdict, scan_ms });
                Ok(if keep { Next::KeepAlive } else { Next::Close("blocked".into()) })
            }
            (Decision::Pass { note }, _, Some(held)) => {
                let mut line = Line { status: res.head.status, bytes: held.len(), verdict: note.clone(), scan_ms };
                if let Some(sent) = sent {
                    line.verdict.push_str(&format!(" (trickled {sent} bytes before the verdict)"));
                }
                let delivered = self.pass(req, res, r, &held, rest).await;
                if let Err(e) = &delivered {
                    // A client that left during delivery still gets its line.
                    line.verdict.push_str(&format!(" (not delivered: {e})"));
                }
                self.log(req, line);
                delivered
            }
        }
    }

    /// Delivers a passed body: whole with its length, or after trickling
    /// the rest of it, or what is held and then the rest as it comes.
    async fn pass(
        &mut self,
        req: &Request,
        res: Response,
        r: &mut Received2,
        held: &Spool,
        rest: Option<BodyReader>,
    ) -> Result<Next, HttpError> {
        let wait = self.body_wait();
        let (out, from) = match r.trickle.as_ref().filter(|t| t.started()) {
            Some(t) => (t.out(), t.sent()),
            None if rest.is_none() => {
                self.deliver_held(res.head, held).await?;
                return Ok(if r.client_alive { Next::KeepAlive } else { Next::Close("closed".into()) });
            }
            None => {
                let mut head = res.head;
                let out = Out::for_body(r.framing, req.head.minor, &mut head);
                self.write_client(&head.response_bytes()).await?;
                self.answered = true;
                (out, 0)
            }
        };
        self.answered = true;
        self.send_held_down(out, held, from).await?;
        match rest {
            Some(mut reader) => {
                self.stream_rest(&mut reader, out, false).await?;
                self.upstream = None;
            }
            None => out.end(&mut self.client, wait).await.map_err(|e| HttpError::at(Stage::Delivery, e))?,
        }
        let keep = r.client_alive && out != Out::Close;
        Ok(if keep { Next::KeepAlive } else { Next::Close("closed".into()) })
    }

    /// A body with nothing to scan, or scanning off: head and body as they
    /// come.
    async fn pass_through(
        &mut self,
        req: &Request,
        res: Response,
        framing: Framing,
        client_alive: bool,
        upstream_keep: bool,
        up: Option<UploadNote>,
    ) -> Result<Next, HttpError> {
        let mut head = res.head;
        let out = Out::as_sent(framing, &mut head);
        self.write_client(&head.response_bytes()).await?;
        self.answered = true;
        let before = self.counts.down.load(Ordering::Relaxed);
        if framing != Framing::None {
            let mut reader = BodyReader::response(framing, self.body_wait());
            self.stream_rest(&mut reader, out, false).await?;
        }
        let bytes = self.counts.down.load(Ordering::Relaxed) - before;
        let line = match up {
            Some(u) => Line {
                status: head.status,
                bytes: u.bytes,
                verdict: format!("{} (upload)", u.verdict),
                scan_ms: Some(u.scan_ms),
            },
            None => Line { status: head.status, bytes, verdict: "unscanned".into(), scan_ms: None },
        };
        self.log(req, line);
        if !upstream_keep {
            self.upstream = None;
        }
        Ok(if client_alive && framing != Framing::Close { Next::KeepAlive } else { Next::Close("closed".into()) })
    }
}

/// Whether a body cut short of its Content-Length decoded to exactly that
/// length (servers that give the decoded length).
fn decoded_to_length(decoder: Option<&Decoder>, framing: Framing) -> bool {
    matches!((decoder, framing), (Some(d), Framing::Length(n)) if d.decoded() == n)
}
