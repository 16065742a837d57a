//! `cargo xtask bench http`: one rig, four paths for the same client and
//! server: direct forwarding, the gateway without scanning, the gateway
//! scanning with clamd, and Squid 6.13 (Debian 13, from a debootstrapped
//! folder) + c-icap + clamd, intercepting the same flows with nft redirect.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context as _, ensure};
use tests::{
    Gateway, Ns, Rig,
    cicap::CIcap,
    clamd::Clamd,
    gateway::{NO_SCAN, Settings},
    nginx::Nginx,
    rig::{CLIENT_IFACE, SERVER_V4},
    util::{random_file, wait_for},
};

use crate::bench_scan::{cpu_of, cpu_of_cicap};

/// Where `cargo xtask bench http --squid` keeps its Debian 13 folder.
pub const TRIXIE: &str = "/var/cache/gateway-bench/trixie";

struct Figures {
    rps: f64,
    p50: f64,
    p99: f64,
    mib_s: f64,
    ttfb_ms: f64,
    verdict_ms: String,
    cpu: String,
    rss: String,
}

fn curl_100m(rig: &Rig) -> anyhow::Result<(f64, f64)> {
    let mut speeds = Vec::new();
    let mut ttfb = Vec::new();
    for _ in 0..3 {
        let out = rig.curl(&[
            "-sS",
            "--fail",
            "-o",
            "/dev/null",
            "-w",
            "%{speed_download} %{time_starttransfer}",
            &format!("http://{SERVER_V4}/100m.bin"),
        ])?;
        ensure!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
        let t = String::from_utf8_lossy(&out.stdout).to_string();
        let mut f = t.split_whitespace().map(|v| v.parse::<f64>().unwrap_or(0.0));
        speeds.push(f.next().unwrap_or(0.0) / 1048576.0);
        ttfb.push(f.next().unwrap_or(0.0) * 1e3);
    }
    speeds.sort_by(f64::total_cmp);
    ttfb.sort_by(f64::total_cmp);
    Ok((speeds[1], ttfb[1]))
}

fn hwm_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Runs wrk, then three 100 MiB downloads; `procs` are (name, pid) whose
/// CPU is reported per 100 MiB.
fn measure(
    rig: &Rig,
    seconds: u32,
    procs: &[(&str, Option<u32>)],
    cicap: bool,
    clamd: Option<u32>,
) -> anyhow::Result<Figures> {
    let (rps, p50, p99) = crate::bench::rate(rig, &format!("http://{SERVER_V4}/1k.bin"), seconds, true)?;
    let before: Vec<f64> = procs.iter().map(|(_, p)| p.map_or(0.0, cpu_of)).collect();
    let (ci0, cl0) = (cpu_of_cicap(), clamd.map_or(0.0, cpu_of));
    let (mib_s, ttfb_ms) = curl_100m(rig)?;
    let mut cpu: Vec<String> =
        procs.iter().zip(&before).map(|((n, p), b)| format!("{n} {:.2}", (p.map_or(0.0, cpu_of) - b) / 3.0)).collect();
    if cicap {
        cpu.push(format!("c-icap {:.2}", (cpu_of_cicap() - ci0) / 3.0));
    }
    if let Some(c) = clamd {
        cpu.push(format!("clamd {:.2}", (cpu_of(c) - cl0) / 3.0));
    }
    let rss: Vec<String> =
        procs.iter().filter_map(|(n, p)| p.map(|p| format!("{n} {} MiB", hwm_kb(p) / 1024))).collect();
    Ok(Figures { rps, p50, p99, mib_s, ttfb_ms, verdict_ms: "-".into(), cpu: cpu.join(" / "), rss: rss.join(" / ") })
}

fn last_scan_ms(gw: &Gateway) -> String {
    gw.log_text()
        .lines()
        .rev()
        .find(|l| l.contains("100m.bin") && l.contains(" scan="))
        .and_then(|l| l.split(" scan=").nth(1))
        .map(str::to_string)
        .unwrap_or_else(|| "?".into())
}

/// Runs the HTTP benchmark.
pub fn http(seconds: u32, squid: bool) -> anyhow::Result<()> {
    let mut rig = Rig::new("bhttp")?;
    let nginx = Nginx::start(&mut rig, &[80], 1)?;
    random_file(&nginx.www.join("1k.bin"), 1024, 1)?;
    random_file(&nginx.www.join("100m.bin"), 100 << 20, 2)?;
    let clamd = Clamd::start(rig.dir().join("clamd"), "1000M")?;
    let clamd_pid = clamd.pid();
    let mut rows: Vec<(&str, Figures)> = Vec::new();

    eprintln!("bench http: direct forwarding");
    rows.push(("direct forwarding", measure(&rig, seconds, &[], false, None)?));

    eprintln!("bench http: gateway, no scanning");
    let gw = Gateway::start(&mut rig, &Settings { http: NO_SCAN, ..Settings::default() })?;
    let f = measure(&rig, seconds, &[("gateway", Some(gw.pid))], false, None)?;
    gw.stop(&mut rig, libc::SIGTERM)?;
    rows.push(("gateway, no scanning", f));

    eprintln!("bench http: gateway scanning with clamd");
    let scan = format!("clamd = \"{}\"", clamd.addr());
    let gw = Gateway::start(&mut rig, &Settings { scan: &scan, ..Settings::default() })?;
    let mut f = measure(&rig, seconds, &[("gateway", Some(gw.pid))], false, clamd_pid)?;
    f.verdict_ms = last_scan_ms(&gw);
    gw.stop(&mut rig, libc::SIGTERM)?;
    rows.push(("gateway + clamd", f));

    if squid {
        eprintln!("bench http: Squid 6.13 + c-icap + clamd");
        rows.push(("Squid + c-icap + clamd", squid_figures(&mut rig, seconds, &clamd)?));
    }

    println!(
        "\n| path | 1 KiB req/s | p50 / p99 ms | 100 MiB MiB/s | TTFB ms | last byte → verdict | CPU s per 100 MiB | peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (name, f) in &rows {
        println!(
            "| {name} | {:.0} | {:.2} / {:.2} | {:.1} | {:.1} | {} | {} | {} |",
            f.rps, f.p50, f.p99, f.mib_s, f.ttfb_ms, f.verdict_ms, f.cpu, f.rss
        );
    }
    if let (Some((_, g)), Some((_, s))) =
        (rows.iter().find(|r| r.0 == "gateway + clamd"), rows.iter().find(|r| r.0.starts_with("Squid")))
    {
        println!(
            "\nscanning gateway vs Squid + c-icap: {:.2}× requests/s, {:.2}× 100 MiB throughput",
            g.rps / s.rps,
            g.mib_s / s.mib_s
        );
    }
    Ok(())
}

fn squid_figures(rig: &mut Rig, seconds: u32, clamd: &Clamd) -> anyhow::Result<Figures> {
    let squid = Squid::start(rig, clamd, "http_port 3129 intercept", "tcp dport 80 redirect to :3129")?;
    measure(rig, seconds, &[("squid", squid.pid)], true, clamd.pid())
}

/// Debian 13's Squid in the gateway namespace with c-icap (`virus_scan` on
/// `clamd`) for RESPMOD and REQMOD, intercepting what `nft_rule` redirects
/// from the client-facing interface.
pub struct Squid {
    /// The main Squid process.
    pub pid: Option<u32>,
    /// Squid's cache.log.
    pub log: std::path::PathBuf,
    _icap: CIcap,
    _mounts: ChrootMounts,
}

impl Squid {
    /// Starts Squid with `ports` (its `http_port`/`ftp_port` lines) and the
    /// nft rule; everything goes with the rig and when dropped.
    pub fn start(rig: &mut Rig, clamd: &Clamd, ports: &str, nft_rule: &str) -> anyhow::Result<Squid> {
        let root = Path::new(TRIXIE);
        ensure!(
            root.join("usr/sbin/squid").symlink_metadata().is_ok(),
            "no Squid in {TRIXIE}: run the benchmark with --squid and network to Debian's mirror"
        );
        let mounts = ChrootMounts::new(root)?;
        let icap = CIcap::start(rig, Ns::Gateway, 1344, &clamd.socket)?;
        let conf = format!(
            "visible_hostname gwbench\nhttp_port 3128\n{ports}\ncache deny all\naccess_log none\n\
             cache_log /var/log/squid/bench-cache.log\npid_filename /run/squid-bench.pid\nhttp_access allow all\n\
             ftp_client_idle_timeout 60 seconds\nicap_enable on\n\
             icap_service av respmod_precache bypass=0 {url}\nadaptation_access av allow all\n\
             icap_service avreq reqmod_precache bypass=0 {url}\nadaptation_access avreq allow all\n\
             shutdown_lifetime 1 seconds\n",
            url = icap.url
        );
        std::fs::write(root.join("etc/squid/bench.conf"), conf)?;
        let _ = std::fs::remove_file(root.join("var/log/squid/bench-cache.log"));
        let mut cmd = rig.cmd(Ns::Gateway, "chroot");
        cmd.arg(root).args(["squid", "-N", "-f", "/etc/squid/bench.conf"]);
        let log = rig.dir().join("squid.log");
        rig.spawn(cmd, &log)?;
        let port = ports.split_whitespace().nth(1).unwrap_or("3129").to_string();
        wait_for("squid to listen", Duration::from_secs(30), || {
            let out = rig.run(Ns::Gateway, "ss", &["-Hltn", &format!("sport = :{port}")]).ok()?;
            (!out.stdout.is_empty()).then_some(())
        })
        .with_context(|| std::fs::read_to_string(&log).unwrap_or_default())?;
        let nft = format!(
            "table ip gwbench {{ chain pre {{ type nat hook prerouting priority dstnat; iifname \"{CLIENT_IFACE}\" {nft_rule}; }}; }}"
        );
        let out = rig.cmd(Ns::Gateway, "nft").args(["-f", "-"]).stdin(std::process::Stdio::piped()).spawn().and_then(
            |mut c| {
                use std::io::Write as _;
                c.stdin.take().map(|mut s| s.write_all(nft.as_bytes()));
                c.wait_with_output()
            },
        )?;
        ensure!(out.status.success(), "nft: {}", String::from_utf8_lossy(&out.stderr));
        let out = Command::new("pgrep").args(["-x", "squid"]).output().ok();
        let pid = out
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().filter_map(|l| l.parse().ok()).collect::<Vec<u32>>())
            .unwrap_or_default()
            .into_iter()
            .max();
        Ok(Squid { pid, log: root.join("var/log/squid/bench-cache.log"), _icap: icap, _mounts: mounts })
    }
}

/// /proc and a writable /dev/shm inside the Debian 13 folder for Squid's
/// shared memory, unmounted again when dropped.
struct ChrootMounts(Vec<std::path::PathBuf>);

impl ChrootMounts {
    fn new(root: &Path) -> anyhow::Result<ChrootMounts> {
        let mut done = ChrootMounts(Vec::new());
        for (what, dir, opts) in [("proc", "proc", ""), ("tmpfs", "dev/shm", "mode=1777")] {
            let target = root.join(dir);
            std::fs::create_dir_all(&target)?;
            let mut cmd = Command::new("mount");
            cmd.args(["-t", what]);
            if !opts.is_empty() {
                cmd.args(["-o", opts]);
            }
            let status = cmd.arg(what).arg(&target).status()?;
            ensure!(status.success(), "mounting {what} on {}", target.display());
            done.0.push(target);
        }
        Ok(done)
    }
}

impl Drop for ChrootMounts {
    fn drop(&mut self) {
        for t in self.0.iter().rev() {
            let _ = Command::new("umount").arg(t).status();
        }
    }
}
