//! `cargo xtask demo`: the gateway with its default configuration on the
//! rig, real traffic through it, and a table of what happened.

use std::io::BufRead as _;

use anyhow::{Context as _, ensure};
use tests::{
    Gateway, Ns, Rig,
    nginx::Nginx,
    rig::{CLIENT_V4, SERVER_V4, SERVER_V6},
    util::{random_file, sha256_file},
};

struct Row {
    what: String,
    result: String,
    seen_by_server: String,
}

/// Runs the demo.
pub fn run() -> anyhow::Result<()> {
    let mut rig = Rig::new("demo")?;
    let nginx = Nginx::start(&mut rig, &[80, 8080], 1)?;
    random_file(&nginx.www.join("100m.bin"), 100 << 20, 1)?;
    random_file(&nginx.www.join("1m.bin"), 1 << 20, 2)?;
    let upload = random_file(&rig.dir().join("10m.bin"), 10 << 20, 3)?;
    println!("rig: client {CLIENT_V4} → gateway (namespace {}) → server {SERVER_V4}", rig.name(Ns::Gateway));
    println!("gateway: built-in defaults (config/gateway.toml), steering on cli0\n");
    let gw =
        Gateway::start(&mut rig, &tests::gateway::Settings { http: tests::gateway::NO_SCAN, ..Default::default() })?;

    let mut rows = Vec::new();
    for (what, url, file, path) in [
        ("GET 100 MiB, port 80 (steered)", format!("http://{SERVER_V4}/100m.bin"), "100m.bin", "/100m.bin"),
        ("GET 1 MiB over IPv6 (steered)", format!("http://[{SERVER_V6}]/1m.bin"), "1m.bin", "/1m.bin"),
        ("GET 1 MiB, port 8080 (not steered)", format!("http://{SERVER_V4}:8080/1m.bin"), "1m.bin", "/1m.bin"),
    ] {
        let dest = rig.dir().join(format!("got-{file}"));
        let out = rig.curl(&["-sS", "-o", &dest.to_string_lossy(), "-w", "%{http_code} %{speed_download}", &url])?;
        ensure!(out.status.success(), "curl {url}: {}", String::from_utf8_lossy(&out.stderr));
        let w = String::from_utf8_lossy(&out.stdout).to_string();
        let (code, speed) = w.split_once(' ').unwrap_or((&w, "0"));
        let same = sha256_file(&dest)? == sha256_file(&nginx.www.join(file))?;
        rows.push(Row {
            what: what.into(),
            result: format!(
                "HTTP {code}, {:.0} MiB/s, sha256 {}",
                speed.parse::<f64>().unwrap_or(0.0) / 1048576.0,
                if same { "identical" } else { "DIFFERS" }
            ),
            seen_by_server: nginx.last_peer(path)?,
        });
    }
    let out = rig.curl(&[
        "-sS",
        "-T",
        &upload.to_string_lossy(),
        "-w",
        "%{http_code}",
        &format!("http://{SERVER_V4}/upload/10m.bin"),
    ])?;
    let same = sha256_file(&nginx.uploads.join("10m.bin")).ok() == Some(sha256_file(&upload)?);
    rows.push(Row {
        what: "PUT 10 MiB, port 80 (steered)".into(),
        result: format!(
            "HTTP {}, sha256 {}",
            String::from_utf8_lossy(&out.stdout),
            if same { "identical" } else { "DIFFERS" }
        ),
        seen_by_server: nginx.last_peer("/upload/10m.bin")?,
    });

    println!("{:<38} {:<42} {}", "what the client did", "result", "server saw the connection from");
    println!("{}", "-".repeat(110));
    for r in &rows {
        println!("{:<38} {:<42} {}", r.what, r.result, r.seen_by_server);
    }
    let stats = gw.stats()?;
    println!("\ngateway counters:");
    println!(
        "  flows relayed {}, bytes up {}, bytes down {}",
        stats["proxy"]["flows_total"], stats["proxy"]["bytes_up"], stats["proxy"]["bytes_down"]
    );
    println!(
        "  TC steering: to listener {} packets, to established sockets {} packets",
        stats["kernel"]["steer"]["listener"]["packets"], stats["kernel"]["steer"]["established"]["packets"]
    );
    println!(
        "  XDP: tcp {} udp {} icmp {} blocked {} packets",
        stats["kernel"]["xdp"]["tcp"]["packets"],
        stats["kernel"]["xdp"]["udp"]["packets"],
        stats["kernel"]["xdp"]["icmp"]["packets"],
        stats["kernel"]["xdp"]["blocked"]["packets"]
    );
    println!("\ngateway flow log:");
    for l in gw.flow_lines() {
        println!("  {l}");
    }
    gw.stop(&mut rig, libc::SIGTERM).context("stopping the gateway")?;
    Ok(())
}

/// `cargo xtask rig`: a rig to poke at by hand.
pub fn interactive() -> anyhow::Result<()> {
    let mut rig = Rig::new("hand")?;
    let nginx = Nginx::start(&mut rig, &[80, 8080], 1)?;
    random_file(&nginx.www.join("1m.bin"), 1 << 20, 2)?;
    let gw =
        Gateway::start(&mut rig, &tests::gateway::Settings { http: tests::gateway::NO_SCAN, ..Default::default() })?;
    println!("client:  ip netns exec {} curl http://{SERVER_V4}/1m.bin -o /dev/null", rig.name(Ns::Client));
    println!(
        "gateway: ip netns exec {} {} stats --socket {}",
        rig.name(Ns::Gateway),
        tests::gateway::binary()?.display(),
        gw.socket.display()
    );
    println!("log:     {}", gw.log.display());
    println!("press Enter to tear the rig down");
    let _ = std::io::stdin().lock().lines().next();
    Ok(())
}
