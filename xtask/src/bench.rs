//! `cargo xtask bench`: measurements on the rig, printed as tables with
//! ratios. Nothing here asserts a speed; numbers are for people.

use anyhow::{Context as _, ensure};
use tests::{Gateway, Ns, Rig, nginx::Nginx, rig::SERVER_V4, util::random_file};

const RUNS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

use tests::util::output_text as out_text;

/// Median MiB/s of `RUNS` curl transfers; `upload` is a file to PUT.
fn transfer(rig: &Rig, url: &str, upload: Option<&str>) -> anyhow::Result<f64> {
    let mut speeds = Vec::new();
    for _ in 0..RUNS {
        let mut args = vec!["-sS", "--fail", "-o", "/dev/null"];
        let field = if let Some(f) = upload {
            args.extend_from_slice(&["-T", f]);
            "%{speed_upload}"
        } else {
            "%{speed_download}"
        };
        args.extend_from_slice(&["-w", field, url]);
        let out = rig.curl(&args)?;
        ensure!(out.status.success(), "curl {url}: {}", out_text(&out));
        speeds.push(String::from_utf8_lossy(&out.stdout).trim().parse::<f64>()? / 1048576.0);
    }
    Ok(median(speeds))
}

/// wrk: requests/s, p50 ms, p99 ms.
pub fn rate(rig: &Rig, url: &str, seconds: u32, keepalive: bool) -> anyhow::Result<(f64, f64, f64)> {
    let d = format!("{seconds}s");
    let mut args = vec!["-t2", "-c16", "-d", &d, "--latency"];
    if !keepalive {
        args.extend_from_slice(&["-H", "Connection: close"]);
    }
    args.push(url);
    let out = rig.run(Ns::Client, "wrk", &args)?;
    let text = out_text(&out);
    ensure!(out.status.success(), "wrk: {text}");
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output: {text}"))?;
    let pct = |p: &str| -> f64 {
        text.lines().find_map(|l| l.trim().strip_prefix(p).map(|v| wrk_ms(v.trim()))).unwrap_or(f64::NAN)
    };
    Ok((rps, pct("50%"), pct("99%")))
}

fn wrk_ms(v: &str) -> f64 {
    let (num, mult) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (v, 1.0)
    };
    num.parse::<f64>().map(|n| n * mult).unwrap_or(f64::NAN)
}

struct Figures {
    down: f64,
    up: f64,
    ka: (f64, f64, f64),
    close: (f64, f64, f64),
}

/// The figures against `server` (`host` or `host:port`).
fn measure(rig: &Rig, server: &str, big: &str, upload: &str, seconds: u32) -> anyhow::Result<Figures> {
    Ok(Figures {
        down: transfer(rig, &format!("http://{server}/{big}"), None)?,
        up: transfer(rig, &format!("http://{server}/sink"), Some(upload))?,
        ka: rate(rig, &format!("http://{server}/1k.bin"), seconds, true)?,
        close: rate(rig, &format!("http://{server}/1k.bin"), seconds, false)?,
    })
}

/// Steered relay vs direct forwarding.
pub fn relay(mib: u64, seconds: u32) -> anyhow::Result<()> {
    let mut rig = Rig::new("bench")?;
    // 8080 is not steered: what the programs cost traffic they pass on.
    let nginx = Nginx::start(&mut rig, &[80, 8080], 1)?;
    let big = format!("{mib}m.bin");
    random_file(&nginx.www.join(&big), mib << 20, 1)?;
    random_file(&nginx.www.join("1k.bin"), 1024, 2)?;
    let upload = random_file(&rig.dir().join("upload.bin"), mib << 20, 3)?;
    let upload = upload.to_string_lossy().to_string();

    eprintln!("bench relay: direct forwarding ({RUNS} runs per bulk figure, {seconds}s per rate)");
    let direct = measure(&rig, SERVER_V4, &big, &upload, seconds)?;
    eprintln!("bench relay: through the gateway");
    let gw =
        Gateway::start(&mut rig, &tests::gateway::Settings { http: tests::gateway::NO_SCAN, ..Default::default() })?;
    let steered = measure(&rig, SERVER_V4, &big, &upload, seconds)?;
    let flows = gw.counter("/proxy/flows_total")?;
    eprintln!("bench relay: port 8080 (not steered) while the gateway runs");
    let passed = measure(&rig, &format!("{SERVER_V4}:8080"), &big, &upload, seconds)?;
    gw.stop(&mut rig, libc::SIGTERM)?;
    ensure!(flows > 0, "the gateway relayed no flow: the steered figures would be direct ones");

    println!("\n| figure | direct forwarding | steered relay | ratio | not steered (8080), gateway running | ratio |");
    println!("|---|---|---|---|---|---|");
    let bulk = |what: &str, d: f64, s: f64, p: f64| {
        println!(
            "| {mib} MiB {what}, MiB/s (median of {RUNS}) | {d:.0} | {s:.0} | {:.2}× | {p:.0} | {:.2}× |",
            s / d,
            p / d
        );
    };
    bulk("download", direct.down, steered.down, passed.down);
    bulk("upload", direct.up, steered.up, passed.up);
    for (name, d, s, p) in [
        ("keep-alive", direct.ka, steered.ka, passed.ka),
        ("new connection each", direct.close, steered.close, passed.close),
    ] {
        println!(
            "| 1 KiB requests/s, {name} (wrk 16 conns) | {:.0} | {:.0} | {:.2}× | {:.0} | {:.2}× |",
            d.0,
            s.0,
            s.0 / d.0,
            p.0,
            p.0 / d.0
        );
        println!(
            "| 1 KiB latency p50 / p99 ms, {name} | {:.2} / {:.2} | {:.2} / {:.2} | | {:.2} / {:.2} | |",
            d.1, d.2, s.1, s.2, p.1, p.2
        );
    }
    println!("\n(flows relayed by the gateway during the steered run: {flows})");
    Ok(())
}
