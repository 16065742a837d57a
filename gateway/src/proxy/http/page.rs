//! The page shown instead of a blocked download or upload. The admin can
//! replace the built-in template (`[http] block_page`); placeholders:
//! `{{url}}`, `{{reason}}`, `{{threats}}`, `{{client}}`, `{{time}}`, `{{id}}`.

use std::path::Path;

/// The built-in template.
pub const BUILTIN: &str = r#"<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Blocked by the gateway</title></head>
<body style="font-family:sans-serif;max-width:40em;margin:3em auto">
<h1>The transfer was blocked</h1>
<p>{{reason}}</p>
<table>
<tr><th align="left">URL</th><td>{{url}}</td></tr>
<tr><th align="left">Threats</th><td>{{threats}}</td></tr>
<tr><th align="left">Client</th><td>{{client}}</td></tr>
<tr><th align="left">Time</th><td>{{time}}</td></tr>
<tr><th align="left">Reference</th><td>{{id}}</td></tr>
</table>
<p>Quote the reference when you contact your administrator.</p>
</body></html>
"#;

/// A loaded template.
#[derive(Clone, Debug)]
pub struct BlockPage {
    template: String,
}

/// What a page shows.
pub struct PageInfo<'a> {
    /// The URL.
    pub url: &'a str,
    /// Why (one sentence).
    pub reason: &'a str,
    /// Threat names, if any.
    pub threats: &'a [String],
    /// The client address.
    pub client: &'a str,
    /// The id that is also in the log and the detection record.
    pub id: &'a str,
}

/// HTML-escapes text for a page.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

impl BlockPage {
    /// The built-in page, or the admin's from `path` (empty = built-in).
    pub fn load(path: &Path) -> std::io::Result<BlockPage> {
        if path.as_os_str().is_empty() {
            return Ok(BlockPage { template: BUILTIN.into() });
        }
        Ok(BlockPage { template: std::fs::read_to_string(path)? })
    }

    /// The page for `info`.
    pub fn render(&self, info: &PageInfo<'_>) -> String {
        let threats = if info.threats.is_empty() { "none".to_string() } else { info.threats.join(", ") };
        self.template
            .replace("{{url}}", &escape(info.url))
            .replace("{{reason}}", &escape(info.reason))
            .replace("{{threats}}", &escape(&threats))
            .replace("{{client}}", &escape(info.client))
            .replace("{{time}}", &httpdate::fmt_http_date(std::time::SystemTime::now()))
            .replace("{{id}}", &escape(info.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped() {
        let p = BlockPage { template: BUILTIN.into() };
        let html = p.render(&PageInfo {
            url: "http://x/<script>",
            reason: "infected",
            threats: &["A&B".into()],
            client: "198.18.0.2",
            id: "gw-1",
        });
        assert!(html.contains("http://x/&lt;script&gt;"));
        assert!(html.contains("A&amp;B"));
        assert!(html.contains("gw-1"));
    }
}
