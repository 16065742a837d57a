//! `cargo xtask bench scan`: the scanning core against clamd's own INSTREAM
//! rate and against c-icap's own client, on one clamd (DisableCache yes,
//! the project's two test signatures).

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use tests::{cicap::CIcap, clamd::Clamd, util::random_file};

/// CPU seconds used so far by process `pid` and the children it has
/// reaped (user + system): c-icap's children come and go during a run, and
/// their time must not vanish with them.
pub fn cpu_of(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Fields after the parenthesised command name; utime, stime, cutime and
    // cstime are 14 to 17.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = (11..=14).map(|i| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)).sum();
    // SAFETY: sysconf is always safe to call.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// CPU seconds of every c-icap process (the bench runs alone).
pub fn cpu_of_cicap() -> f64 {
    cpu_of_comm("c-icap")
}

/// CPU seconds of every process whose command name is `comm` (as
/// /proc/PID/comm shows it: at most 15 characters).
pub fn cpu_of_comm(comm: &str) -> f64 {
    let mut total = 0.0;
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>()
                && std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
            {
                total += cpu_of(pid);
            }
        }
    }
    total
}

/// CPU seconds (user + system) of `who`: RUSAGE_SELF or RUSAGE_CHILDREN
/// (reaped children).
fn rusage_cpu(who: libc::c_int) -> f64 {
    // SAFETY: getrusage fills the struct.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut r) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(r.ru_utime) + tv(r.ru_stime)
}

fn children_cpu() -> f64 {
    rusage_cpu(libc::RUSAGE_CHILDREN)
}

fn self_cpu() -> f64 {
    rusage_cpu(libc::RUSAGE_SELF)
}

/// The limit: a minimal INSTREAM client writing 1 MiB chunks. Returns the
/// time from the end-of-stream marker to clamd's reply.
pub fn instream(socket: &Path, file: &Path) -> anyhow::Result<Duration> {
    let mut s = UnixStream::connect(socket)?;
    let mut f = std::fs::File::open(file)?;
    let mut buf = vec![0u8; 1 << 20];
    s.write_all(b"zINSTREAM\0")?;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        s.write_all(&(n as u32).to_be_bytes())?;
        s.write_all(&buf[..n])?;
    }
    s.write_all(&[0; 4])?;
    let last = Instant::now();
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    ensure!(reply.contains("OK"), "clamd: {reply}");
    Ok(last.elapsed())
}

struct Row {
    name: &'static str,
    mib_s: f64,
    cpu: String,
    verdict_ms: String,
    files_s: f64,
}

fn gateway_scan(args: &[String], paths: &[PathBuf]) -> anyhow::Result<(Duration, Option<f64>)> {
    let start = Instant::now();
    let out = Command::new(crate::build::gateway_bin()).arg("scan").arg("--timings").args(args).args(paths).output()?;
    let took = start.elapsed();
    ensure!(
        out.status.success(),
        "gateway scan: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ms = String::from_utf8_lossy(&out.stderr)
        .lines()
        .last()
        .and_then(|l| l.split("verdict ").nth(1))
        .and_then(|v| v.split(' ').next())
        .and_then(|v| v.parse().ok());
    Ok((took, ms))
}

fn cicap_client(port: u16, file: &Path, out_file: &Path) -> anyhow::Result<()> {
    // It cannot write to /dev/null (it wants a regular file).
    let _ = std::fs::remove_file(out_file);
    let out = Command::new("c-icap-client")
        .args(["-i", "127.0.0.1", "-p", &port.to_string(), "-s", "avscan", "-o"])
        .arg(out_file)
        .arg("-f")
        .arg(file)
        .output()?;
    ensure!(out.status.success(), "c-icap-client: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// Runs the scan benchmark and prints the table.
pub fn scan() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("gwbench-scan-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = run(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run(dir: &Path) -> anyhow::Result<()> {
    let clamd = Clamd::start(dir.join("clamd"), "2000M")?;
    let clamd_pid = clamd.pid().context("clamd pid")?;
    let port = 21000 + (std::process::id() % 20000) as u16;
    let (icap, _guard) = CIcap::start_here(&dir.join("icap"), port, &clamd.socket)?;
    let big = random_file(&dir.join("clean-100m.bin"), 100 << 20, 11)?;
    let small_dir = dir.join("small");
    std::fs::create_dir_all(&small_dir)?;
    let small: Vec<PathBuf> = (0..1000u64)
        .map(|i| random_file(&small_dir.join(format!("f{i:04}.bin")), 10 << 10, 100 + i))
        .collect::<Result<_, _>>()?;
    let clamd_arg = vec!["--clamd".to_string(), clamd.addr()];
    let icap_arg = vec!["--icap".to_string(), icap.url.clone()];
    eprintln!("bench scan: clamd {}, c-icap {}", clamd.addr(), icap.url);

    let mut rows = Vec::new();
    // (a) clamd INSTREAM, minimal client.
    let (c0, s0) = (cpu_of(clamd_pid), self_cpu());
    let t = Instant::now();
    let after = instream(&clamd.socket, &big)?;
    let big_t = t.elapsed();
    let (c1, s1) = (cpu_of(clamd_pid), self_cpu());
    let t = Instant::now();
    for f in &small {
        instream(&clamd.socket, f)?;
    }
    rows.push(Row {
        name: "(a) clamd INSTREAM, minimal client (the limit)",
        mib_s: 100.0 / big_t.as_secs_f64(),
        cpu: format!("client {:.2} / clamd {:.2}", s1 - s0, c1 - c0),
        verdict_ms: format!("{:.0}", after.as_secs_f64() * 1e3),
        files_s: 1000.0 / t.elapsed().as_secs_f64(),
    });

    // (b) and (c): the gateway's backends through `gateway scan`.
    for (name, args, via_icap) in [
        ("(b) gateway, clamd backend", &clamd_arg, false),
        ("(c) gateway ICAP client → c-icap → clamd", &icap_arg, true),
    ] {
        let (c0, k0, i0) = (cpu_of(clamd_pid), children_cpu(), cpu_of_cicap());
        let (took, ms) = gateway_scan(args, std::slice::from_ref(&big))?;
        let (c1, k1, i1) = (cpu_of(clamd_pid), children_cpu(), cpu_of_cicap());
        let (small_t, _) = gateway_scan(args, &small)?;
        let cpu = if via_icap {
            format!("gateway {:.2} / c-icap {:.2} / clamd {:.2}", k1 - k0, i1 - i0, c1 - c0)
        } else {
            format!("gateway {:.2} / clamd {:.2}", k1 - k0, c1 - c0)
        };
        rows.push(Row {
            name,
            mib_s: 100.0 / took.as_secs_f64(),
            cpu,
            verdict_ms: ms.map_or("?".into(), |m| format!("{m:.0}")),
            files_s: 1000.0 / small_t.as_secs_f64(),
        });
    }

    // (e) the clamd backend as a pool of two clamd instances (one body per
    // member at a time here: `gateway scan` scans the files one by one).
    let clamd2 = Clamd::start(dir.join("clamd2"), "2000M")?;
    let clamd2_pid = clamd2.pid().context("clamd pid")?;
    let pool_conf = dir.join("pool.toml");
    std::fs::write(
        &pool_conf,
        format!(
            "[scan]\nclamd = [\"{}\", \"{}\"]\nspool_dir = \"{}\"\n",
            clamd.addr(),
            clamd2.addr(),
            dir.join("spool").display()
        ),
    )?;
    let pool_arg = vec!["--config".to_string(), pool_conf.to_string_lossy().into_owned()];
    let both = || cpu_of(clamd_pid) + cpu_of(clamd2_pid);
    let (c0, k0) = (both(), children_cpu());
    let (took, ms) = gateway_scan(&pool_arg, std::slice::from_ref(&big))?;
    let (c1, k1) = (both(), children_cpu());
    let (small_t, _) = gateway_scan(&pool_arg, &small)?;
    let pool_row = Row {
        name: "(e) gateway, clamd backend, pool of two clamd",
        mib_s: 100.0 / took.as_secs_f64(),
        cpu: format!("gateway {:.2} / clamd ×2 {:.2}", k1 - k0, c1 - c0),
        verdict_ms: ms.map_or("?".into(), |m| format!("{m:.0}")),
        files_s: 1000.0 / small_t.as_secs_f64(),
    };

    // (d) c-icap's own client.
    let (c0, k0, i0) = (cpu_of(clamd_pid), children_cpu(), cpu_of_cicap());
    let t = Instant::now();
    cicap_client(port, &big, &dir.join("cicap-out"))?;
    let big_t = t.elapsed();
    let (c1, k1, i1) = (cpu_of(clamd_pid), children_cpu(), cpu_of_cicap());
    let t = Instant::now();
    for f in &small {
        cicap_client(port, f, &dir.join("cicap-out"))?;
    }
    rows.push(Row {
        name: "(d) c-icap-client → c-icap → clamd",
        mib_s: 100.0 / big_t.as_secs_f64(),
        cpu: format!("client {:.2} / c-icap {:.2} / clamd {:.2}", k1 - k0, i1 - i0, c1 - c0),
        verdict_ms: "n/a".into(),
        files_s: 1000.0 / t.elapsed().as_secs_f64(),
    });

    rows.push(pool_row);
    println!(
        "\n| path | 100 MiB clean, MiB/s | CPU s for the 100 MiB | last byte → verdict, ms | 1000 × 10 KiB, files/s |"
    );
    println!("|---|---|---|---|---|");
    for r in &rows {
        println!("| {} | {:.1} | {} | {} | {:.0} |", r.name, r.mib_s, r.cpu, r.verdict_ms, r.files_s);
    }
    let a = &rows[0];
    println!(
        "\nratios: (b)/(a) {:.2}× MiB/s, {:.2}× files/s; (c)/(d) {:.2}× MiB/s, {:.2}× files/s",
        rows[1].mib_s / a.mib_s,
        rows[1].files_s / a.files_s,
        rows[2].mib_s / rows[3].mib_s,
        rows[2].files_s / rows[3].files_s
    );
    println!(
        "pool of two / one clamd: {:.2}× MiB/s, {:.2}× files/s",
        rows[4].mib_s / rows[1].mib_s,
        rows[4].files_s / rows[1].files_s
    );
    Ok(())
}
