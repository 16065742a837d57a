//! `[scan.api]`: the antivirus-API backend (`backend = "api"`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::units::Span;

/// `[scan.api]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Api {
    /// Base URLs of the API (`https://host[:port][/path]`); more than one
    /// make a pool.
    #[serde(deserialize_with = "crate::units::one_or_many")]
    pub url: Vec<String>,
    /// File holding the key sent as the `Apikey` header; empty: none.
    pub key_file: PathBuf,
    /// Whole-scan bound: sending the file and getting the answer.
    pub timeout: Span,
    /// PEM file of extra certificate authorities to trust besides the
    /// system's (a private scan farm); empty: the system's only.
    pub ca_file: PathBuf,
    /// Requests in flight per URL at most (lowered by `scan.max_scans`).
    pub max_connections: usize,
}

impl Default for Api {
    fn default() -> Self {
        Api {
            url: vec!["https://api.cloudmersive.com".into()],
            key_file: PathBuf::new(),
            timeout: Span(std::time::Duration::from_secs(60)),
            ca_file: PathBuf::new(),
            max_connections: 16,
        }
    }
}

impl Api {
    /// Checks the URLs.
    pub fn validate(&self, in_use: bool) -> Result<(), String> {
        if in_use && self.url.is_empty() {
            return Err("scan.backend is \"api\" but scan.api.url lists no URL".into());
        }
        for u in &self.url {
            super::ApiUrl::parse(u).map_err(|e| format!("scan.api.url: {e}"))?;
        }
        if self.max_connections == 0 {
            return Err("scan.api.max_connections must be at least 1".into());
        }
        Ok(())
    }
}
