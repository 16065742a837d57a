//! The transparent HTTP/1.x proxy on steered flows.
//!
//! One connection is a loop of exchanges ([`exchange`]), each a sequence of
//! stages: request head (strict) → upload (scanned and held, or streamed) →
//! response head (read as browsers read it, [`response`]) → download
//! (received, decoded, scanned, trickled) → decision → delivery or block. Whatever is delivered is re-framed with the
//! Content-Length of exactly the bytes that were scanned. A stage that
//! fails ends the connection with the answer its [`error::HttpError`]
//! calls for.

pub mod body;
pub mod conn;
pub mod decode;
mod deliver;
mod download;
pub mod error;
mod exchange;
pub mod head;
mod outgoing;
pub mod page;
mod receive;
pub mod response;
pub mod settings;
mod trickle;

use std::net::SocketAddr;

use self::settings::Http;
use self::{exchange::Flow, page::BlockPage};
use super::{Shared, relay::Counts};
use crate::transport::{Secure, Transport};

/// What the HTTP proxy needs besides the connection.
pub struct HttpContext {
    /// `[http]`.
    pub cfg: Http,
    /// The scanner, counters and dialer shared with the FTP gateway.
    pub shared: Shared,
    /// The block page.
    pub page: BlockPage,
}

/// An intercepted TLS flow: the server's TLS stream, already connected,
/// and how to reopen it when it closes.
pub struct Intercepted {
    /// The server's TLS stream.
    pub upstream: Box<dyn Transport>,
    /// Redials the server over TLS.
    pub secure: Secure,
}

/// Serves HTTP on a steered connection until either side is done; the
/// server is connected to once a request head has arrived (cleartext), or
/// already is (`tls`: the same exchanges over the client's and the server's
/// TLS streams). Returns how the connection ended, for the flow log line.
pub async fn serve(
    client: Box<dyn Transport>,
    (peer, dst): (SocketAddr, SocketAddr),
    tls: Option<Intercepted>,
    hx: &HttpContext,
    counts: &Counts,
) -> String {
    // Heads and bodies go out as separate writes; with Nagle on, the peer's
    // delayed ACK turns each small response into a 40 ms wait.
    let _ = client.tcp().set_nodelay(true);
    let flow = Flow::new(hx, client, peer, dst, counts);
    run(match tls {
        Some(t) => flow.intercepted(t.upstream, t.secure),
        None => flow,
    })
    .await
}

async fn run(mut flow: Flow<'_>) -> String {
    loop {
        match flow.exchange().await {
            Ok(exchange::Next::KeepAlive) => continue,
            Ok(exchange::Next::Close(end)) => {
                flow.close_notify().await;
                return end;
            }
            Err(e) => return flow.fail(e).await,
        }
    }
}
