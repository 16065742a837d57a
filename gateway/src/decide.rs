//! From verdict to decision, in one place for every protocol: the verdict
//! cache (by body hash, and by URL with its validators), the policy for
//! failed scans, and the detection record of whatever is blocked. The
//! proxies only act on the [`Decision`].

use std::{net::SocketAddr, sync::Arc};

use crate::{
    cache::VerdictCache,
    detections::{self, Detections, Record},
    policy::{Action, Policy},
    verdict::{ErrorKind, Outcome, Verdict},
};

/// Which way and over which protocol an object travelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferKind {
    /// An HTTP response body.
    HttpDownload,
    /// An HTTP request body.
    HttpUpload,
    /// An FTP RETR.
    FtpDownload,
    /// An FTP STOR, STOU or APPE.
    FtpUpload,
    /// A response body sent to the ICAP server (RESPMOD).
    IcapRespmod,
    /// A request body sent to the ICAP server (REQMOD).
    IcapReqmod,
    /// A file sent to the antivirus API server.
    ApiScan,
}

impl TransferKind {
    /// The name in detection records.
    pub fn name(self) -> &'static str {
        match self {
            TransferKind::HttpDownload => "http-download",
            TransferKind::HttpUpload => "http-upload",
            TransferKind::FtpDownload => "ftp-download",
            TransferKind::FtpUpload => "ftp-upload",
            TransferKind::IcapRespmod => "icap-respmod",
            TransferKind::IcapReqmod => "icap-reqmod",
            TransferKind::ApiScan => "api-scan",
        }
    }
}

/// The object a decision is about.
#[derive(Clone, Debug)]
pub struct Subject {
    /// The request's or transfer's id (log line, record, block page).
    pub id: String,
    /// Direction and protocol.
    pub kind: TransferKind,
    /// The client.
    pub client: SocketAddr,
    /// The server.
    pub server: SocketAddr,
    /// URL or `ftp://server/path`.
    pub object: String,
    /// ETag and Last-Modified (`etag|last-modified`), empty when none: the
    /// URL cache only trusts objects that can be told apart by them.
    pub validators: String,
    /// The server name of an intercepted TLS flow.
    pub sni: Option<String>,
    /// The subject of that flow's server certificate.
    pub upstream_certificate: Option<String>,
}

impl Subject {
    /// A subject with a fresh id and no validators.
    pub fn new(kind: TransferKind, client: SocketAddr, server: SocketAddr, object: String) -> Subject {
        Subject {
            id: detections::new_id(),
            kind,
            client,
            server,
            object,
            validators: String::new(),
            sni: None,
            upstream_certificate: None,
        }
    }
}

/// Why a body is refused, which decides how the client is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockClass {
    /// Malware found (HTTP 403, FTP 505).
    Infected,
    /// Policy: too large, undecodable, modified by the service (HTTP 403,
    /// FTP 451).
    Policy,
    /// The scanner could not answer (HTTP 503, FTP 451).
    Unavailable,
}

/// What to do with a body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Deliver it.
    Pass {
        /// `clean`, or why it goes unscanned, for the log line.
        note: String,
    },
    /// Refuse it; a detection record was written.
    Block {
        /// One sentence for the log and the block page.
        reason: String,
        /// Threat names, when malware was found.
        threats: Vec<String>,
        /// How to tell the client.
        class: BlockClass,
        /// The ICAP service's own HTTP response to show instead, if any.
        replacement: Option<Vec<u8>>,
    },
}

/// The decision maker shared by the HTTP and FTP proxies.
pub struct Decider {
    policy: Policy,
    cache: VerdictCache,
    detections: Arc<Detections>,
}

impl Decider {
    /// A decider with this policy, cache and record sink.
    pub fn new(policy: Policy, cache: VerdictCache, detections: Arc<Detections>) -> Decider {
        Decider { policy, cache, detections }
    }

    /// The policy in force.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// A verdict remembered for this object's URL and validators: known
    /// infected objects are refused before their body is fetched.
    pub fn known(&self, s: &Subject) -> Option<Verdict> {
        let v = self.cache.by_url(&s.object, &s.validators)?;
        crate::metrics::events().cache_hit("url");
        Some(v)
    }

    /// A verdict remembered for a body with this hash.
    pub fn known_body(&self, sha256: &[u8; 32]) -> Option<Verdict> {
        let v = self.cache.by_hash(sha256)?;
        crate::metrics::events().cache_hit("hash");
        Some(v)
    }

    /// Decides on `outcome`, remembers infected bodies, and writes the
    /// detection record of a block. `delivered` counts the bytes that
    /// already reached the receiver (trickling).
    pub fn decide(&self, s: &Subject, outcome: &Outcome, delivered: u64) -> Decision {
        if !outcome.cached {
            self.cache.remember(outcome.sha256, Some((&s.object, &s.validators)), &outcome.verdict);
        }
        let decision = self.judge(&outcome.verdict);
        count(s.kind, outcome, &decision);
        if let Decision::Block { reason, .. } = &decision {
            self.detections.write(&record(s, outcome, reason, delivered));
        }
        decision
    }

    fn judge(&self, v: &Verdict) -> Decision {
        match v {
            Verdict::Clean => Decision::Pass { note: "clean".into() },
            Verdict::Infected { threats, replacement, .. } => Decision::Block {
                reason: format!("infected: {}", threats.join(", ")),
                threats: threats.clone(),
                class: BlockClass::Infected,
                replacement: replacement.clone(),
            },
            Verdict::Modified { engine, replacement, .. } => Decision::Block {
                reason: format!("the scanning service {engine} changed the content"),
                threats: Vec::new(),
                class: BlockClass::Policy,
                replacement: replacement.clone(),
            },
            Verdict::Error { kind, message } => match self.policy.action(*kind) {
                Action::Allow => Decision::Pass { note: format!("unscanned ({}), allowed by policy", kind.name()) },
                Action::Block => Decision::Block {
                    reason: format!("not scanned ({}): {message}", kind.name()),
                    threats: Vec::new(),
                    class: match kind {
                        ErrorKind::Oversize | ErrorKind::Undecodable => BlockClass::Policy,
                        _ => BlockClass::Unavailable,
                    },
                    replacement: None,
                },
            },
        }
    }
}

/// Counts the decision, and the error that led to it if any.
fn count(kind: TransferKind, outcome: &Outcome, decision: &Decision) {
    let events = crate::metrics::events();
    if let Some(k) = outcome.verdict.error_kind() {
        events.scan_failed(k);
    }
    let label = match decision {
        Decision::Pass { .. } => "pass",
        Decision::Block { class: BlockClass::Infected, .. } => "infected",
        Decision::Block { class: BlockClass::Policy, .. } => "policy",
        Decision::Block { class: BlockClass::Unavailable, .. } => "unavailable",
    };
    events.decided(kind.name(), label);
}

/// The one constructor of detection records.
fn record(s: &Subject, o: &Outcome, reason: &str, delivered: u64) -> Record {
    let engine = match &o.verdict {
        Verdict::Infected { engine, .. } | Verdict::Modified { engine, .. } => engine.clone(),
        _ => "policy".into(),
    };
    Record {
        id: s.id.clone(),
        time: detections::now(),
        kind: s.kind.name(),
        client: s.client.to_string(),
        server: s.server.to_string(),
        object: s.object.clone(),
        threats: o.verdict.threats().to_vec(),
        reason: reason.to_string(),
        engine,
        bytes: o.bytes,
        delivered_before_verdict: delivered,
        sni: s.sni.clone(),
        upstream_certificate: s.upstream_certificate.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn decider(policy: Policy) -> Decider {
        let log = Arc::new(Detections::open(std::path::Path::new("")).unwrap());
        Decider::new(policy, VerdictCache::new(Duration::from_secs(60), 10), log)
    }

    fn subject(validators: &str) -> Subject {
        let mut s = Subject::new(
            TransferKind::HttpDownload,
            "198.18.0.2:4000".parse().unwrap(),
            "198.19.0.2:80".parse().unwrap(),
            "http://s/x".into(),
        );
        s.validators = validators.into();
        s
    }

    #[test]
    fn verdicts_become_decisions() {
        let d = decider(Policy { undecodable: Action::Allow, ..Policy::default() });
        let s = subject("");
        let dec = |v: Verdict| d.decide(&s, &Outcome::early(v, 1, false), 0);
        assert_eq!(dec(Verdict::Clean), Decision::Pass { note: "clean".into() });
        assert!(matches!(
            dec(Verdict::error(ErrorKind::Unavailable, "down")),
            Decision::Block { class: BlockClass::Unavailable, .. }
        ));
        assert!(matches!(
            dec(Verdict::error(ErrorKind::Oversize, "big")),
            Decision::Block { class: BlockClass::Policy, .. }
        ));
        assert!(matches!(dec(Verdict::error(ErrorKind::Undecodable, "zz")), Decision::Pass { .. }));
        let modified = Verdict::Modified {
            engine: "icap://x/y".into(),
            replacement: Some(b"HTTP/1.1 200 OK\r\n\r\n".to_vec()),
            body_sha256: None,
        };
        assert!(matches!(dec(modified), Decision::Block { replacement: Some(_), .. }), "never the original");
    }

    #[test]
    fn infected_objects_are_remembered_by_hash_and_url() {
        let d = decider(Policy::default());
        let s = subject("\"e1\"");
        let v = Verdict::Infected { threats: vec!["T".into()], engine: "clamd".into(), replacement: None };
        let o = Outcome { sha256: [7; 32], ..Outcome::early(v, 68, false) };
        assert!(matches!(d.decide(&s, &o, 0), Decision::Block { class: BlockClass::Infected, .. }));
        assert!(d.known(&s).is_some());
        assert!(d.known(&subject("\"e2\"")).is_none());
        assert!(d.known_body(&[7; 32]).is_some());
    }
}
