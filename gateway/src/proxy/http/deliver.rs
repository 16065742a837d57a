//! The last stage, for uploads and downloads alike: act on the decision.
//! A block sends the block page (or the ICAP service's own replacement); a
//! pass delivers the held body with a fresh Content-Length, or, when a
//! limit was reached and the policy allows, the held part and then the
//! rest as it comes, unscanned. Also here: what both directions need to
//! start a scan (the decoder, the subject, the scan metadata).

use std::sync::atomic::Ordering;

use super::{
    body::BodyReader,
    conn::Conn,
    decode::{Decoder, Limits},
    error::{Cause, HttpError, Stage},
    exchange::{Flow, Next, Request},
    head::Head,
    outgoing::Out,
    page::{self, PageInfo},
};
use crate::{
    decide::{BlockClass, Decision, Subject, TransferKind},
    scan::{Direction, ScanMeta},
    spool::Spool,
    verdict::Verdict,
};

/// How the upload stage ended.
pub(super) enum Uploaded {
    /// The request went to the server; with the upload's scan note if its
    /// body was scanned.
    Sent(Option<UploadNote>),
    /// The gateway answered the client itself (blocked upload).
    Answered(Next),
}

/// An upload's figures, for the request's log line.
pub(super) struct UploadNote {
    /// The decision's note (`clean`, `unscanned (oversize) …`).
    pub verdict: String,
    /// Body bytes.
    pub bytes: u64,
    /// From the last byte to the verdict.
    pub scan_ms: f64,
}

/// The status of a block page for a decision's class.
pub(super) fn block_status(class: BlockClass) -> u16 {
    match class {
        BlockClass::Unavailable => 503,
        BlockClass::Infected | BlockClass::Policy => 403,
    }
}

impl Flow<'_> {
    /// The subject of a decision about `req`'s body.
    pub(super) fn subject(&self, req: &Request, kind: TransferKind) -> Subject {
        Subject {
            id: req.id.clone(),
            kind,
            client: self.peer,
            server: self.dst,
            object: req.url.clone(),
            validators: String::new(),
            sni: self.secure.as_ref().map(|s| s.sni.clone()),
            upstream_certificate: self.secure.as_ref().map(|s| s.upstream_subject.clone()),
        }
    }

    /// Scan metadata for a body of `req` (and `res`, for downloads).
    pub(super) fn meta(&self, req: &Request, res: Option<&Head>, direction: Direction) -> ScanMeta {
        let ct = match (res, direction) {
            (Some(h), Direction::Download) => h.get("content-type"),
            _ => req.head.get("content-type"),
        };
        ScanMeta {
            name: req.url.clone(),
            content_type: ct.map(str::to_string),
            client: Some(self.peer),
            server: Some(self.dst),
            direction,
            http_request: Some(req.raw.clone()),
            http_response: res.map(Head::response_bytes),
        }
    }

    /// The decoder for a body with these Content-Encoding tokens; when it
    /// cannot be decoded, no decoder and the verdict to fall back on (the
    /// raw bytes are scanned).
    pub(super) fn decoder(&self, codings: &[String]) -> (Option<Decoder>, Option<Verdict>) {
        let limits = Limits { max_decoded: self.hx.cfg.max_decoded_size.0, ratio: self.hx.cfg.max_decode_ratio };
        match Decoder::new(codings, limits) {
            Ok(d) => (d, None),
            Err(e) => (None, Some(e.verdict())),
        }
    }

    /// Sends the block page for `decision` (a replacement when the scanning
    /// service sent one); returns the status sent.
    pub(super) async fn block(&mut self, req: &Request, decision: &Decision, keep: bool) -> Result<u16, HttpError> {
        let Decision::Block { reason, class, replacement, threats } = decision else { return Ok(0) };
        if let Some((out, status)) = replacement.as_deref().and_then(|r| page::replacement(r, &req.id, keep)) {
            self.write_client(&out).await?;
            self.answered = true;
            return Ok(status);
        }
        let status = block_status(*class);
        let info = PageInfo { url: &req.url, reason, threats, client: &self.peer.ip().to_string(), id: &req.id };
        let out = page::blocked(&self.hx.page, status, &info, keep);
        self.write_client(&out).await?;
        self.answered = true;
        Ok(status)
    }

    /// Delivers a held body whole with `head`, re-framed with its length.
    pub(super) async fn deliver_held(&mut self, mut head: Head, held: &Spool) -> Result<(), HttpError> {
        head.remove("transfer-encoding");
        head.set("Content-Length", held.len().to_string());
        let mut out = head.response_bytes();
        self.answered = true;
        match held.memory() {
            // Small bodies leave in the same segment as their head.
            Some(mem) if mem.len() <= 64 * 1024 => {
                out.extend_from_slice(mem);
                self.write_client(&out).await
            }
            _ => {
                self.write_client(&out).await?;
                self.send_held_down(Out::Length, held, 0).await
            }
        }
    }

    /// Held bytes to the client in `out` framing (counted).
    pub(super) async fn send_held_down(&mut self, out: Out, held: &Spool, from: u64) -> Result<(), HttpError> {
        self.counts.down.fetch_add(held.len().saturating_sub(from), Ordering::Relaxed);
        let wait = self.body_wait();
        out.held(&mut self.client, held, from, wait).await.map_err(|e| HttpError::at(Stage::Delivery, e))
    }

    /// The rest of a body from `reader`, unscanned, in `out` framing, and
    /// its end: downloads (`upward` false) or uploads.
    pub(super) async fn stream_rest(
        &mut self,
        reader: &mut BodyReader,
        out: Out,
        upward: bool,
    ) -> Result<(), HttpError> {
        let wait = self.body_wait();
        let (read_stage, write_stage) =
            if upward { (Stage::RequestBody, Stage::Request) } else { (Stage::ResponseBody, Stage::Delivery) };
        loop {
            let Flow { client, upstream, counts, .. } = self;
            let up = upstream.as_mut().ok_or_else(|| HttpError::at(Stage::Request, Cause::Closed))?;
            let (src, dst): (&mut Conn, &mut Conn) = if upward { (client, up) } else { (up, client) };
            let piece = reader.next(src).await.map_err(|e| HttpError::at(read_stage, e))?;
            let Some(piece) = piece else { break };
            let count = if upward { &counts.up } else { &counts.down };
            count.fetch_add(piece.len() as u64, Ordering::Relaxed);
            out.piece(dst, &piece, wait).await.map_err(|e| HttpError::at(write_stage, e))?;
        }
        let Flow { client, upstream, .. } = self;
        let up = upstream.as_mut().ok_or_else(|| HttpError::at(Stage::Request, Cause::Closed))?;
        let dst = if upward { up } else { client };
        out.end(dst, wait).await.map_err(|e| HttpError::at(write_stage, e))
    }

    /// Stage 2: the request body. Scanned and held before the server sees
    /// any of it (REQMOD), or streamed as it came when upload scanning is
    /// off; either way the request goes to the server here.
    pub(super) async fn upload(&mut self, req: &mut Request) -> Result<Uploaded, HttpError> {
        if req.framing == super::head::Framing::None {
            self.send_upstream(&req.head.request_bytes()).await?;
            return Ok(Uploaded::Sent(None));
        }
        let mut reader = BodyReader::new(req.framing, self.body_wait());
        if !self.hx.cfg.scan_uploads {
            self.send_upstream(&req.head.request_bytes()).await?;
            let out = Out::for_body(req.framing, 1, &mut req.head);
            self.stream_rest(&mut reader, out, true).await?;
            return Ok(Uploaded::Sent(None));
        }
        self.scanned_upload(req, reader).await
    }

    async fn scanned_upload(&mut self, req: &mut Request, mut reader: BodyReader) -> Result<Uploaded, HttpError> {
        let subject = self.subject(req, TransferKind::HttpUpload);
        let (mut decoder, fallback) = self.decoder(&req.head.tokens("content-encoding"));
        let scanner = self.hx.shared.scanner.clone();
        let mut session = scanner.start(self.meta(req, None, Direction::Upload), true);
        if let Some(v) = fallback {
            session.fall_back_on(v);
        }
        let wait = self.body_wait();
        let got = super::receive::receive(&mut self.client, &mut reader, &mut decoder, &mut session, None, wait).await;
        let got = got.map_err(|e| match e {
            super::receive::Failed::Body(b) => HttpError::at(Stage::RequestBody, b),
            super::receive::Failed::Client(io) => HttpError::at(Stage::RequestBody, io),
        })?;
        self.counts.up.fetch_add(reader.read(), Ordering::Relaxed);
        let whole = matches!(got, super::receive::Received::Whole);
        let (outcome, held) = if whole {
            let done = session.finish().await;
            (done.outcome, done.body)
        } else {
            let v = session.early().cloned().unwrap_or(Verdict::Clean);
            let outcome = crate::verdict::Outcome::early(v, session.scanned(), false);
            (outcome, session.into_held())
        };
        let decision = scanner.decider().decide(&subject, &outcome, 0);
        let scan_ms = outcome.after_last_byte.as_secs_f64() * 1e3;
        match (&decision, held) {
            (Decision::Pass { note }, Some(held)) => {
                let note = UploadNote { verdict: note.clone(), bytes: held.len(), scan_ms };
                if whole {
                    req.head.remove("transfer-encoding");
                    req.head.set("Content-Length", held.len().to_string());
                    self.send_upstream(&req.head.request_bytes()).await?;
                    self.send_held_up(&held).await?;
                } else {
                    // An allowed oversize body: what is held, then the rest
                    // as it comes, in the client's own framing.
                    let out = Out::for_body(req.framing, 1, &mut req.head);
                    self.send_upstream(&req.head.request_bytes()).await?;
                    self.send_held_framed_up(out, &held).await?;
                    self.stream_rest(&mut reader, out, true).await?;
                }
                Ok(Uploaded::Sent(Some(note)))
            }
            (Decision::Pass { .. }, None) | (Decision::Block { .. }, _) => {
                // The request body was read whole only in the first case;
                // otherwise the connection cannot carry another request.
                let keep = req.keep && whole;
                let status = self.block(req, &decision, keep).await?;
                let verdict = outcome.verdict.name();
                self.log(req, super::exchange::Line { status, bytes: outcome.bytes, verdict, scan_ms: Some(scan_ms) });
                Ok(Uploaded::Answered(if keep { Next::KeepAlive } else { Next::Close("blocked upload".into()) }))
            }
        }
    }

    async fn send_held_up(&mut self, held: &Spool) -> Result<(), HttpError> {
        self.send_held_framed_up(Out::Length, held).await
    }

    async fn send_held_framed_up(&mut self, out: Out, held: &Spool) -> Result<(), HttpError> {
        self.counts.up.fetch_add(held.len(), Ordering::Relaxed);
        let wait = self.body_wait();
        let up = self.upstream().await?;
        out.held(up, held, 0, wait).await.map_err(|e| HttpError::at(Stage::Request, e))
    }
}
