//! The control socket: a Unix stream socket taking one command line per
//! connection and answering with one line.
//!
//! * `stats` → JSON with the kernel and proxy counters.
//! * `expect add CLIENT SERVER PORT` / `expect del CLIENT SERVER PORT` →
//!   `ok` or `error: …`; steers connections from CLIENT to SERVER:PORT to the
//!   FTP data listener (the FTP proxy does this itself; the command exists
//!   for operators and tests).

use std::{net::IpAddr, path::Path, sync::Arc};

use log::warn;
use serde::Serialize;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};

use crate::{
    proxy::Context,
    stats::ProxySnapshot,
    steering::{KernelStats, Steering},
};

/// Everything `stats` reports.
#[derive(Serialize)]
pub struct Stats {
    /// eBPF counters.
    pub kernel: KernelStats,
    /// Proxy counters.
    pub proxy: ProxySnapshot,
    /// Entries in the expectations map.
    pub expectations: usize,
}

impl Stats {
    /// Reads every counter now.
    pub fn collect(steering: &Steering, ctx: &Context) -> Stats {
        Stats { kernel: steering.stats(), proxy: ctx.stats.snapshot(), expectations: steering.expectations().len() }
    }
}

/// Binds the socket, replacing a stale one.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    UnixListener::bind(path)
}

/// Serves control connections until the task is dropped.
pub async fn serve(listener: UnixListener, steering: Arc<Steering>, ctx: Arc<Context>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let steering = steering.clone();
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &steering, &ctx).await {
                warn!("control connection: {e}");
            }
        });
    }
}

async fn answer(stream: UnixStream, steering: &Steering, ctx: &Context) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read.take(4096)).read_line(&mut line).await?;
    let reply = execute(line.trim(), steering, ctx);
    write.write_all(reply.as_bytes()).await?;
    write.write_all(b"\n").await?;
    write.shutdown().await
}

fn execute(line: &str, steering: &Steering, ctx: &Context) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["stats"] => {
            let stats = Stats::collect(steering, ctx);
            serde_json::to_string(&stats).unwrap_or_else(|e| format!("error: {e}"))
        }
        ["expect", op @ ("add" | "del"), client, server, port] => {
            let parsed = (client.parse::<IpAddr>(), server.parse::<IpAddr>(), port.parse::<u16>());
            let (Ok(client), Ok(server), Ok(port)) = parsed else {
                return "error: expect takes CLIENT-IP SERVER-IP PORT".into();
            };
            let exp = steering.expectations();
            let res = if *op == "add" {
                exp.add(client, server, port, gateway_common::listener::FTP_DATA)
            } else {
                exp.remove(client, server, port)
            };
            match res {
                Ok(()) => "ok".into(),
                Err(e) => format!("error: {e}"),
            }
        }
        _ => format!("error: unknown command {line:?} (stats | expect add|del CLIENT SERVER PORT)"),
    }
}

/// Client side: sends one command and returns the reply line.
pub async fn request(path: &Path, command: &str) -> std::io::Result<String> {
    let mut stream = UnixStream::connect(path).await?;
    stream.write_all(command.as_bytes()).await?;
    stream.write_all(b"\n").await?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).await?;
    Ok(reply.trim_end().to_string())
}
