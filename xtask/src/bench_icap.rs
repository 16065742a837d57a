//! `cargo xtask bench icap`: the gateway's ICAP server (`gateway serve`)
//! against c-icap's `virus_scan`, both on the same clamd, driven by the
//! same load generator (here): 16 keep-alive connections sending RESPMODs
//! of 10 KiB objects with a 1024-byte preview and `Allow: 204`, then one
//! 100 MiB RESPMOD at a time.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::TcpStream,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use tests::{
    cicap::CIcap,
    clamd::Clamd,
    serve::{self, Served},
};

use crate::bench_scan::{cpu_of, cpu_of_cicap};

const CONNECTIONS: usize = 16;
const OBJECT: usize = 10 << 10;
const OBJECTS: usize = 1000;
const PREVIEW: usize = 1024;
const BIG: usize = 100 << 20;

/// splitmix64 bytes: random enough that clamd scans them as it would real
/// data, the same on every run.
fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The RESPMOD head with the encapsulated HTTP heads and the preview.
fn respmod_start(port: u16, body: &[u8]) -> Vec<u8> {
    let req = b"GET /object HTTP/1.1\r\nHost: origin.test\r\n\r\n";
    let res =
        format!("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n", body.len());
    let mut out = format!(
        "RESPMOD icap://127.0.0.1:{port}/avscan ICAP/1.0\r\nHost: 127.0.0.1:{port}\r\nAllow: 204\r\nPreview: {PREVIEW}\r\n\
         Encapsulated: req-hdr=0, res-hdr={}, res-body={}\r\n\r\n",
        req.len(),
        req.len() + res.len()
    )
    .into_bytes();
    out.extend_from_slice(req);
    out.extend_from_slice(res.as_bytes());
    let n = body.len().min(PREVIEW);
    out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
    out.extend_from_slice(&body[..n]);
    out.extend_from_slice(if n == body.len() { b"\r\n0; ieof\r\n\r\n" } else { b"\r\n0\r\n\r\n" });
    out
}

/// Reads an answer's head; returns its status and whether the server
/// closes the connection after it (c-icap does after MaxKeepAliveRequests).
fn read_status(r: &mut BufReader<TcpStream>) -> anyhow::Result<(u16, bool)> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).with_context(|| format!("answer {line:?}"))?;
    let mut close = false;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            bail!("the server closed mid-answer");
        }
        close |= line.to_ascii_lowercase().starts_with("connection: close");
        if line == "\r\n" {
            return Ok((status, close));
        }
    }
}

fn connect(port: u16) -> anyhow::Result<BufReader<TcpStream>> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_nodelay(true)?;
    Ok(BufReader::with_capacity(16 << 10, s))
}

/// One RESPMOD of `body` on `conn` (a new one if the server closed it);
/// fails unless it ends in 204.
fn respmod(conn: &mut BufReader<TcpStream>, port: u16, body: &[u8]) -> anyhow::Result<()> {
    let (status, close) = match respmod_on(conn, port, body) {
        Ok(r) => r,
        // The server closed the kept connection before this request.
        Err(_) => {
            *conn = connect(port)?;
            respmod_on(conn, port, body)?
        }
    };
    if close {
        *conn = connect(port)?;
    }
    ensure!(status == 204, "answer {status} to a clean object");
    Ok(())
}

fn respmod_on(conn: &mut BufReader<TcpStream>, port: u16, body: &[u8]) -> anyhow::Result<(u16, bool)> {
    conn.get_mut().write_all(&respmod_start(port, body))?;
    let mut status = read_status(conn)?;
    if status.0 == 100 {
        let rest = &body[PREVIEW.min(body.len())..];
        let s = conn.get_mut();
        for piece in rest.chunks(256 << 10) {
            s.write_all(format!("{:x}\r\n", piece.len()).as_bytes())?;
            s.write_all(piece)?;
            s.write_all(b"\r\n")?;
        }
        s.write_all(b"0\r\n\r\n")?;
        status = read_status(conn)?;
    }
    Ok(status)
}

struct Rate {
    per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// 16 keep-alive clients for `seconds`: objects/s and latency.
fn rate(port: u16, objects: &Arc<Vec<Vec<u8>>>, seconds: u64) -> anyhow::Result<Rate> {
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|w| {
            let (stop, objects) = (stop.clone(), objects.clone());
            std::thread::spawn(move || -> anyhow::Result<Vec<f64>> {
                let mut conn = connect(port)?;
                let mut lat = Vec::new();
                let mut i = w * 61;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    respmod(&mut conn, port, &objects[i % objects.len()])?;
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                    i += 1;
                }
                Ok(lat)
            })
        })
        .collect();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.join().map_err(|_| anyhow::anyhow!("a load thread panicked"))??);
    }
    let took = start.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    let pct = |p: f64| all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1))).copied();
    Ok(Rate {
        per_s: all.len() as f64 / took,
        p50_ms: pct(0.50).unwrap_or(f64::NAN),
        p99_ms: pct(0.99).unwrap_or(f64::NAN),
    })
}

/// Median MiB/s of three 100 MiB RESPMODs, one at a time.
fn big(port: u16, body: &[u8]) -> anyhow::Result<f64> {
    let mut speeds = Vec::new();
    for _ in 0..3 {
        let mut conn = connect(port)?;
        let t = Instant::now();
        respmod(&mut conn, port, body)?;
        speeds.push(100.0 / t.elapsed().as_secs_f64());
    }
    speeds.sort_by(f64::total_cmp);
    Ok(speeds[1])
}

/// One server under test.
struct Server<'a> {
    name: &'static str,
    port: u16,
    cpu: &'a dyn Fn() -> f64,
}

/// One rate run: objects/s, latency, CPU µs per object (server, clamd).
struct RateRun {
    rate: Rate,
    cpu_us: (f64, f64),
}

fn rate_run(s: &Server, clamd_pid: u32, objects: &Arc<Vec<Vec<u8>>>, seconds: u64) -> anyhow::Result<RateRun> {
    let (s0, c0) = ((s.cpu)(), cpu_of(clamd_pid));
    let rate = rate(s.port, objects, seconds)?;
    let (s1, c1) = ((s.cpu)(), cpu_of(clamd_pid));
    let n = rate.per_s * seconds as f64;
    Ok(RateRun { rate, cpu_us: ((s1 - s0) / n * 1e6, (c1 - c0) / n * 1e6) })
}

/// 100 MiB: MiB/s and CPU seconds per body (server, clamd).
fn big_run(s: &Server, clamd_pid: u32, body: &[u8]) -> anyhow::Result<(f64, (f64, f64))> {
    let (s0, c0) = ((s.cpu)(), cpu_of(clamd_pid));
    let mib_s = big(s.port, body)?;
    let (s1, c1) = ((s.cpu)(), cpu_of(clamd_pid));
    Ok((mib_s, ((s1 - s0) / 3.0, (c1 - c0) / 3.0)))
}

/// Rate runs per server, taken in turn (gateway, c-icap, gateway, …) so
/// that the machine's drift falls on both alike.
const ROUNDS: usize = 3;

/// Runs the ICAP benchmark and prints the table.
pub fn icap(seconds: u32, against: Option<&Path>) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("gwbench-icap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = run(&dir, seconds.into(), against);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run(dir: &Path, seconds: u64, against: Option<&Path>) -> anyhow::Result<()> {
    let clamd = Clamd::start(dir.join("clamd"), "2000M")?;
    let clamd_pid = clamd.pid().context("clamd pid")?;
    let base = 22000 + (std::process::id() % 15000) as u16;
    let objects: Arc<Vec<Vec<u8>>> = Arc::new((0..OBJECTS).map(|i| random(OBJECT, 500 + i as u64)).collect());
    let body = random(BIG, 7);
    eprintln!(
        "bench icap: {CONNECTIONS} connections, {ROUNDS} × {seconds}s per server in turn, 10 KiB objects, preview {PREVIEW}"
    );

    let gw_dir = dir.join("gateway");
    let text = serve::config(&gw_dir, &clamd.addr(), &format!("[icap_server]\nlisten = \"127.0.0.1:{base}\"\n"));
    let gw = Served::start(None, &gw_dir, &text)?;
    let gw_pid = gw.pid();
    let (_icap, _guard) = CIcap::start_here(&dir.join("c-icap"), base + 1, &clamd.socket)?;
    let gw_cpu = move || cpu_of(gw_pid);
    let mut servers = vec![
        Server { name: "gateway ICAP server", port: base, cpu: &gw_cpu },
        Server { name: "c-icap virus_scan", port: base + 1, cpu: &cpu_of_cicap },
    ];
    // Another build in turn with these two (`--against`).
    let other = match against {
        Some(bin) => {
            let dir = dir.join("against");
            let text =
                serve::config(&dir, &clamd.addr(), &format!("[icap_server]\nlisten = \"127.0.0.1:{}\"\n", base + 2));
            Some(Served::start_binary(bin, None, &dir, &text)?)
        }
        None => None,
    };
    let other_pid = other.as_ref().map(Served::pid);
    let other_cpu = move || other_pid.map_or(0.0, cpu_of);
    if other.is_some() {
        servers.push(Server { name: "gateway (--against)", port: base + 2, cpu: &other_cpu });
    }
    for s in &servers {
        // A warm-up as long as a run: connections, clamd sessions, and
        // c-icap's children, whose number grows with the load for seconds.
        rate(s.port, &objects, seconds)?;
    }
    let mut runs: Vec<Vec<RateRun>> = servers.iter().map(|_| Vec::new()).collect();
    for _ in 0..ROUNDS {
        for (s, runs) in servers.iter().zip(runs.iter_mut()) {
            runs.push(rate_run(s, clamd_pid, &objects, seconds)?);
        }
    }
    let bigs = servers.iter().map(|s| big_run(s, clamd_pid, &body)).collect::<anyhow::Result<Vec<_>>>()?;
    drop((gw, other));

    println!(
        "\n| server (same clamd, same client), run | 10 KiB RESPMODs/s | p50 / p99 ms | CPU µs per object (server / clamd) |"
    );
    println!("|---|---|---|---|");
    for round in 0..ROUNDS {
        for (s, runs) in servers.iter().zip(&runs) {
            let r = &runs[round];
            println!(
                "| {} {} | {:.0} | {:.2} / {:.2} | {:.0} / {:.0} |",
                s.name,
                round + 1,
                r.rate.per_s,
                r.rate.p50_ms,
                r.rate.p99_ms,
                r.cpu_us.0,
                r.cpu_us.1
            );
        }
    }
    println!("\n| server | 100 MiB MiB/s | CPU s per 100 MiB (server / clamd) |");
    println!("|---|---|---|");
    for (s, (mib_s, cpu)) in servers.iter().zip(&bigs) {
        println!("| {} | {:.1} | {:.2} / {:.2} |", s.name, mib_s, cpu.0, cpu.1);
    }
    let mean = |runs: &[RateRun], f: &dyn Fn(&RateRun) -> f64| runs.iter().map(f).sum::<f64>() / runs.len() as f64;
    let (gw, ci) = (&runs[0], &runs[1]);
    let per_round: Vec<String> =
        gw.iter().zip(ci).map(|(g, c)| format!("{:.2}×", g.rate.per_s / c.rate.per_s)).collect();
    if let Some(other) = runs.get(2) {
        println!(
            "\ngateway / --against: {:.2}× objects/s, server CPU per object {:.0} vs {:.0} µs",
            mean(&runs[0], &|r| r.rate.per_s) / mean(other, &|r| r.rate.per_s),
            mean(&runs[0], &|r| r.cpu_us.0),
            mean(other, &|r| r.cpu_us.0)
        );
    }
    println!(
        "\ngateway / c-icap, mean of {ROUNDS} runs each: {:.2}× objects/s (per round {}), p99 {:.2} vs {:.2} ms, \
         server CPU per object {:.0} vs {:.0} µs ({:.2}×), {:.2}× on 100 MiB",
        mean(gw, &|r| r.rate.per_s) / mean(ci, &|r| r.rate.per_s),
        per_round.join(", "),
        mean(gw, &|r| r.rate.p99_ms),
        mean(ci, &|r| r.rate.p99_ms),
        mean(gw, &|r| r.cpu_us.0),
        mean(ci, &|r| r.cpu_us.0),
        mean(gw, &|r| r.cpu_us.0) / mean(ci, &|r| r.cpu_us.0),
        bigs[0].0 / bigs[1].0
    );
    Ok(())
}
