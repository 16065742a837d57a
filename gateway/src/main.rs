//! The `gateway` command line.

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use clap::{Parser, Subcommand};
use gateway::{
    config::{Config, ScanBackend},
    control,
    scan::{Scanner, files::scan_file},
};

/// Transparent virus-scanning gateway for Linux firewall hosts.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the scanning core alone over ICAP ([icap_server]) and the
    /// antivirus API ([api_server]): no steering, no root needed.
    #[command(visible_alias = "icap-server")]
    Serve {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the gateway (needs root: loads eBPF programs, changes routing).
    Run {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Replace a gateway running here without a gap: this one starts,
        /// takes new flows over, and the old one drains and exits.
        #[arg(long)]
        takeover: bool,
    },
    /// Re-read the running gateway's configuration file (as SIGHUP does).
    Reload {
        /// Control socket of the running gateway.
        #[arg(long, default_value = "/run/gateway/control.sock")]
        socket: PathBuf,
    },
    /// Remove the pinned steering and the policy routing: steered ports are
    /// forwarded as if no gateway had ever run here.
    Detach {
        /// Configuration file (for `[steering]`: pin_dir and routing).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a configuration file and exit: 0 if usable, 2 if not.
    CheckConfig {
        /// Configuration file (TOML).
        file: PathBuf,
    },
    /// Scan files with the configured backend, like clamdscan: exit 0 if all
    /// are clean, 1 if any is infected, 2 if any could not be scanned.
    Scan {
        /// Configuration file whose [scan] section to use.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Use clamd at this address (unix:PATH or tcp:HOST:PORT).
        #[arg(long, conflicts_with = "icap")]
        clamd: Option<String>,
        /// Use this ICAP service (repeat for failover).
        #[arg(long)]
        icap: Vec<String>,
        /// Also print, on stderr, each file's size and the time from its
        /// last byte to the verdict.
        #[arg(long)]
        timings: bool,
        /// Files to scan.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Print the running gateway's counters as JSON.
    Stats {
        /// Control socket of the running gateway.
        #[arg(long, default_value = "/run/gateway/control.sock")]
        socket: PathBuf,
    },
    /// Add or remove an expected connection (steered to the FTP data listener).
    Expect {
        /// `add` or `del`.
        #[arg(value_parser = ["add", "del"])]
        op: String,
        /// Client address.
        client: std::net::IpAddr,
        /// Server address.
        server: std::net::IpAddr,
        /// Server port.
        port: u16,
        /// Control socket of the running gateway.
        #[arg(long, default_value = "/run/gateway/control.sock")]
        socket: PathBuf,
    },
    /// The CA for TLS interception (`[tls]`).
    Ca {
        #[command(subcommand)]
        action: CaAction,
    },
}

#[derive(Subcommand)]
enum CaAction {
    /// Write a fresh CA certificate (DIR/ca.pem, for the clients) and key
    /// (DIR/ca.key, mode 0600); existing files are never overwritten.
    New {
        /// Directory to write into.
        #[arg(long)]
        out: PathBuf,
    },
    /// Internal (benchmarks): time minting leaves from a CA, cold and from
    /// the cache; prints one JSON line.
    #[command(hide = true)]
    Bench {
        /// CA certificate (PEM).
        #[arg(long)]
        cert: PathBuf,
        /// CA key (PKCS#8 PEM).
        #[arg(long)]
        key: PathBuf,
        /// Distinct names to mint.
        #[arg(long, default_value_t = 1000)]
        names: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        // `run` logs as its configuration says, once it is read.
        Command::Run { .. } => {}
        _ => gateway::logging::init(&gateway::logging::Log::default()),
    }
    match cli.command {
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(2, &e),
        },
        Command::Run { config: path, takeover } => {
            let config = match Config::load(&path) {
                Ok(c) => c,
                Err(e) => return fail(2, &e),
            };
            gateway::logging::init(&config.log);
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => return fail(1, &e),
            };
            let opts = gateway::app::RunOptions { config_path: path, takeover };
            match rt.block_on(gateway::app::run(config, opts)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.is::<gateway::steering::preflight::PreflightError>() => fail(2, &e),
                Err(e) => fail(1, &format!("{e:#}")),
            }
        }
        Command::Scan { config, clamd, icap, timings, paths } => scan(config, clamd, icap, timings, paths),
        Command::Ca { action } => ca(action),
        Command::Stats { socket } => ask(&socket, "stats"),
        Command::Serve { config } => serve(&config),
        Command::Expect { op, client, server, port, socket } => {
            ask(&socket, &format!("expect {op} {client} {server} {port}"))
        }
        Command::Reload { socket } => ask(&socket, "reload"),
        Command::Detach { config } => detach(&config),
    }
}

/// `gateway serve`: the configured servers without steering.
fn serve(path: &std::path::Path) -> ExitCode {
    let cfg = match Config::load_scan_only(path) {
        Ok(c) => c,
        Err(e) => return fail(2, &e),
    };
    if let Err(e) = cfg.icap_server.validate().and_then(|()| cfg.api_server.validate()) {
        return fail(2, &format!("{}: {e}", path.display()));
    }
    // One thread: the servers' own work per body is small next to the
    // scanner's, and tasks that never change threads are woken cheaper.
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(1, &e),
    };
    let alone = gateway::serve::Alone {
        scan: &cfg.scan,
        icap: &cfg.icap_server,
        api: &cfg.api_server,
        control: &cfg.control.socket,
        detections: &cfg.log.detections,
    };
    match rt.block_on(gateway::serve::run_alone(alone)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(1, &format!("{e:#}")),
    }
}

fn scan(
    config: Option<PathBuf>,
    clamd: Option<String>,
    icap: Vec<String>,
    timings: bool,
    paths: Vec<PathBuf>,
) -> ExitCode {
    let mut cfg = match config {
        Some(path) => match Config::load_scan_only(&path) {
            Ok(c) => c.scan,
            Err(e) => return fail(2, &e),
        },
        None => Default::default(),
    };
    if let Some(addr) = clamd {
        cfg.backend = ScanBackend::Clamd;
        cfg.clamd = vec![addr];
    }
    if !icap.is_empty() {
        cfg.backend = ScanBackend::Icap;
        cfg.icap = icap;
    }
    if let Err(e) = cfg.validate() {
        return fail(2, &e);
    }
    let scanner = match Scanner::standalone(&cfg) {
        Ok(s) => Arc::new(s),
        Err(e) => return fail(2, &e),
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(2, &e),
    };
    let worst = rt.block_on(async {
        let mut worst = 0u8;
        let mut buf = vec![0u8; 256 * 1024];
        for p in &paths {
            let r = scan_file(&scanner, p, &mut buf).await;
            println!("{}", r.line);
            if let (true, Some((bytes, after))) = (timings, r.timing) {
                eprintln!(
                    "{}: {bytes} bytes, verdict {:.1} ms after the last byte",
                    p.display(),
                    after.as_secs_f64() * 1e3
                );
            }
            // clamdscan: an error outranks an infection in the exit status.
            worst = match (worst, r.status) {
                (2, _) | (_, 2) => 2,
                (a, b) => a.max(b),
            };
        }
        worst
    });
    ExitCode::from(worst)
}

fn detach(path: &std::path::Path) -> ExitCode {
    let config = match Config::load_unchecked(path) {
        Ok(c) => c,
        Err(e) => return fail(2, &e),
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(1, &e),
    };
    match rt.block_on(gateway::app::detach(&config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(1, &format!("{e:#}")),
    }
}

/// `gateway ca …`: exit 2 with one sentence when the files are unusable.
fn ca(action: CaAction) -> ExitCode {
    use gateway::proxy::tls::mint;
    let said = match action {
        CaAction::New { out } => mint::Ca::create(&out).map_err(anyhow::Error::from).map(|(cert, key)| {
            format!("CA certificate {} (push it to the clients), key {} (keep it here)", cert.display(), key.display())
        }),
        CaAction::Bench { cert, key, names } => mint::bench(&cert, &key, names).map_err(anyhow::Error::from),
    };
    match said {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(2, &e),
    }
}

fn ask(socket: &std::path::Path, command: &str) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(1, &e),
    };
    match rt.block_on(control::request(socket, command)) {
        Ok(reply) if reply.starts_with("error") => fail(1, &reply),
        Ok(reply) => {
            println!("{reply}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(1, &format!("cannot reach the gateway at {}: {e}", socket.display())),
    }
}

fn fail(code: u8, e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("gateway: {e}");
    ExitCode::from(code)
}
