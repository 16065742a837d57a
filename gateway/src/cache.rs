//! Infected bodies remembered by sha256 and by URL + validators, so that a
//! repeated download is refused at once. Bounded in entries and time.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::verdict::Verdict;

#[derive(Clone, Debug)]
struct Entry {
    threats: Vec<String>,
    engine: String,
    expires: Instant,
}

/// The cache of infected verdicts. Only [`crate::decide`] reads and
/// writes it.
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

    fn url_key(url: &str, validators: &str) -> String {
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
        if sha256 != [0; 32] {
            insert(&self.by_hash, sha256, e.clone(), self.max);
        }
        if let Some((u, v)) = url.filter(|(_, v)| !v.is_empty()) {
            insert(&self.by_url, VerdictCache::url_key(u, v), e, self.max);
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
        get(&self.by_url, &VerdictCache::url_key(url, validators))
    }
}

fn insert<K: Hash + Eq>(map: &Mutex<HashMap<K, Entry>>, k: K, e: Entry, max: usize) {
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

fn get<K: Hash + Eq + ?Sized, Q>(map: &Mutex<HashMap<Q, Entry>>, k: &K) -> Option<Verdict>
where
    Q: std::borrow::Borrow<K> + Hash + Eq,
{
    let m = map.lock().unwrap_or_else(|p| p.into_inner());
    let e = m.get(k).filter(|e| e.expires > Instant::now())?;
    Some(Verdict::Infected { threats: e.threats.clone(), engine: e.engine.clone(), replacement: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn infected() -> Verdict {
        Verdict::Infected { threats: vec!["X".into()], engine: "clamd".into(), replacement: None }
    }

    #[test]
    fn remembers_infected_only() {
        let c = VerdictCache::new(Duration::from_secs(60), 10);
        c.remember([1; 32], Some(("http://a/x", "\"etag1\"")), &infected());
        c.remember([2; 32], None, &Verdict::Clean);
        assert!(c.by_hash(&[1; 32]).is_some());
        assert!(c.by_hash(&[2; 32]).is_none());
        assert!(c.by_url("http://a/x", "\"etag1\"").is_some());
        assert!(c.by_url("http://a/x", "\"etag2\"").is_none());
        assert!(c.by_url("http://a/x", "").is_none());
    }

    #[test]
    fn is_bounded() {
        let c = VerdictCache::new(Duration::from_secs(60), 3);
        for i in 1..10u8 {
            c.remember([i; 32], None, &infected());
        }
        assert!(c.by_hash.lock().unwrap().len() <= 3);
        assert!(c.by_hash(&[9; 32]).is_some());
    }
}
