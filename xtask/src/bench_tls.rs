//! `cargo xtask bench tls [--squid]`: one rig (nginx with TLS, one worker;
//! clamd), three paths for the same clients: direct TLS to nginx, the
//! gateway intercepting and scanning with clamd, and (with `--squid`)
//! Squid 6.13 `squid-openssl` with ssl-bump (`peek` then `bump`,
//! `security_file_certgen`) and ICAP RESPMOD/REQMOD to c-icap on the same
//! clamd. Figures: new TLS connections per second (wrk, one request each),
//! scanned 1 KiB requests per second on keep-alive TLS connections with
//! p50/p99, 100 MiB MiB/s, the CPU each path's own processes spend per new
//! connection, and the gateway's leaf mint time cold and from its cache.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, ensure};
use tests::{
    Ns,
    tls::{TlsEnv, WWW},
    util::{output_text, random_file},
};

use crate::{
    bench::rate,
    bench_http::{Squid, TRIXIE},
    bench_scan::{cpu_of, cpu_of_comm},
};

/// One path's figures.
struct Figures {
    new_conns: f64,
    new_p99: f64,
    cpu_us_per_conn: String,
    rps: f64,
    p50: f64,
    p99: f64,
    mib_s: f64,
}

/// The processes whose CPU a path spends: `(pid, comm)`, either named.
type Procs<'a> = &'a [(Option<u32>, Option<&'a str>)];

fn cpu(procs: Procs<'_>) -> f64 {
    procs.iter().map(|(pid, comm)| pid.map_or(0.0, cpu_of) + comm.map_or(0.0, cpu_of_comm)).sum()
}

/// Median MiB/s of three 100 MiB downloads trusting `ca`.
fn download(env: &TlsEnv, ca: &Path) -> anyhow::Result<f64> {
    let mut speeds = Vec::new();
    for _ in 0..3 {
        let out = env.curl(WWW, "/100m.bin", ca, &["--fail", "-o", "/dev/null", "-w", "%{speed_download}"])?;
        ensure!(out.status.success(), "curl: {}", output_text(&out));
        speeds.push(String::from_utf8_lossy(&out.stdout).trim().parse::<f64>()? / 1048576.0);
    }
    speeds.sort_by(f64::total_cmp);
    Ok(speeds[1])
}

fn measure(env: &TlsEnv, seconds: u32, ca: &Path, procs: Procs<'_>) -> anyhow::Result<Figures> {
    let url = format!("https://{WWW}/1k.bin");
    let before = cpu(procs);
    let (new_conns, _, new_p99) = rate(&env.rig, &url, seconds, false)?;
    let spent = cpu(procs) - before;
    let cpu_us_per_conn = if procs.is_empty() {
        "-".to_string()
    } else {
        format!("{:.0}", spent * 1e6 / (new_conns * f64::from(seconds)))
    };
    let (rps, p50, p99) = rate(&env.rig, &url, seconds, true)?;
    let mib_s = download(env, ca)?;
    Ok(Figures { new_conns, new_p99, cpu_us_per_conn, rps, p50, p99, mib_s })
}

/// `/etc/netns/NS/hosts`, which `ip netns exec` mounts over /etc/hosts:
/// wrk takes the server name (SNI) from the URL and has no --resolve.
struct NetnsHosts(PathBuf);

impl NetnsHosts {
    fn write(ns: &str, line: &str) -> anyhow::Result<NetnsHosts> {
        let dir = Path::new("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("hosts"), format!("127.0.0.1 localhost\n{line}\n"))?;
        Ok(NetnsHosts(dir))
    }
}

impl Drop for NetnsHosts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the TLS benchmark.
pub fn tls(seconds: u32, squid: bool) -> anyhow::Result<()> {
    let mut env = TlsEnv::prepare("btls", 1)?;
    random_file(&env.nginx.www.join("1k.bin"), 1024, 1)?;
    random_file(&env.nginx.www.join("100m.bin"), 100 << 20, 2)?;
    let _hosts = NetnsHosts::write(env.rig.name(Ns::Client), &format!("{} {WWW}", tests::rig::SERVER_V4))?;
    let clamd_pid = env.clamd.pid();
    let mut rows: Vec<(&str, Figures)> = Vec::new();

    eprintln!("bench tls: direct TLS to nginx");
    rows.push(("direct TLS", measure(&env, seconds, &env.upstream_ca(), &[])?));

    eprintln!("bench tls: gateway intercepting, scanning with clamd");
    env.restart("")?;
    let gw_pid = env.gw().pid;
    let f = measure(&env, seconds, &env.gw_ca, &[(Some(gw_pid), None), (clamd_pid, None)])?;
    let flows = env.gw().counter("/proxy/flows_total")?;
    ensure!(flows > 0, "the gateway served no flow: its figures would be direct ones");
    rows.push(("gateway + clamd", f));
    env.stop()?;

    if squid {
        eprintln!("bench tls: Squid 6.13 ssl-bump + c-icap + clamd");
        rows.push(("Squid ssl-bump + c-icap + clamd", squid_figures(&mut env, seconds)?));
    }
    print_table(&rows);
    print_ratios(&rows);
    print_mint(&env)
}

fn print_table(rows: &[(&str, Figures)]) {
    println!(
        "\n| path | new TLS conns/s (wrk, 1 req each) | new conn p99 ms | CPU µs per new conn (proxy + helpers + scanner) | scanned 1 KiB req/s keep-alive | p50 / p99 ms | 100 MiB MiB/s |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, f) in rows {
        println!(
            "| {name} | {:.0} | {:.2} | {} | {:.0} | {:.2} / {:.2} | {:.1} |",
            f.new_conns, f.new_p99, f.cpu_us_per_conn, f.rps, f.p50, f.p99, f.mib_s
        );
    }
}

fn print_ratios(rows: &[(&str, Figures)]) {
    let find = |p: &str| rows.iter().find(|r| r.0.starts_with(p)).map(|r| &r.1);
    if let (Some(g), Some(s)) = (find("gateway"), find("Squid")) {
        println!(
            "\ngateway vs Squid ssl-bump: {:.2}× new connections/s (target ≥ 3×), {:.2}× scanned 1 KiB requests/s (target ≥ 2×), p99 {:.2} vs {:.2} ms, {:.2}× 100 MiB throughput (target ≥ 1×)",
            g.new_conns / s.new_conns,
            g.rps / s.rps,
            g.p99,
            s.p99,
            g.mib_s / s.mib_s
        );
    }
    if let (Some(g), Some(d)) = (find("gateway"), find("direct")) {
        println!(
            "gateway vs direct TLS: {:.2}× new connections/s, {:.2}× 100 MiB throughput",
            g.new_conns / d.new_conns,
            g.mib_s / d.mib_s
        );
    }
}

/// The gateway's own mint code, timed by `gateway ca bench`.
fn print_mint(env: &TlsEnv) -> anyhow::Result<()> {
    let out = Command::new(tests::gateway::binary()?)
        .args(["ca", "bench", "--names", "2000", "--cert"])
        .arg(&env.gw_ca)
        .arg("--key")
        .arg(env.gw_ca.with_file_name("ca.key"))
        .output()?;
    ensure!(out.status.success(), "gateway ca bench: {}", output_text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    println!(
        "\nleaf mint (2,000 names, one process key, ECDSA P-256): cold p50 {} µs / p99 {} µs; from the cache p50 {} µs / p99 {} µs (target ≤ 50 µs)",
        v["cold_us_p50"], v["cold_us_p99"], v["cached_us_p50"], v["cached_us_p99"]
    );
    Ok(())
}

/// Squid 6.13 with OpenSSL in the Debian 13 folder: ssl-bump on an
/// intercepting https_port, its certificates signed by the same CA the
/// clients trust, servers checked against the rig's upstream root.
fn squid_figures(env: &mut TlsEnv, seconds: u32) -> anyhow::Result<Figures> {
    let root = Path::new(TRIXIE);
    install_squid_openssl(root)?;
    let etc = root.join("etc/squid");
    std::fs::copy(&env.gw_ca, etc.join("bench-ca.pem"))?;
    // A throwaway CA of this rig: readable by Squid's own user.
    std::fs::copy(env.gw_ca.with_file_name("ca.key"), etc.join("bench-ca.key"))?;
    std::fs::copy(env.upstream_ca(), etc.join("bench-upstream-ca.pem"))?;
    std::fs::write(etc.join("bench-hosts"), format!("{} {WWW}\n", tests::rig::SERVER_V4))?;
    let db = "/var/cache/squid/bench_ssl_db";
    let db_dir = root.join(db.trim_start_matches('/'));
    let _ = std::fs::remove_dir_all(&db_dir);
    std::fs::create_dir_all(db_dir.parent().context("the ssl_db path has a parent")?)?;
    let certgen = "/usr/lib/squid/security_file_certgen";
    run_in(root, &[certgen, "-c", "-s", db, "-M", "16MB"])?;
    run_in(root, &["chown", "-R", "proxy:proxy", db])?;
    run_in(root, &["chmod", "0644", "/etc/squid/bench-ca.key"])?;
    let lines = format!(
        "https_port 3130 intercept ssl-bump tls-cert=/etc/squid/bench-ca.pem tls-key=/etc/squid/bench-ca.key \
         generate-host-certificates=on dynamic_cert_mem_cache_size=16MB\n\
         sslcrtd_program {certgen} -s {db} -M 16MB\nsslcrtd_children 8 startup=2 idle=1\n\
         acl step1 at_step SslBump1\nssl_bump peek step1\nssl_bump bump all\n\
         tls_outgoing_options cafile=/etc/squid/bench-upstream-ca.pem\nhosts_file /etc/squid/bench-hosts\n"
    );
    let squid = Squid::start(&mut env.rig, &env.clamd, &lines, "tcp dport 443 redirect to :3130")?;
    let procs =
        [(None, Some("squid")), (None, Some("security_file_c")), (None, Some("c-icap")), (env.clamd.pid(), None)];
    let f = measure(env, seconds, &env.gw_ca, &procs);
    drop(squid);
    f.with_context(|| format!("Squid's log: {}", PathBuf::from(TRIXIE).join("var/log/squid/bench-cache.log").display()))
}

/// `squid-openssl` (ssl-bump, security_file_certgen) beside the GnuTLS
/// `squid` in the Debian 13 folder; it takes over /usr/sbin/squid.
fn install_squid_openssl(root: &Path) -> anyhow::Result<()> {
    if root.join("usr/sbin/squid-openssl").exists() {
        return Ok(());
    }
    crate::setup::chroot_install(root, "squid-openssl")
}

fn run_in(root: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("chroot").arg(root).args(args).output()?;
    ensure!(out.status.success(), "chroot {} {args:?}: {}", root.display(), output_text(&out));
    Ok(())
}
