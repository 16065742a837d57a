//! `gateway run`: brings steering up, serves flows, tears down on a signal.

use std::sync::Arc;

use anyhow::Context as _;
use log::info;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    config::Config,
    control,
    detections::Detections,
    proxy::{
        self, Context, Kind,
        ftp::FtpContext,
        http::{HttpContext, page::BlockPage},
    },
    scan::Scanner,
    steering::{Steering, guard, preflight, routing::PolicyRouting},
};

/// Runs the gateway until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    preflight::check()?;
    let s = &config.steering;
    let routing = PolicyRouting { fwmark: s.fwmark, table: s.route_table, priority: s.rule_priority };
    // The guard first: from here on, however we die, the routing goes too.
    let guard = guard::spawn(routing).context("starting the routing guard process")?;
    routing.install().await.context("installing the policy routing for steered packets")?;

    let result = serve(&config).await;

    let removed = routing.remove().await.context("removing the policy routing");
    drop(guard);
    result.and(removed)
}

/// The scanner, block page and detection log, checked before anything is
/// steered: a gateway that cannot hold bodies must not start.
fn http_context(config: &Config) -> anyhow::Result<HttpContext> {
    let scan = &config.scan;
    std::fs::create_dir_all(&scan.spool_dir)
        .with_context(|| format!("creating the spool directory {}", scan.spool_dir.display()))?;
    tempfile::tempfile_in(&scan.spool_dir)
        .with_context(|| format!("the spool directory {} is not writable", scan.spool_dir.display()))?;
    let scanner = Arc::new(Scanner::new(scan).map_err(anyhow::Error::msg)?);
    let page = BlockPage::load(&config.http.block_page)
        .with_context(|| format!("reading the block page {}", config.http.block_page.display()))?;
    let detections = Arc::new(
        Detections::open(&config.log.detections)
            .with_context(|| format!("opening the detection log {}", config.log.detections.display()))?,
    );
    Ok(HttpContext { cfg: config.http.clone(), scanner, page, detections })
}

async fn serve(config: &Config) -> anyhow::Result<()> {
    let http = http_context(config)?;
    let mut steering = Steering::start(&config.steering)?;
    let ftp = FtpContext {
        cfg: config.ftp.clone(),
        scanner: http.scanner.clone(),
        detections: http.detections.clone(),
        expectations: steering.expectations(),
        waiters: Default::default(),
    };
    let ctx = Arc::new(Context { config: config.proxy.clone(), stats: Default::default(), http, ftp });

    let p = &config.proxy;
    let mut tasks = tokio::task::JoinSet::new();
    for (kind, port) in [
        (Kind::Http, p.http_listener_port),
        (Kind::FtpControl, p.ftp_listener_port),
        (Kind::FtpData, p.ftp_data_listener_port),
    ] {
        let families: &[bool] = if p.ipv6 { &[false, true] } else { &[false] };
        for &v6 in families {
            let listener = proxy::listener::transparent(port, v6)
                .with_context(|| format!("opening the {} listener on port {port}", kind.name()))?;
            let local = listener.local_addr()?;
            steering.register_listener(kind.slot_kind(), local, &listener)?;
            tasks.spawn(proxy::serve(listener, kind, ctx.clone()));
        }
    }

    let steering = Arc::new(steering);
    if !config.control.socket.as_os_str().is_empty() {
        let sock = control::bind(&config.control.socket)
            .with_context(|| format!("opening the control socket {}", config.control.socket.display()))?;
        tasks.spawn(control::serve(sock, steering.clone(), ctx.clone()));
    }

    info!(
        "gateway running: interfaces {:?}, http ports {:?}, ftp ports {:?}, xdp {:?}",
        config.steering.interfaces, config.steering.http_ports, config.steering.ftp_ports, config.steering.xdp_mode
    );
    let scanner = ctx.http.scanner.clone();
    tokio::spawn(async move {
        // Not fatal: scanning fails closed (or open) per request.
        match scanner.health().await {
            Ok(v) => info!("scanner: {} answers: {v}", scanner.backend().describe()),
            Err(e) => log::warn!("scanner: {} does not answer yet: {e}", scanner.backend().describe()),
        }
    });

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = int.recv() => info!("SIGINT: shutting down"),
    }
    let stats = control::Stats::collect(&steering, &ctx);
    info!("final counters: {}", serde_json::to_string(&stats).unwrap_or_default());
    tasks.shutdown().await;
    if !config.control.socket.as_os_str().is_empty() {
        let _ = std::fs::remove_file(&config.control.socket);
    }
    Ok(())
}
