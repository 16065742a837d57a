//! `gateway run`: builds the shared core, brings steering up, serves flows,
//! tears down on a signal.
//!
//! Order: preflight → routing guard → policy routing → the core (scanner,
//! decider, detection log, counters, dialer) → programs loaded → listeners
//! opened and registered in the sockmap → programs attached (so no SYN is
//! ever steered to an empty slot) → control socket → wait for a signal.

use std::sync::Arc;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::{
    cache::VerdictCache,
    config::Config,
    control,
    decide::Decider,
    detections::Detections,
    net::Dialer,
    proxy::{
        self, Kind, Proxy, Shared,
        ftp::FtpContext,
        http::{HttpContext, page::BlockPage},
        limits::Caps,
    },
    scan::Scanner,
    stats::Stats,
    steering::{Steering, guard, preflight, routing::PolicyRouting},
};

/// File descriptors one connection may use at most: client and server
/// sockets, a spool file, two splice pipes.
const FDS_PER_CONNECTION: u64 = 6;
/// Descriptors kept for everything else (listeners, maps, logs, scanners).
const FDS_SPARE: u64 = 1024;

/// Runs the gateway until SIGTERM or SIGINT.
pub async fn run(mut config: Config) -> anyhow::Result<()> {
    preflight::check()?;
    fit_fd_limit(&mut config);
    let s = &config.steering;
    let routing = PolicyRouting::claim(s.fwmark, s.route_table, s.rule_priority)
        .await
        .context("choosing a routing slot for steered packets")?;
    // The guard first: from here on, however we die, the routing goes too.
    let guard = guard::spawn(routing).context("starting the routing guard process")?;
    routing.install().await.context("installing the policy routing for steered packets")?;
    info!("policy routing: fwmark {:#x} → table {} (priority {})", routing.fwmark, routing.table, routing.priority);
    let watch = tokio::spawn(watch_routing(routing));

    let result = serve(&config).await;
    watch.abort();

    let removed = routing.remove().await.context("removing the policy routing");
    drop(guard);
    result.and(removed)
}

/// Checks every few seconds that this instance's routing is still in
/// place; if someone removed it, says so and puts it back (without it,
/// steered packets are dropped by the kernel and the gateway serves
/// nothing).
async fn watch_routing(routing: PolicyRouting) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        if matches!(routing.present().await, Ok(false)) {
            tracing::error!(
                "the policy routing for steered packets (fwmark {:#x}, table {}) disappeared under this gateway; reinstalling it",
                routing.fwmark,
                routing.table
            );
            if let Err(e) = routing.install().await {
                tracing::error!("reinstalling the policy routing failed: {e}");
            }
        }
    }
}

/// Returns freed heap memory to the system every few seconds. glibc keeps
/// what a burst of connections freed in its arenas (measured: 40 MiB
/// before a load of 200 clients, 155 MiB after it); trimming gives it
/// back, so that the gateway's footprint follows its load.
async fn give_back_memory() {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim only releases free memory; no pointer is touched.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// Raises the soft file-descriptor limit to the hard one, and lowers
/// `max_connections` if even that cannot hold them all.
fn fit_fd_limit(config: &mut Config) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return };
    let limit = if setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() { hard } else { soft };
    let fits = (limit.saturating_sub(FDS_SPARE) / FDS_PER_CONNECTION) as usize;
    if fits < config.proxy.max_connections {
        warn!(
            "the file-descriptor limit ({limit}) holds {fits} connections; proxy.max_connections lowered from {} to {fits} (raise LimitNOFILE)",
            config.proxy.max_connections
        );
        config.proxy.max_connections = fits.max(1);
    }
    info!("file-descriptor limit {limit}, up to {} connections", config.proxy.max_connections);
}

/// The scanning core and what both protocols share, checked before
/// anything is steered: a gateway that cannot hold bodies must not start.
fn shared(config: &Config) -> anyhow::Result<Shared> {
    let scan = &config.scan;
    std::fs::create_dir_all(&scan.spool_dir)
        .with_context(|| format!("creating the spool directory {}", scan.spool_dir.display()))?;
    tempfile::tempfile_in(&scan.spool_dir)
        .with_context(|| format!("the spool directory {} is not writable", scan.spool_dir.display()))?;
    let detections = Arc::new(
        Detections::open(&config.log.detections)
            .with_context(|| format!("opening the detection log {}", config.log.detections.display()))?,
    );
    let cache = VerdictCache::new(scan.cache_ttl.0, scan.cache_entries);
    let decider = Arc::new(Decider::new(scan.policy(config.http.undecodable), cache, detections));
    let scanner = Arc::new(Scanner::new(scan, decider)?);
    let p = &config.proxy;
    let dialer = Dialer::new(
        p.connect_timeout.0,
        p.upstream_mark,
        p.source_addresses.clone(),
        config.steering.deny_destinations.clone(),
    );
    Ok(Shared { scanner, stats: Arc::new(Stats::default()), dialer: Arc::new(dialer) })
}

async fn serve(config: &Config) -> anyhow::Result<()> {
    let shared = shared(config)?;
    let page = BlockPage::load(&config.http.block_page)
        .with_context(|| format!("reading the block page {}", config.http.block_page.display()))?;
    let mut steering = Steering::load(&config.steering)?;
    let http = HttpContext { cfg: config.http.clone(), shared: shared.clone(), page };
    let ftp = FtpContext {
        cfg: config.ftp.clone(),
        shared: shared.clone(),
        expectations: steering.expectations(),
        waiters: Default::default(),
    };
    let p = &config.proxy;
    let caps = Caps::new(p.max_connections, p.max_connections_per_client);
    let ctx = Arc::new(Proxy { config: p.clone(), shared: shared.clone(), caps, http, ftp });

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
    steering.attach(&config.steering)?;

    let steering = Arc::new(steering);
    let sources =
        control::Sources { steering: steering.clone(), stats: shared.stats.clone(), scanner: shared.scanner.clone() };
    if !config.control.socket.as_os_str().is_empty() {
        let sock = control::bind(&config.control.socket)
            .with_context(|| format!("opening the control socket {}", config.control.socket.display()))?;
        tasks.spawn(control::serve(sock, sources.clone()));
    }

    info!(
        "gateway running: interfaces {:?}, http ports {:?}, ftp ports {:?}, xdp {:?}",
        config.steering.interfaces, config.steering.http_ports, config.steering.ftp_ports, config.steering.xdp_mode
    );
    tasks.spawn(give_back_memory());
    let scanner = shared.scanner.clone();
    tokio::spawn(async move {
        // Not fatal: scanning fails closed (or open) per request.
        match scanner.health().await {
            Ok(v) => info!("scanner: {} answers: {v}", scanner.backend().describe()),
            Err(e) => warn!("scanner: {} does not answer yet: {e}", scanner.backend().describe()),
        }
    });

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = int.recv() => info!("SIGINT: shutting down"),
    }
    let report = control::Report::collect(&sources);
    info!("final counters: {}", serde_json::to_string(&report).unwrap_or_default());
    tasks.shutdown().await;
    if !config.control.socket.as_os_str().is_empty() {
        let _ = std::fs::remove_file(&config.control.socket);
    }
    Ok(())
}
