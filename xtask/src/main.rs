//! `cargo xtask`: the project's own commands.
//!
//! * `setup` installs what a fresh machine lacks (idempotent).
//! * `test` = setup, build, every test.
//! * `demo` = setup, build, a rig with the gateway and traffic through it.
//! * `bench relay` measures the steered relay against direct forwarding.
//! * `compat` prints the browser-compatibility figures (corpus + Chromium).
//! * `rig` builds a rig and waits, for poking at by hand.
//! * `deb` builds the Debian package (cargo-deb).

mod bench;
mod bench_ftp;
mod bench_http;
mod bench_icap;
mod bench_scan;
mod bench_tls;
mod build;
mod compat;
mod deb;
mod demo;
mod fuzz;
mod setup;
mod soak;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "gateway's development tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install apt packages, nightly rust-src and bpf-linker (idempotent).
    Setup,
    /// Setup, build, then run every test.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Setup, build, then show the gateway at work on the namespace rig.
    Demo,
    /// Setup, build, then the Debian package:
    /// target/debian/gateway_<version>_amd64.deb (cargo-deb).
    Deb,
    /// Benchmarks on the rig.
    Bench {
        /// What to measure: `relay` (steering + relay vs direct forwarding),
        /// `scan` (the scanning core vs clamd's own rate and c-icap-client),
        /// `http` (vs direct and Squid + c-icap), `ftp` (vs direct, clamd,
        /// and with `--squid` Squid's FTP relay + c-icap) or `tls` (TLS
        /// interception vs direct TLS and, with `--squid`, Squid ssl-bump)
        /// or `icap` (the gateway's ICAP server vs c-icap on one clamd).
        #[arg(value_parser = ["relay", "scan", "http", "ftp", "tls", "icap"])]
        what: String,
        /// Transfer size in MiB for the bulk figures.
        #[arg(long, default_value_t = 1024)]
        mib: u64,
        /// Seconds per request-rate run.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        /// `http`, `ftp`, `tls`: also measure Squid 6.13 + c-icap (debootstraps Debian 13
        /// into /var/cache/gateway-bench/trixie once, a few minutes).
        #[arg(long)]
        squid: bool,
        /// `icap`: also measure another gateway binary (an older build), in
        /// turn with the others.
        #[arg(long)]
        against: Option<std::path::PathBuf>,
    },
    /// The browser-compatibility figures: the http-oddities corpus through
    /// the gateway (clean and EICAR) and a sample in headless Chromium.
    Compat,
    /// Build a rig, start nginx and the gateway, print how to reach them and
    /// wait for Enter.
    Rig,
    /// Mixed traffic through the gateway for a long time, then checks that
    /// nothing was refused, delivered infected or corrupted, or leaked.
    Soak {
        /// Minutes of load.
        #[arg(long, default_value_t = 5.0)]
        minutes: f64,
        /// Concurrent clients.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
    },
    /// Coverage-guided fuzzing with cargo-fuzz (nightly; installed if
    /// missing): every target in fuzz/, or the one named, one after the
    /// other, then a table of executions and crashes. Fails if one crashed.
    Fuzz {
        /// One target (http_head, chunked, head_scan, content_decode,
        /// icap_response, ftp_command); all of them when omitted.
        target: Option<String>,
        /// Minutes per target.
        #[arg(long, default_value_t = 10)]
        minutes: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The rig helpers find the binary through GATEWAY_BIN; xtask always
    // means the release build it makes.
    // SAFETY: no other thread exists yet.
    unsafe { std::env::set_var("GATEWAY_BIN", build::gateway_bin()) };
    match cli.command {
        Command::Setup => setup::run(),
        Command::Test { args } => {
            setup::run()?;
            build::gateway()?;
            build::test(&args)
        }
        Command::Demo => {
            setup::run()?;
            build::gateway()?;
            demo::run()
        }
        Command::Deb => {
            setup::run()?;
            build::gateway()?;
            deb::run()
        }
        Command::Bench { what, mib, seconds, squid, against } => {
            setup::run()?;
            build::gateway()?;
            match what.as_str() {
                "relay" => bench::relay(mib, seconds),
                "scan" => bench_scan::scan(),
                "icap" => bench_icap::icap(seconds, against.as_deref()),
                "ftp" => {
                    if squid {
                        setup::squid_chroot()?;
                    }
                    bench_ftp::ftp(mib, squid)
                }
                "http" => {
                    if squid {
                        setup::squid_chroot()?;
                    }
                    bench_http::http(seconds, squid)
                }
                "tls" => {
                    if squid {
                        setup::squid_chroot()?;
                    }
                    bench_tls::tls(seconds, squid)
                }
                _ => unreachable!("clap restricts the value"),
            }
        }
        Command::Soak { minutes, connections } => {
            setup::run()?;
            build::gateway()?;
            soak::soak(minutes, connections)
        }
        Command::Compat => {
            setup::run()?;
            build::gateway()?;
            compat::run()
        }
        Command::Rig => {
            setup::run()?;
            build::gateway()?;
            demo::interactive()
        }
        Command::Fuzz { target, minutes } => fuzz::run(target.as_deref(), minutes),
    }
}
