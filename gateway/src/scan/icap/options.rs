//! What an ICAP service says about itself in its OPTIONS answer
//! (RFC 3507 §4.10.2).

use std::time::Duration;

use super::wire::ResponseHead;

/// A service's capabilities, valid for `ttl` after they were fetched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceOptions {
    /// Methods offered (`RESPMOD`, `REQMOD`).
    pub methods: Vec<String>,
    /// The service's ISTag (changes when its signatures change).
    pub istag: Option<String>,
    /// Bytes of preview the service wants; `None`: no preview.
    pub preview: Option<usize>,
    /// Whether the service may answer 204.
    pub allow_204: bool,
    /// Connections the service accepts at once.
    pub max_connections: Option<usize>,
    /// How long these options hold.
    pub ttl: Option<Duration>,
    /// File extensions the service wants previewed (`*` = all).
    pub transfer_preview: Vec<String>,
    /// File extensions the service says need not be sent. Recorded, not
    /// honoured: the gateway scans everything it can.
    pub transfer_ignore: Vec<String>,
    /// File extensions the service wants whole, without preview.
    pub transfer_complete: Vec<String>,
}

fn list(v: Option<&str>) -> Vec<String> {
    v.map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()).filter(|s| !s.is_empty()).collect())
        .unwrap_or_default()
}

impl ServiceOptions {
    /// Reads the options from a 200 answer to OPTIONS.
    pub fn from_head(head: &ResponseHead) -> ServiceOptions {
        ServiceOptions {
            methods: head
                .get("Methods")
                .map(|m| m.split(',').map(|s| s.trim().to_ascii_uppercase()).collect())
                .unwrap_or_default(),
            istag: head.get("ISTag").map(str::to_string),
            preview: head.get("Preview").and_then(|p| p.trim().parse().ok()),
            allow_204: head.get("Allow").is_some_and(|a| a.split(',').any(|x| x.trim() == "204")),
            max_connections: head.get("Max-Connections").and_then(|p| p.trim().parse().ok()).filter(|&n| n > 0),
            ttl: head.get("Options-TTL").and_then(|p| p.trim().parse().ok()).map(Duration::from_secs),
            transfer_preview: list(head.get("Transfer-Preview")),
            transfer_ignore: list(head.get("Transfer-Ignore")),
            transfer_complete: list(head.get("Transfer-Complete")),
        }
    }

    /// Whether `method` is offered (a service listing none is trusted).
    pub fn offers(&self, method: &str) -> bool {
        self.methods.is_empty() || self.methods.iter().any(|m| m == method)
    }

    /// Preview size to use for a body named `name` (URL or file name):
    /// none for Transfer-Complete extensions.
    pub fn preview_for(&self, name: &str) -> Option<usize> {
        let ext = name.rsplit('/').next().and_then(|f| f.rsplit_once('.')).map(|(_, e)| e.to_ascii_lowercase());
        if let Some(ext) = ext
            && self.transfer_complete.contains(&ext)
        {
            return None;
        }
        self.preview
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::icap::wire::parse_head;

    #[test]
    fn rfc_3507_example() {
        let head = parse_head(
            b"ICAP/1.0 200 OK\r\nDate: Mon, 10 Jan 2000  09:55:21 GMT\r\nMethods: RESPMOD\r\n\
Service: FOO Tech Server 1.0\r\nISTag: \"W3E4R7U9-L2E4-2\"\r\nEncapsulated: null-body=0\r\n\
Max-Connections: 1000\r\nOptions-TTL: 7200\r\nAllow: 204\r\nPreview: 2048\r\n\
Transfer-Complete: asp, bat, exe, com\r\nTransfer-Ignore: html\r\nTransfer-Preview: *\r\n\r\n",
        )
        .unwrap();
        let o = ServiceOptions::from_head(&head);
        assert_eq!(o.methods, vec!["RESPMOD"]);
        assert!(o.offers("RESPMOD") && !o.offers("REQMOD"));
        assert_eq!(o.istag.as_deref(), Some("\"W3E4R7U9-L2E4-2\""));
        assert_eq!(o.preview, Some(2048));
        assert!(o.allow_204);
        assert_eq!(o.max_connections, Some(1000));
        assert_eq!(o.ttl, Some(Duration::from_secs(7200)));
        assert_eq!(o.transfer_complete, vec!["asp", "bat", "exe", "com"]);
        assert_eq!(o.transfer_ignore, vec!["html"]);
        assert_eq!(o.preview_for("http://x/setup.EXE"), None);
        assert_eq!(o.preview_for("http://x/page.html"), Some(2048));
    }
}
