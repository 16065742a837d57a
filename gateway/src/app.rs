//! `gateway run`: builds the shared core, brings steering up, serves flows,
//! reloads on SIGHUP, drains and exits on SIGTERM.
//!
//! Order: signal handlers → preflight → policy routing (idempotent: a
//! predecessor's is adopted) → the core (scanner, decider, detection log,
//! counters, dialer) → programs loaded on the pinned maps → listeners
//! opened and registered in this process's sockmap generation → the ICAP
//! and API servers, the control socket and the metrics endpoint bound
//! (the last steps that can fail) → programs attached in the pinned links
//! → new flows switched to this process ([`Steering::activate`]) → a
//! running predecessor told to drain.
//!
//! Stop: the listeners close (new flows go to a successor, or `when_down`
//! applies), flows in progress get `drain_timeout` to finish, then the
//! process exits. Steering and routing stay: they belong to whoever runs
//! next (`gateway detach` removes them).

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    task::JoinSet,
};
use tracing::{error, info, warn};

use crate::{
    cache::VerdictCache,
    config::Config,
    control,
    decide::Decider,
    detections::Detections,
    metrics,
    net::Dialer,
    notify,
    proxy::{
        self, Current, Kind, Proxy, Shared,
        ftp::FtpContext,
        http::{HttpContext, page::BlockPage},
        limits::Caps,
        tls::TlsContext,
    },
    reload,
    scan::Scanner,
    serve::Servers,
    stats::Stats,
    steering::{Steering, pin, preflight, routing::PolicyRouting},
};

/// File descriptors one connection may use at most: client and server
/// sockets, a spool file, two splice pipes.
const FDS_PER_CONNECTION: u64 = 6;
/// Descriptors kept for everything else (listeners, maps, logs, scanners).
const FDS_SPARE: u64 = 1024;

/// How `gateway run` was asked to start.
pub struct RunOptions {
    /// The configuration file (re-read on reload).
    pub config_path: PathBuf,
    /// Replace a running gateway instead of refusing to start beside it.
    pub takeover: bool,
}

/// Runs the gateway until SIGTERM or SIGINT (and its drain).
pub async fn run(mut config: Config, opts: RunOptions) -> anyhow::Result<()> {
    // First of all: a SIGTERM or SIGHUP that arrives while the gateway
    // starts (systemd, a test, an admin) waits for the loop below instead of
    // killing the process with the signal's default action.
    let signals = Signals::new()?;
    preflight::check()?;
    fit_fd_limit(&mut config);
    let routing = routing_of(&config);
    routing.install().await.context("installing the policy routing for steered packets")?;
    info!("policy routing: fwmark {:#x} → table {} (priority {})", routing.fwmark, routing.table, routing.priority);
    let watch = tokio::spawn(watch_routing(routing));
    let result = serve(config, &opts, signals).await;
    watch.abort();
    result
}

/// The signals `gateway run` handles, registered before anything else.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// `gateway detach`: removes the pinned steering (its programs detach as
/// the last pin goes) and the policy routing. A gateway still running
/// keeps serving the flows it has, but no new ones are steered.
pub async fn detach(config: &Config) -> anyhow::Result<()> {
    let removed = pin::remove_all(&config.steering.pin_dir).context("removing the pinned steering")?;
    routing_of(config).remove().await.context("removing the policy routing")?;
    info!("detached: {removed} pinned maps and links removed, policy routing removed");
    Ok(())
}

fn routing_of(config: &Config) -> PolicyRouting {
    let s = &config.steering;
    PolicyRouting { fwmark: s.fwmark, table: s.route_table, priority: s.rule_priority }
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
/// The counters carry over a reload.
fn shared(config: &Config, stats: Arc<Stats>) -> anyhow::Result<Shared> {
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
    Ok(Shared { scanner, stats, dialer: Arc::new(dialer) })
}

/// The proxy's context for `config`; `keep` carries the connection caps and
/// the FTP data waiters over a reload (connections in progress hold them).
fn proxy_context(config: &Config, shared: &Shared, steering: &Steering, keep: Option<&Proxy>) -> anyhow::Result<Proxy> {
    let page = BlockPage::load(&config.http.block_page)
        .with_context(|| format!("reading the block page {}", config.http.block_page.display()))?;
    let p = &config.proxy;
    let caps = match keep {
        Some(old) => {
            old.caps.set_limits(p.max_connections, p.max_connections_per_client);
            old.caps.clone()
        }
        None => Caps::new(p.max_connections, p.max_connections_per_client),
    };
    let ftp = FtpContext {
        cfg: config.ftp.clone(),
        shared: shared.clone(),
        expectations: steering.expectations(),
        waiters: keep.map(|old| old.ftp.waiters.clone()).unwrap_or_default(),
    };
    let http = HttpContext { cfg: config.http.clone(), shared: shared.clone(), page };
    let tls = match config.tls.intercept {
        true => Some(Arc::new(TlsContext::new(&config.tls).context("setting up TLS interception")?)),
        false => None,
    };
    Ok(Proxy { config: p.clone(), shared: shared.clone(), caps, http, ftp, tls })
}

/// Accept loops: the ones that stop first when draining, and the FTP data
/// listener, which stays until the last transfer is done.
struct Listeners {
    accepting: JoinSet<()>,
    data: JoinSet<()>,
}

/// Opens every listener and registers it in this process's generation.
fn listen(config: &Config, steering: &mut Steering, current: &Arc<Current>) -> anyhow::Result<Listeners> {
    let p = &config.proxy;
    let mut l = Listeners { accepting: JoinSet::new(), data: JoinSet::new() };
    let mut kinds = vec![
        (Kind::Http, p.http_listener_port),
        (Kind::FtpControl, p.ftp_listener_port),
        (Kind::FtpData, p.ftp_data_listener_port),
    ];
    if config.tls.intercept {
        kinds.push((Kind::Tls, p.tls_listener_port));
    }
    for (kind, port) in kinds {
        let families: &[bool] = if p.ipv6 { &[false, true] } else { &[false] };
        for &v6 in families {
            let listener = open_listener(kind, port, v6, steering.previous_owner().is_some())?;
            let local = listener.local_addr()?;
            steering.register_listener(kind.slot_kind(), local, &listener)?;
            let set = if kind == Kind::FtpData { &mut l.data } else { &mut l.accepting };
            set.spawn(proxy::serve(listener, kind, current.clone()));
        }
    }
    Ok(l)
}

/// A transparent listener on `port`, or, while taking over from a gateway
/// that still holds that port, on a port of the kernel's choice: steered
/// flows reach a listener through the sockmap, never by its port, and
/// SO_REUSEPORT is not an option (bpf_sk_assign refuses such sockets).
fn open_listener(kind: Kind, port: u16, v6: bool, taking_over: bool) -> anyhow::Result<tokio::net::TcpListener> {
    let what = || format!("opening the {} listener on port {port}", kind.name());
    match proxy::listener::transparent(port, v6) {
        Err(e) if taking_over && e.kind() == std::io::ErrorKind::AddrInUse => {
            let l = proxy::listener::transparent(0, v6).with_context(what)?;
            info!(
                "the {} listener is on port {} while the previous gateway drains port {port}",
                kind.name(),
                l.local_addr()?.port()
            );
            Ok(l)
        }
        other => other.with_context(what),
    }
}

async fn serve(config: Config, opts: &RunOptions, signals: Signals) -> anyhow::Result<()> {
    let stats = Arc::new(Stats::default());
    let shared = shared(&config, stats.clone())?;
    let mut steering = Steering::load(&config.steering, opts.takeover, config.log.ebpf)?;
    let program_log = steering.take_logger();
    let current = Arc::new(ArcSwap::from_pointee(proxy_context(&config, &shared, &steering, None)?));
    let listeners = listen(&config, &mut steering, &current)?;
    // Everything that can still fail comes before new flows are switched
    // here and a predecessor is told to drain: a takeover that fails leaves
    // the running gateway serving.
    let mut tasks = JoinSet::new();
    let servers = Servers::start(&config.icap_server, &config.api_server, &shared.scanner, &mut tasks).await?;
    let control_socket = (!config.control.socket.as_os_str().is_empty())
        .then(|| {
            control::bind(&config.control.socket)
                .with_context(|| format!("opening the control socket {}", config.control.socket.display()))
        })
        .transpose()?;
    let metrics_listener = config
        .metrics
        .addr()
        .map(|addr| metrics::serve::bind(addr).with_context(|| format!("opening the metrics endpoint {addr}")))
        .transpose()?;
    steering.attach(&config.steering)?;
    steering.activate()?;
    if let Some(pid) = steering.previous_owner() {
        hand_over(pid);
    }
    let steering = Arc::new(steering);

    let (reloads, mut reload_requests) = mpsc::channel(4);
    let sources = control::Sources {
        steering: steering.clone(),
        stats: stats.clone(),
        scanner: shared.scanner.clone(),
        servers,
        reload: Some(reloads),
    };
    if let Some(sock) = control_socket {
        tasks.spawn(control::serve(sock, sources.clone()));
    }
    if let Some(listener) = metrics_listener {
        tasks.spawn(metrics::serve(listener, sources.clone()));
    }

    info!(
        "gateway running: interfaces {:?}, http ports {:?}, ftp ports {:?}, xdp {:?}",
        config.steering.interfaces, config.steering.http_ports, config.steering.ftp_ports, config.steering.xdp_mode
    );
    tasks.spawn(give_back_memory());
    if let Some(log) = program_log {
        tasks.spawn(program_log_lines(log));
    }
    notify::ready();
    tasks.spawn(notify::watchdog());
    tasks.spawn(greet(shared.scanner.clone()));

    let mut live =
        Live { config, steering: steering.clone(), current, stats: stats.clone(), path: opts.config_path.clone() };
    let Signals { mut term, mut int, mut hup } = signals;
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: draining"); break; }
            _ = int.recv() => { info!("SIGINT: draining"); break; }
            _ = hup.recv() => { let _ = live.reload(); }
            Some(reply) = reload_requests.recv() => { let _ = reply.send(live.reload()); }
        }
    }
    notify::stopping();
    drain(listeners, &stats, live.config.proxy.drain_timeout.0).await;
    let successor = !steering.owned();
    if let Err(e) = steering.release() {
        warn!("giving up the steering: {e}");
    }
    let report = control::Report::collect(&sources);
    info!("final counters: {}", serde_json::to_string(&report).unwrap_or_default());
    tasks.shutdown().await;
    // A successor has bound the control socket anew at the same path.
    if !successor && !live.config.control.socket.as_os_str().is_empty() {
        let _ = std::fs::remove_file(&live.config.control.socket);
    }
    Ok(())
}

/// Reads the eBPF programs' log records as they come (`[log] ebpf`).
async fn program_log_lines(log: crate::steering::ProgramLog) {
    use tokio::io::{Interest, unix::AsyncFd};
    // SAFETY: the logger owns its ring buffer map and with it the file
    // descriptor it reports, open and the same for as long as it lives; the
    // AsyncFd owns the logger.
    let mut fd = match unsafe { AsyncFd::register_with_interest(log, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => return warn!("reading the eBPF programs' log: {e}"),
    };
    while let Ok(mut ready) = fd.readable_mut().await {
        ready.get_inner_mut().flush();
        ready.clear_ready();
    }
}

/// Logs whether the scanner answers (not fatal: scanning fails closed, or
/// open, per request).
async fn greet(scanner: Arc<Scanner>) {
    match scanner.health().await {
        Ok(v) => info!("scanner: {} answers: {v}", scanner.backend().describe()),
        Err(e) => warn!("scanner: {} does not answer yet: {e}", scanner.backend().describe()),
    }
}

/// Tells the gateway this one took over from to drain and exit.
fn hand_over(pid: u32) {
    use nix::{sys::signal, unistd::Pid};
    let pid_t = i32::try_from(pid).unwrap_or(0);
    match signal::kill(Pid::from_raw(pid_t), signal::Signal::SIGTERM) {
        Ok(()) => info!("took over from the gateway with pid {pid}; it drains its flows and exits"),
        Err(e) => warn!("took over from the gateway with pid {pid}, but could not tell it to drain: {e}"),
    }
}

/// How long the listeners keep accepting once a stop begins: handshakes
/// that reached them just before a successor took new flows over complete
/// within a round trip, and closing a listener would reset them.
const ACCEPT_GRACE: Duration = Duration::from_millis(500);

/// Stops accepting, waits up to `timeout` for the flows in progress, then
/// closes the FTP data listener (and, by returning, what is left).
async fn drain(mut l: Listeners, stats: &Stats, timeout: Duration) {
    tokio::time::sleep(ACCEPT_GRACE).await;
    l.accepting.shutdown().await;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut active = stats.snapshot().flows_active;
    while active > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        active = stats.snapshot().flows_active;
    }
    if active > 0 {
        warn!("drain: {active} flows still open after {timeout:?}; closing them");
    } else {
        info!("drain: every flow finished");
    }
    l.data.shutdown().await;
}

/// What a reload changes.
struct Live {
    config: Config,
    steering: Arc<Steering>,
    current: Arc<Current>,
    stats: Arc<Stats>,
    path: PathBuf,
}

impl Live {
    /// Re-reads the file and switches to it: steering maps in place, a new
    /// proxy context for new connections. Returns the answer for `gateway
    /// reload`; on any failure the running configuration stays.
    fn reload(&mut self) -> String {
        let result = self.try_reload();
        if result.is_err() {
            notify::reloaded();
        }
        match result {
            Ok(msg) => {
                info!("reload: {msg}");
                format!("ok: {msg}")
            }
            Err(e) => {
                error!("reload refused, still running on the previous configuration: {e:#}");
                format!("error: {e:#}")
            }
        }
    }

    fn try_reload(&mut self) -> anyhow::Result<String> {
        notify::reloading();
        let reread = reload::reread(&self.path, &self.config)?;
        let mut config = reread.config;
        fit_fd_limit(&mut config);
        let shared = shared(&config, self.stats.clone())?;
        let old = self.current.load_full();
        let ctx = proxy_context(&config, &shared, &self.steering, Some(&old))?;
        self.steering.reconfigure(&config.steering)?;
        self.current.store(Arc::new(ctx));
        self.config = config;
        notify::reloaded();
        Ok(if reread.pending.is_empty() {
            format!("{} applied", self.path.display())
        } else {
            format!(
                "{} applied; changes to {} take effect at the next restart",
                self.path.display(),
                reread.pending.join(", ")
            )
        })
    }
}
