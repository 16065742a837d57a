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

struct Row {
    name: &'static str,
    rate: Rate,
    cpu_per_object_us: (f64, f64),
    mib_s: f64,
    cpu_per_100m: (f64, f64),
}

fn measure(
    name: &'static str,
    port: u16,
    server_cpu: &dyn Fn() -> f64,
    clamd_pid: u32,
    objects: &Arc<Vec<Vec<u8>>>,
    body: &[u8],
    seconds: u64,
) -> anyhow::Result<Row> {
    // A short warm-up: connections, clamd sessions, the server's threads.
    rate(port, objects, 1)?;
    let (s0, c0) = (server_cpu(), cpu_of(clamd_pid));
    let r = rate(port, objects, seconds)?;
    let (s1, c1) = (server_cpu(), cpu_of(clamd_pid));
    let n = r.per_s * seconds as f64;
    let per_object = ((s1 - s0) / n * 1e6, (c1 - c0) / n * 1e6);
    let mib_s = big(port, body)?;
    let (s2, c2) = (server_cpu(), cpu_of(clamd_pid));
    Ok(Row { name, rate: r, cpu_per_object_us: per_object, mib_s, cpu_per_100m: ((s2 - s1) / 3.0, (c2 - c1) / 3.0) })
}

/// Runs the ICAP benchmark and prints the table.
pub fn icap(seconds: u32) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("gwbench-icap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = run(&dir, seconds.into());
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run(dir: &Path, seconds: u64) -> anyhow::Result<()> {
    let clamd = Clamd::start(dir.join("clamd"), "2000M")?;
    let clamd_pid = clamd.pid().context("clamd pid")?;
    let base = 22000 + (std::process::id() % 15000) as u16;
    let objects: Arc<Vec<Vec<u8>>> = Arc::new((0..OBJECTS).map(|i| random(OBJECT, 500 + i as u64)).collect());
    let body = random(BIG, 7);
    eprintln!("bench icap: {CONNECTIONS} connections, {seconds}s per rate, 10 KiB objects, preview {PREVIEW}");

    let gw_dir = dir.join("gateway");
    let text = serve::config(&gw_dir, &clamd.addr(), &format!("[icap_server]\nlisten = \"127.0.0.1:{base}\"\n"));
    let gw = Served::start(None, &gw_dir, &text)?;
    let gw_pid = gw.pid();
    let row = measure("gateway ICAP server", base, &|| cpu_of(gw_pid), clamd_pid, &objects, &body, seconds);
    drop(gw);
    let gw_row = row?;

    let (_icap, _guard) = CIcap::start_here(&dir.join("c-icap"), base + 1, &clamd.socket)?;
    let ci_row = measure("c-icap virus_scan", base + 1, &cpu_of_cicap, clamd_pid, &objects, &body, seconds)?;

    println!(
        "\n| server (same clamd, same client) | 10 KiB RESPMODs/s | p50 / p99 ms | CPU µs per object (server / clamd) | 100 MiB MiB/s | CPU s per 100 MiB (server / clamd) |"
    );
    println!("|---|---|---|---|---|---|");
    for r in [&gw_row, &ci_row] {
        println!(
            "| {} | {:.0} | {:.2} / {:.2} | {:.0} / {:.0} | {:.1} | {:.2} / {:.2} |",
            r.name,
            r.rate.per_s,
            r.rate.p50_ms,
            r.rate.p99_ms,
            r.cpu_per_object_us.0,
            r.cpu_per_object_us.1,
            r.mib_s,
            r.cpu_per_100m.0,
            r.cpu_per_100m.1
        );
    }
    println!(
        "\ngateway / c-icap: {:.2}× objects/s, p99 {:.2} vs {:.2} ms, {:.2}× server CPU per object, {:.2}× on 100 MiB",
        gw_row.rate.per_s / ci_row.rate.per_s,
        gw_row.rate.p99_ms,
        ci_row.rate.p99_ms,
        gw_row.cpu_per_object_us.0 / ci_row.cpu_per_object_us.0,
        gw_row.mib_s / ci_row.mib_s
    );
    Ok(())
}
