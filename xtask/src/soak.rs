//! `cargo xtask soak`: a long run of mixed traffic through the gateway on
//! the rig — clean and EICAR downloads and uploads, keep-alive and new
//! connections, slow readers, clients that vanish, FTP sessions — with
//! `--connections` concurrent clients for `--minutes`, then checks what a
//! gateway must keep: no refusal while the scanner is merely busy, no
//! infected delivery, no corrupted clean body (sha256), and memory, file
//! descriptors, spool and expectations back to where they started.

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use tests::{
    Gateway, Ns, Rig,
    clamd::{Clamd, eicar},
    gateway::Settings,
    nginx::Nginx,
    util::{PYTHON, random_file, sha256_file, wait_for},
};

/// The load generator (asyncio, in the client namespace): argv is
/// duration, connections, then `name=sha256` of the clean files.
const LOAD: &str = r#"
import asyncio, hashlib, json, random, socket, struct, sys, time, ftplib
from concurrent.futures import ThreadPoolExecutor
SERVER = '198.19.0.2'
DURATION, CONNS = float(sys.argv[1]), int(sys.argv[2])
SHA = dict(a.split('=') for a in sys.argv[3:])
MARK = b'EICAR-STANDARD-ANTIVIRUS-TEST-FILE'
EICAR = b'X5O!P%@AP[4\\PZX54(P^)7CC)7}$' + MARK + b'!$H+H*'
stats = {}
def count(k, n=1): stats[k] = stats.get(k, 0) + n
async def read_response(r):
    head = await r.readuntil(b'\r\n\r\n')
    status = int(head.split(b' ')[1])
    length = None
    for line in head.split(b'\r\n'):
        if line.lower().startswith(b'content-length:'): length = int(line.split(b':')[1])
    body = await r.readexactly(length) if length is not None else await r.read()
    return status, body
async def conn(src):
    r, w = await asyncio.wait_for(asyncio.open_connection(SERVER, 80, local_addr=(src, 0)), 30)
    return r, w
def close(w, reset=False):
    if reset:
        w.get_extra_info('socket').setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
    w.close()
def judge(kind, status, body, want=None):
    if MARK in body: count('infected_delivered')
    if status == 503: count('refused')
    elif kind == 'clean':
        if status != 200: count('unexpected_status')
        elif hashlib.sha256(body).hexdigest() != want: count('corrupted')
        else: count('clean_ok')
    elif kind == 'eicar':
        count('blocked' if status == 403 else 'unexpected_status')
async def get(src, path, keep=1):
    r, w = await conn(src)
    for i in range(keep):
        w.write(b'GET /%s HTTP/1.1\r\nHost: s\r\n\r\n' % path.encode())
        await w.drain()
        status, body = await asyncio.wait_for(read_response(r), 120)
        judge('eicar' if 'eicar' in path else 'clean', status, body, SHA.get(path))
    close(w)
async def upload(src, infected):
    r, w = await conn(src)
    body = EICAR if infected else random.randbytes(128 << 10)
    w.write(b'POST /sink HTTP/1.1\r\nHost: s\r\nContent-Length: %d\r\n\r\n' % len(body) + body)
    await w.drain()
    status, _ = await asyncio.wait_for(read_response(r), 120)
    if status == 503: count('refused')
    elif infected: count('upload_blocked' if status == 403 else 'upload_infected_passed')
    else: count('upload_ok' if status == 204 else 'unexpected_status')
    close(w)
async def slow(src):
    r, w = await conn(src)
    w.write(b'GET /c1m HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n'); await w.drain()
    data = b''
    while True:
        c = await asyncio.wait_for(r.read(16384), 120)
        if not c: break
        data += c
        await asyncio.sleep(0.05)
    head, _, body = data.partition(b'\r\n\r\n')
    judge('clean', int(head.split(b' ')[1]), body, SHA['c1m'])
    close(w)
async def vanish(src):
    r, w = await conn(src)
    w.write(b'GET /c1m HTTP/1.1\r\nHost: s\r\n\r\n'); await w.drain()
    await asyncio.sleep(random.random() * 0.2)
    close(w, reset=True)
    count('vanished')
def ftp(src, infected):
    f = ftplib.FTP(source_address=(src, 0)); f.connect(SERVER, 21, timeout=60); f.login('u', 'p')
    got = []
    try:
        f.retrbinary('RETR ' + ('eicar.com' if infected else 'c1m'), got.append)
        data = b''.join(got)
        if MARK in data: count('infected_delivered')
        elif infected: count('unexpected_status')
        elif hashlib.sha256(data).hexdigest() == SHA['c1m']: count('ftp_ok')
        else: count('corrupted')
    except ftplib.error_perm as e:
        count('ftp_blocked' if infected and str(e).startswith('505') else 'unexpected_status')
    except ftplib.error_temp as e:
        count('refused' if str(e).startswith('421') else 'errors')
    if MARK in b''.join(got): count('infected_delivered')
    f.quit()
POOL = ThreadPoolExecutor(16)
async def worker(i, end):
    src = '198.18.0.%d' % (2 + i % 8)
    loop = asyncio.get_running_loop()
    while time.time() < end:
        x = random.random()
        try:
            if x < .35: await get(src, 'c64k', keep=5)
            elif x < .50: await get(src, 'c1m')
            elif x < .58: await get(src, random.choice(['eicar.com', 'eicar.zip']))
            elif x < .68: await upload(src, False)
            elif x < .72: await upload(src, True)
            elif x < .77: await slow(src)
            elif x < .87: await vanish(src)
            else: await loop.run_in_executor(POOL, ftp, src, random.random() < .3)
            count('exchanges')
        except Exception as e:
            count('errors'); count('error:' + type(e).__name__)
async def main():
    end = time.time() + DURATION
    await asyncio.gather(*(worker(i, end) for i in range(CONNS)))
    print(json.dumps(stats))
asyncio.run(main())
"#;

/// Resident memory (KiB) and open descriptors of the gateway.
fn footprint(pid: u32) -> (u64, usize) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:")?.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
    (rss, fds)
}

/// Runs the soak.
pub fn soak(minutes: f64, connections: usize) -> anyhow::Result<()> {
    let mut rig = Rig::new("soak")?;
    let nginx = Nginx::start(&mut rig, &[80], 2)?;
    let c64k = sha256_file(&random_file(&nginx.www.join("c64k"), 64 << 10, 1)?)?;
    let c1m = sha256_file(&random_file(&nginx.www.join("c1m"), 1 << 20, 2)?)?;
    std::fs::write(nginx.www.join("eicar.com"), eicar())?;
    tests::clamd::eicar_zip(&nginx.www.join("eicar.zip"), "x/eicar.com")?;
    let root = rig.dir().join("ftproot");
    tests::ftpd::start(&mut rig, &root)?;
    std::fs::copy(nginx.www.join("c1m"), root.join("c1m"))?;
    std::fs::write(root.join("eicar.com"), eicar())?;
    let clamd = Clamd::start(rig.dir().join("clamd"), "300M")?;
    let scan = format!("clamd = \"{}\"", clamd.addr());
    let gw = Gateway::start(&mut rig, &Settings { scan: &scan, ..Settings::default() })?;
    // Warm up (clamd sessions, allocator arenas), then take the baseline.
    let warm =
        rig.run(Ns::Client, PYTHON, &["-c", LOAD, "10", "20", &format!("c64k={c64k}"), &format!("c1m={c1m}")])?;
    ensure!(warm.status.success(), "warm-up: {}", String::from_utf8_lossy(&warm.stderr));
    let settle = |what: &str| {
        wait_for(what, Duration::from_secs(120), || {
            (gw.counter("/proxy/flows_active").ok()? == 0 && gw.counter("/expectations").ok()? == 0).then_some(())
        })
    };
    settle("the warm-up to end")?;
    std::thread::sleep(Duration::from_secs(5));
    let (rss0, fds0) = footprint(gw.pid);
    eprintln!("xtask soak: {connections} connections for {minutes} minutes (baseline RSS {rss0} KiB, {fds0} fds)");
    let started = Instant::now();
    let secs = format!("{}", minutes * 60.0);
    let out = rig
        .run(
            Ns::Client,
            PYTHON,
            &["-c", LOAD, &secs, &connections.to_string(), &format!("c64k={c64k}"), &format!("c1m={c1m}")],
        )
        .context("running the load")?;
    let load = String::from_utf8_lossy(&out.stdout).to_string();
    ensure!(out.status.success(), "load: {load}{}", String::from_utf8_lossy(&out.stderr));
    let stats: serde_json::Value = serde_json::from_str(load.trim()).context("the load's figures")?;
    let peak = std::fs::read_to_string(format!("/proc/{}/status", gw.pid))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    settle("the gateway to let go of every flow")?;
    let spool_left = wait_for("the spool to empty", Duration::from_secs(60), || {
        let left = gw.open_spool_files();
        (left == 0).then_some(left)
    })
    .unwrap_or_else(|_| gw.open_spool_files());
    std::thread::sleep(Duration::from_secs(10));
    let (rss1, fds1) = footprint(gw.pid);
    let n = |k: &str| stats.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
    let kernel_drops: u64 = ["drop_no_listener", "drop_assign", "drop_stray"]
        .iter()
        .map(|k| gw.counter(&format!("/kernel/steer/{k}/packets")).unwrap_or(0))
        .sum();
    println!("| figure | value |\n|---|---|");
    println!(
        "| duration | {:.1} min, {connections} concurrent clients (8 client addresses) |",
        started.elapsed().as_secs_f64() / 60.0
    );
    println!("| exchanges completed | {} |", n("exchanges"));
    println!("| clean downloads identical (sha256) | {} |", n("clean_ok"));
    println!("| FTP RETR identical / blocked (505) | {} / {} |", n("ftp_ok"), n("ftp_blocked"));
    println!("| EICAR downloads blocked (403) | {} |", n("blocked"));
    println!("| uploads passed / EICAR uploads blocked | {} / {} |", n("upload_ok"), n("upload_blocked"));
    println!("| clients that vanished mid-transfer | {} |", n("vanished"));
    println!("| **refusals (503/421)** | {} |", n("refused"));
    println!("| **infected deliveries** | {} |", n("infected_delivered") + n("upload_infected_passed"));
    println!("| **corrupted clean bodies** | {} |", n("corrupted"));
    println!("| unexpected statuses / client errors | {} / {} |", n("unexpected_status"), n("errors"));
    println!("| kernel drops on steered ports (no listener, assign, stray) | {kernel_drops} |");
    println!("| gateway RSS before → peak → after | {rss0} KiB → {peak} → {rss1} KiB |");
    println!("| gateway file descriptors before → after | {fds0} → {fds1} |");
    println!("| spool files / expectations left | {spool_left} / {} |", gw.counter("/expectations").unwrap_or(0));
    let errors: Vec<String> = stats
        .as_object()
        .map(|o| o.iter().filter(|(k, _)| k.starts_with("error:")).map(|(k, v)| format!("{k}={v}")).collect())
        .unwrap_or_default();
    if !errors.is_empty() {
        println!("\nclient errors by kind: {}", errors.join(", "));
    }
    ensure!(n("infected_delivered") + n("upload_infected_passed") == 0, "infected bytes were delivered");
    ensure!(n("corrupted") == 0, "clean bodies arrived corrupted");
    ensure!(n("refused") == 0, "clients were refused while the scanner was busy");
    // clamd sessions stay pooled (at most 32) for the next scans.
    ensure!(fds1 <= fds0 + 32, "file descriptors leaked: {fds0} → {fds1}");
    ensure!(rss1 <= rss0 + 32 * 1024, "memory was not given back: {rss0} KiB → {rss1} KiB");
    ensure!(spool_left == 0, "spool files left");
    Ok(())
}
