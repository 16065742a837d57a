//! `cargo xtask bench ftp`: 1 GiB RETR and STOR through pyftpdlib, direct
//! forwarding vs the scanning gateway, beside clamd's own INSTREAM rate for
//! the same bytes (the limit of any scanning path).

use std::time::Instant;

use anyhow::ensure;
use tests::{Gateway, Rig, clamd::Clamd, gateway::Settings, rig::SERVER_V4, util::random_file};

fn curl_rate(rig: &Rig, args: &[&str], field: &str) -> anyhow::Result<f64> {
    let mut a = vec!["-sS", "--fail", "-m", "600", "-w", field];
    a.extend_from_slice(args);
    let out = rig.curl(&a)?;
    ensure!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse::<f64>()? / 1048576.0)
}

/// Runs the FTP benchmark.
pub fn ftp(mib: u64) -> anyhow::Result<()> {
    let mut rig = Rig::new("bftp")?;
    let root = rig.dir().join("ftproot");
    tests::ftpd::start(&mut rig, &root)?;
    let name = format!("{mib}m.bin");
    let file = random_file(&root.join(&name), mib << 20, 7)?;
    let upload = random_file(&rig.dir().join("upload.bin"), mib << 20, 8)?;
    let up = upload.to_string_lossy().to_string();
    let clamd = Clamd::start(rig.dir().join("clamd"), "4000M")?;
    let get = format!("ftp://u:p@{SERVER_V4}/{name}");
    let put = format!("ftp://u:p@{SERVER_V4}/up-{name}");

    eprintln!("bench ftp: clamd INSTREAM on the same {mib} MiB");
    let t = Instant::now();
    crate::bench_scan::instream(&clamd.socket, &file)?;
    let limit = mib as f64 / t.elapsed().as_secs_f64();

    eprintln!("bench ftp: direct forwarding");
    let d_get = curl_rate(&rig, &["-o", "/dev/null", &get], "%{speed_download}")?;
    let d_put = curl_rate(&rig, &["-T", &up, &put], "%{speed_upload}")?;

    eprintln!("bench ftp: through the gateway, scanning with clamd");
    let scan = format!("clamd = \"{}\"\nmax_scan_size = \"4GiB\"", clamd.addr());
    let gw = Gateway::start(&mut rig, &Settings { scan: &scan, ..Settings::default() })?;
    let g_get = curl_rate(&rig, &["-o", "/dev/null", &get], "%{speed_download}")?;
    let g_put = curl_rate(&rig, &["-T", &up, &put], "%{speed_upload}")?;
    let scanned = gw.log_text().lines().filter(|l| l.contains(" ftp] ") && l.contains("verdict=clean")).count();
    gw.stop(&mut rig, libc::SIGTERM)?;
    ensure!(scanned == 2, "expected 2 scanned transfers in the gateway log, found {scanned}");

    println!("\n| {mib} MiB | direct forwarding | gateway + clamd | clamd INSTREAM alone | gateway / clamd |");
    println!("|---|---|---|---|---|");
    println!("| RETR, MiB/s | {d_get:.0} | {g_get:.1} | {limit:.1} | {:.2}× |", g_get / limit);
    println!("| STOR, MiB/s | {d_put:.0} | {g_put:.1} | {limit:.1} | {:.2}× |", g_put / limit);
    println!(
        "\n(Squid 6.13's ftp_port with c-icap: 36.6 MiB/s for 100 MiB, measured on this kind of machine: ../shared/README.md)"
    );
    Ok(())
}
