//! `cargo xtask demo`: the gateway with its built-in defaults on the rig,
//! scanning with a real clamd (the project's test signatures), real traffic
//! through it, and a table of what happened.

use std::io::BufRead as _;

use anyhow::Context as _;
use tests::{
    Gateway, Ns, Rig,
    clamd::{Clamd, eicar},
    gateway::Settings,
    nginx::Nginx,
    rig::{CLIENT_V4, SERVER_V4, SERVER_V6},
    util::{random_file, sha256_file},
};

struct Row {
    what: &'static str,
    result: String,
    server_saw: String,
}

fn curl_code(out: &std::process::Output) -> String {
    let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() { code } else { format!("curl failed: {}", String::from_utf8_lossy(&out.stderr).trim()) }
}

/// Runs the demo.
pub fn run() -> anyhow::Result<()> {
    let mut rig = Rig::new("demo")?;
    let nginx = Nginx::start(&mut rig, &[80, 8080], 1)?;
    random_file(&nginx.www.join("100m.bin"), 100 << 20, 1)?;
    random_file(&nginx.www.join("1m.bin"), 1 << 20, 2)?;
    std::fs::write(nginx.www.join("eicar.com"), eicar())?;
    tests::clamd::eicar_zip(&nginx.www.join("eicar.zip"), "docs/invoice.com")?;
    let upload = random_file(&rig.dir().join("10m.bin"), 10 << 20, 3)?;
    let eicar_up = rig.dir().join("eicar-upload.com");
    std::fs::write(&eicar_up, eicar())?;

    let ftp_root = rig.dir().join("ftproot");
    tests::ftpd::start(&mut rig, &ftp_root)?;
    random_file(&ftp_root.join("10m.bin"), 10 << 20, 4)?;
    std::fs::write(ftp_root.join("eicar.com"), eicar())?;
    let clamd = Clamd::start(rig.dir().join("clamd"), "1000M")?;
    println!("rig: client {CLIENT_V4} → gateway (namespace {}) → server {SERVER_V4}", rig.name(Ns::Gateway));
    println!(
        "gateway: built-in defaults (config/gateway.toml), steering on cli0, scanning with clamd at {}",
        clamd.addr()
    );
    println!("(clamd uses the project's test signatures: tests/data/clamav)\n");
    let scan = format!("clamd = \"{}\"", clamd.addr());
    let gw = Gateway::start(&mut rig, &Settings { scan: &scan, ..Settings::default() })?;

    let mut rows = Vec::new();
    for (what, url, file, path) in [
        ("GET 100 MiB clean file", format!("http://{SERVER_V4}/100m.bin"), "100m.bin", "/100m.bin"),
        ("GET 1 MiB clean file over IPv6", format!("http://[{SERVER_V6}]/1m.bin"), "1m.bin", "/1m.bin"),
        ("GET eicar.com", format!("http://{SERVER_V4}/eicar.com"), "eicar.com", "/eicar.com"),
        ("GET eicar.zip (EICAR inside a zip)", format!("http://{SERVER_V4}/eicar.zip"), "eicar.zip", "/eicar.zip"),
        ("GET 1 MiB on port 8080 (not steered)", format!("http://{SERVER_V4}:8080/1m.bin"), "1m.bin", "/1m.bin"),
    ] {
        let dest = rig.dir().join(format!("got-{}", rows.len()));
        let out = rig.curl(&["-sS", "-o", &dest.to_string_lossy(), "-w", "%{http_code} %{speed_download}", &url])?;
        let w = curl_code(&out);
        let (code, speed) = w.split_once(' ').unwrap_or((&w, "0"));
        let result = if code == "200" {
            let same = sha256_file(&dest)? == sha256_file(&nginx.www.join(file))?;
            format!(
                "200, {:.0} MiB/s, sha256 {}",
                speed.parse::<f64>().unwrap_or(0.0) / 1048576.0,
                if same { "identical" } else { "DIFFERS" }
            )
        } else {
            let page = std::fs::read_to_string(&dest).unwrap_or_default();
            let threat = page
                .split("<th align=\"left\">Threats</th><td>")
                .nth(1)
                .and_then(|t| t.split('<').next())
                .unwrap_or("?");
            format!("{code} block page: {threat}")
        };
        rows.push(Row { what, result, server_saw: nginx.last_peer(path).unwrap_or_else(|_| "-".into()) });
    }
    let out = rig.curl(&[
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-T",
        &upload.to_string_lossy(),
        &format!("http://{SERVER_V4}/upload/10m.bin"),
    ])?;
    let same = sha256_file(&nginx.uploads.join("10m.bin")).ok() == Some(sha256_file(&upload)?);
    rows.push(Row {
        what: "PUT 10 MiB clean file",
        result: format!("{}, stored sha256 {}", curl_code(&out), if same { "identical" } else { "DIFFERS" }),
        server_saw: nginx.last_peer("/upload/10m.bin").unwrap_or_else(|_| "-".into()),
    });
    let out = rig.curl(&[
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-F",
        &format!("file=@{}", eicar_up.display()),
        &format!("http://{SERVER_V4}/upload/form"),
    ])?;
    rows.push(Row {
        what: "POST form carrying EICAR",
        result: format!("{} (blocked before the server saw it)", curl_code(&out)),
        server_saw: nginx.last_peer("/upload/form").map_or("nothing".into(), |p| format!("{p} (!)")),
    });

    for (what, file, active) in [
        ("FTP RETR 10 MiB clean (passive)", "10m.bin", false),
        ("FTP RETR 10 MiB clean (active)", "10m.bin", true),
        ("FTP RETR eicar.com", "eicar.com", false),
    ] {
        let dest = rig.dir().join(format!("ftp-{}", rows.len()));
        let mut args = vec!["-sS", "-v", "-o"];
        let d = dest.to_string_lossy().to_string();
        args.push(&d);
        if active {
            args.extend_from_slice(&["-P", "-"]);
        }
        let url = format!("ftp://u:p@{SERVER_V4}/{file}");
        args.push(&url);
        let out = rig.curl(&args)?;
        let result = if out.status.success() {
            let same = sha256_file(&dest)? == sha256_file(&ftp_root.join(file))?;
            format!("transferred, sha256 {}", if same { "identical" } else { "DIFFERS" })
        } else {
            // The control reply the gateway sent instead of the server's 226.
            let err = String::from_utf8_lossy(&out.stderr).to_string();
            let reply = err.lines().rev().find_map(|l| l.strip_prefix("< 5")).map(|l| format!("5{l}"));
            let curl = err.lines().rev().find(|l| l.starts_with("curl:")).unwrap_or("failed").to_string();
            reply.unwrap_or(format!("{curl} (blocked; see the log)"))
        };
        rows.push(Row { what, result, server_saw: "-".into() });
    }

    println!("{:<38} {:<44} server saw the connection from", "what the client did", "result");
    println!("{}", "-".repeat(112));
    for r in &rows {
        println!("{:<38} {:<44} {}", r.what, r.result, r.server_saw);
    }
    let stats = gw.stats()?;
    println!("\ngateway counters:");
    println!(
        "  flows {}, bytes client→server {}, server→client {}",
        stats["proxy"]["flows_total"], stats["proxy"]["bytes_up"], stats["proxy"]["bytes_down"]
    );
    println!(
        "  TC steering: {} packets to the listener, {} to established sockets; XDP: tcp {} udp {} icmp {} blocked {}",
        stats["kernel"]["steer"]["listener"]["packets"],
        stats["kernel"]["steer"]["established"]["packets"],
        stats["kernel"]["xdp"]["tcp"]["packets"],
        stats["kernel"]["xdp"]["udp"]["packets"],
        stats["kernel"]["xdp"]["icmp"]["packets"],
        stats["kernel"]["xdp"]["blocked"]["packets"]
    );
    println!("\ndetection records ({}):", rig.dir().join("detections.jsonl").display());
    for r in gw.detections() {
        println!("  {r}");
    }
    println!("\nrequest and transfer log:");
    let log = gw.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(" http: ") || l.contains(" ftp: ")).collect();
    anyhow::ensure!(!lines.is_empty(), "the gateway logged no request or transfer: {log}");
    for l in lines {
        println!("  {l}");
    }
    gw.stop(&mut rig, libc::SIGTERM).context("stopping the gateway")?;
    Ok(())
}

/// `cargo xtask rig`: a rig to poke at by hand (gateway scanning with clamd).
pub fn interactive() -> anyhow::Result<()> {
    let mut rig = Rig::new("hand")?;
    let nginx = Nginx::start(&mut rig, &[80, 8080], 1)?;
    random_file(&nginx.www.join("1m.bin"), 1 << 20, 2)?;
    std::fs::write(nginx.www.join("eicar.com"), eicar())?;
    let clamd = Clamd::start(rig.dir().join("clamd"), "1000M")?;
    let scan = format!("clamd = \"{}\"", clamd.addr());
    let gw = Gateway::start(&mut rig, &Settings { scan: &scan, ..Settings::default() })?;
    println!("client:  ip netns exec {} curl http://{SERVER_V4}/eicar.com", rig.name(Ns::Client));
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
