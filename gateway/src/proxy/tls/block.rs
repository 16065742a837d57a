//! The page a client gets when the server's certificate fails the check
//! (`on_upstream_error = "block"`): the gateway completes the client's
//! handshake itself — the way a browser shows its interstitial — and
//! answers the first request with the block page naming the reason. The
//! server is never sent a byte of the request.

use std::{net::SocketAddr, time::Duration};

use tokio::{io::AsyncWriteExt as _, net::TcpStream};
use tracing::info;

use super::TlsContext;
use crate::{
    detections,
    proxy::http::{
        HttpContext,
        conn::Conn,
        head::{self, Limits},
        page::{self, PageInfo},
    },
};

/// Answers the client with the block page for `why` ("has expired", …).
pub async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    sni: &str,
    why: &str,
    tls: &TlsContext,
    hx: &HttpContext,
) -> String {
    let end = format!("blocked: {sni}: the server's certificate {why}");
    let stream = match tls.terminate(client, sni, None).await {
        Ok(s) => s,
        Err(e) => return format!("{end}; {e}"),
    };
    let mut conn = Conn::new(Box::new(stream));
    let limits = Limits { max_bytes: hx.cfg.max_header_bytes.0 as usize, max_headers: hx.cfg.max_headers };
    let (method, target) = match conn.read_head(limits.max_bytes, hx.cfg.head_timeout.0).await {
        Ok(Some(raw)) => match head::parse_request(&raw, limits) {
            Ok(h) => (h.method, h.target),
            Err(_) => ("-".to_string(), "/".to_string()),
        },
        _ => return format!("{end}; the client sent no request"),
    };
    let id = detections::new_id();
    let url = if target.starts_with('/') { format!("https://{sni}{target}") } else { target };
    let reason = format!("The certificate of {sni} {why}, so the gateway did not connect to it.");
    let info = PageInfo { url: &url, reason: &reason, threats: &[], client: &peer.ip().to_string(), id: &id };
    let answer = page::blocked(&hx.page, 403, &info, false);
    let wait = Duration::from_secs(10).min(hx.cfg.body_timeout.0);
    if conn.write_all(&answer, wait).await.is_ok() {
        let _ = tokio::time::timeout(wait, conn.io.shutdown()).await;
    }
    info!(
        target: "http",
        "id={id} client={peer} method={method} url={url} status=403 bytes=0 verdict=blocked (server certificate {why}) scan=- tls={sni}"
    );
    end
}
