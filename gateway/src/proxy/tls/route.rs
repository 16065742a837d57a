//! What happens to a TLS flow, decided from its ClientHello alone:
//! intercepted (decrypted, scanned), spliced (relayed unread, the client
//! sees the real server) or refused. The server's certificate can still
//! turn an interception into a splice or a block page (`mod.rs`).

use super::{
    hello::{self, Hello},
    settings::{Ech, SpliceOrBlock, Tls},
    upstream::HTTP11,
};

/// The decision and, for splices and refusals, why (for the log line).
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// Decrypt and scan, for this server name.
    Intercept(String),
    /// Relay byte for byte.
    Splice(String),
    /// Refuse with a TLS alert.
    Refuse(String),
}

/// Applies `[tls]` to a ClientHello.
pub fn choose(cfg: &Tls, h: &Hello) -> Route {
    let by = |choice: SpliceOrBlock, why: String| match choice {
        SpliceOrBlock::Splice => Route::Splice(why),
        SpliceOrBlock::Block => Route::Refuse(why),
    };
    if h.ech {
        let outer = h.sni.as_deref().unwrap_or("-");
        let why = format!("Encrypted Client Hello (outer name {outer}): the real server name is hidden");
        match cfg.ech {
            Ech::Block => return Route::Refuse(why),
            Ech::Splice => return Route::Splice(why),
            // Decided on the outer name below; rustls ignores the extension.
            Ech::Reject => {}
        }
    }
    let Some(sni) = &h.sni else {
        return by(cfg.no_sni, "no server name (SNI) in the ClientHello".into());
    };
    if let Some(g) = cfg.bypass_sni.iter().find(|g| hello::matches(g, sni)) {
        return Route::Splice(format!("{sni} matches bypass_sni {g:?}"));
    }
    if !h.alpn.is_empty() && !h.alpn.iter().any(|p| p == HTTP11) {
        // Only HTTP/1.1 is scanned; splicing would let h2-only clients
        // walk around the scanner.
        let offered: Vec<String> = h.alpn.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect();
        return Route::Refuse(format!("{sni}: the client offers only {} (ALPN), not http/1.1", offered.join(", ")));
    }
    Route::Intercept(sni.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(sni: Option<&str>, alpn: &[&str], ech: bool) -> Hello {
        Hello { sni: sni.map(str::to_string), alpn: alpn.iter().map(|a| a.as_bytes().to_vec()).collect(), ech }
    }

    #[test]
    fn policy_in_order() {
        let mut cfg = Tls { bypass_sni: vec!["*.bank.example".into()], ..Tls::default() };
        let www = Route::Intercept("www.example".into());
        assert_eq!(choose(&cfg, &hello(Some("www.example"), &["h2", "http/1.1"], false)), www);
        assert_eq!(choose(&cfg, &hello(Some("www.example"), &[], false)), www);
        assert!(matches!(choose(&cfg, &hello(Some("www.example"), &["h2"], false)), Route::Refuse(_)));
        assert!(matches!(choose(&cfg, &hello(Some("a.bank.example"), &["h2"], false)), Route::Splice(_)));
        assert!(matches!(choose(&cfg, &hello(None, &[], false)), Route::Splice(_)));
        assert_eq!(choose(&cfg, &hello(Some("www.example"), &[], true)), www, "ECH rejected: the outer name");
        assert!(matches!(choose(&cfg, &hello(Some("a.bank.example"), &[], true)), Route::Splice(_)));
        cfg.ech = Ech::Block;
        assert!(matches!(choose(&cfg, &hello(Some("www.example"), &[], true)), Route::Refuse(_)));
        cfg.no_sni = SpliceOrBlock::Block;
        cfg.ech = Ech::Splice;
        assert!(matches!(choose(&cfg, &hello(None, &[], false)), Route::Refuse(_)));
        assert!(matches!(choose(&cfg, &hello(Some("www.example"), &[], true)), Route::Splice(_)));
    }
}
