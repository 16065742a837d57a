//! From verdict to decision: what to do with errors and oversize bodies,
//! and the cache that refuses known-infected bodies at once.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::Deserialize;

use crate::verdict::{ErrorKind, Verdict};

/// What to do when there is no clean/infected answer.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Refuse the body (fail closed).
    Block,
    /// Deliver it unscanned (fail open).
    Allow,
}

/// The decision for one body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Deliver.
    Pass,
    /// Refuse; the reason is for the log and the block page.
    Block(String),
}

/// `on_error` and `on_oversize`.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// Scanner errors.
    pub on_error: Action,
    /// Bodies over `max_scan_size` or the scanner's own limit.
    pub on_oversize: Action,
}

impl Policy {
    /// Decides for `verdict`.
    pub fn decide(&self, verdict: &Verdict) -> Decision {
        match verdict {
            Verdict::Clean => Decision::Pass,
            Verdict::Infected { threats, .. } => Decision::Block(format!("infected: {}", threats.join(", "))),
            Verdict::Error { kind, message } => {
                let action = if *kind == ErrorKind::Oversize { self.on_oversize } else { self.on_error };
                match action {
                    Action::Allow => Decision::Pass,
                    Action::Block => Decision::Block(format!("not scanned ({}): {message}", kind.name())),
                }
            }
        }
    }
}

#[derive(Clone, Debug)]
struct Entry {
    threats: Vec<String>,
    engine: String,
    expires: Instant,
}

/// Infected bodies remembered by sha256 and by URL + validators.
#[derive(Debug)]
pub struct VerdictCache {
    ttl: Duration,
    max: usize,
    by_hash: Mutex<HashMap<[u8; 32], Entry>>,
    by_url: Mutex<HashMap<String, Entry>>,
}

impl VerdictCache {
    /// A cache keeping entries for `ttl`, at most `max` of each kind.
    pub fn new(ttl: Duration, max: usize) -> VerdictCache {
        VerdictCache { ttl, max, by_hash: Mutex::default(), by_url: Mutex::default() }
    }

    fn key(url: &str, validators: &str) -> String {
        format!("{url}\n{validators}")
    }

    /// Remembers an infected verdict for `sha256` and, when the object has
    /// validators (ETag, Last-Modified), for `url`.
    pub fn remember(&self, sha256: [u8; 32], url: Option<(&str, &str)>, verdict: &Verdict) {
        let Verdict::Infected { threats, engine, .. } = verdict else {
            return;
        };
        if self.max == 0 {
            return;
        }
        let e = Entry { threats: threats.clone(), engine: engine.clone(), expires: Instant::now() + self.ttl };
        insert(&self.by_hash, sha256, e.clone(), self.max);
        if let Some((u, v)) = url.filter(|(_, v)| !v.is_empty()) {
            insert(&self.by_url, VerdictCache::key(u, v), e, self.max);
        }
    }

    /// A remembered verdict for this body hash.
    pub fn by_hash(&self, sha256: &[u8; 32]) -> Option<Verdict> {
        get(&self.by_hash, sha256)
    }

    /// A remembered verdict for this URL with these validators.
    pub fn by_url(&self, url: &str, validators: &str) -> Option<Verdict> {
        if validators.is_empty() {
            return None;
        }
        get(&self.by_url, &VerdictCache::key(url, validators))
    }
}

fn insert<K: std::hash::Hash + Eq>(map: &Mutex<HashMap<K, Entry>>, k: K, e: Entry, max: usize) {
    let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
    if m.len() >= max {
        let now = Instant::now();
        m.retain(|_, e| e.expires > now);
        if m.len() >= max {
            m.clear();
        }
    }
    m.insert(k, e);
}

fn get<K: std::hash::Hash + Eq + ?Sized, Q>(map: &Mutex<HashMap<Q, Entry>>, k: &K) -> Option<Verdict>
where
    Q: std::borrow::Borrow<K> + std::hash::Hash + Eq,
{
    let m = map.lock().unwrap_or_else(|p| p.into_inner());
    let e = m.get(k).filter(|e| e.expires > Instant::now())?;
    Some(Verdict::Infected { threats: e.threats.clone(), engine: e.engine.clone(), replacement: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions() {
        let p = Policy { on_error: Action::Block, on_oversize: Action::Allow };
        assert_eq!(p.decide(&Verdict::Clean), Decision::Pass);
        assert!(matches!(p.decide(&Verdict::error(ErrorKind::Unavailable, "down")), Decision::Block(_)));
        assert_eq!(p.decide(&Verdict::error(ErrorKind::Oversize, "big")), Decision::Pass);
        let inf = Verdict::Infected { threats: vec!["X".into()], engine: "clamd".into(), replacement: None };
        assert_eq!(p.decide(&inf), Decision::Block("infected: X".into()));
    }

    #[test]
    fn cache_remembers_infected_only() {
        let c = VerdictCache::new(Duration::from_secs(60), 10);
        let inf = Verdict::Infected { threats: vec!["X".into()], engine: "clamd".into(), replacement: None };
        c.remember([1; 32], Some(("http://a/x", "\"etag1\"")), &inf);
        c.remember([2; 32], None, &Verdict::Clean);
        assert!(c.by_hash(&[1; 32]).is_some());
        assert!(c.by_hash(&[2; 32]).is_none());
        assert!(c.by_url("http://a/x", "\"etag1\"").is_some());
        assert!(c.by_url("http://a/x", "\"etag2\"").is_none());
        assert!(c.by_url("http://a/x", "").is_none());
    }

    #[test]
    fn cache_is_bounded() {
        let c = VerdictCache::new(Duration::from_secs(60), 3);
        let inf = Verdict::Infected { threats: vec!["X".into()], engine: "e".into(), replacement: None };
        for i in 0..10u8 {
            c.remember([i; 32], None, &inf);
        }
        assert!(c.by_hash.lock().unwrap().len() <= 3);
        assert!(c.by_hash(&[9; 32]).is_some());
    }
}
