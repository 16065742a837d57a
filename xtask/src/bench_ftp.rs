//! `cargo xtask bench ftp`: 1 GiB RETR and STOR through pyftpdlib, direct
//! forwarding vs the scanning gateway, beside clamd's own INSTREAM rate for
//! the same bytes (the limit of any scanning path), and with `--squid`
//! Squid 6.13's FTP relay with c-icap on the same clamd.

use std::time::Instant;

use anyhow::ensure;
use tests::{Gateway, Rig, clamd::Clamd, gateway::Settings, rig::SERVER_V4, util::random_file};

use crate::bench_http::Squid;

fn curl_rate(rig: &Rig, args: &[&str], field: &str) -> anyhow::Result<f64> {
    let mut a = vec!["-sS", "--fail", "-m", "600", "-w", field];
    a.extend_from_slice(args);
    let out = rig.curl(&a)?;
    ensure!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse::<f64>()? / 1048576.0)
}

/// Runs the FTP benchmark; `squid` adds Squid 6.13's FTP relay
/// (`ftp_port … intercept`) with c-icap on the same clamd.
pub fn ftp(mib: u64, squid: bool) -> anyhow::Result<()> {
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
    let scanned = gw.log_text().lines().filter(|l| l.contains(" ftp: ") && l.contains("verdict=clean")).count();
    gw.stop(&mut rig, libc::SIGTERM)?;
    ensure!(scanned == 2, "expected 2 scanned transfers in the gateway log, found {scanned}");

    // Per verb: Squid's rate, or why it failed.
    let squid_rates: Option<[Result<f64, String>; 2]> = if squid {
        eprintln!("bench ftp: Squid 6.13 ftp_port intercept + c-icap + clamd");
        // Squid announces the server's address with a port of its own for
        // the data connection, so those need a redirect too.
        let data = format!("iifname \"{}\" tcp dport 1024-65535 redirect", tests::rig::CLIENT_IFACE);
        let sq = Squid::start(
            &mut rig,
            &clamd,
            "ftp_port 2121 intercept",
            &format!("tcp dport 21 redirect to :2121; {data}"),
        )?;
        let rates = [
            curl_rate(&rig, &["-o", "/dev/null", &get], "%{speed_download}"),
            curl_rate(&rig, &["-T", &up, &put], "%{speed_upload}"),
        ];
        Some(rates.map(|r| {
            r.map_err(|e| {
                eprintln!("bench ftp: through Squid: {e:#} (Squid's log: {})", sq.log.display());
                format!("failed: {}", e.to_string().lines().next().unwrap_or_default())
            })
        }))
    } else {
        None
    };

    let squid_head = if squid_rates.is_some() { " Squid + c-icap + clamd | gateway / Squid |" } else { "" };
    println!(
        "\n| {mib} MiB | direct forwarding | gateway + clamd | clamd INSTREAM alone | gateway / clamd |{squid_head}"
    );
    println!("|---|---|---|---|---|{}", if squid_rates.is_some() { "---|---|" } else { "" });
    for (i, (verb, direct, gw)) in [("RETR", d_get, g_get), ("STOR", d_put, g_put)].into_iter().enumerate() {
        let squid_cells = match squid_rates.as_ref().map(|r| &r[i]) {
            Some(Ok(v)) => format!(" {v:.1} | {:.2}× |", gw / v),
            Some(Err(why)) => format!(" {why} | - |"),
            None => String::new(),
        };
        println!("| {verb}, MiB/s | {direct:.0} | {gw:.1} | {limit:.1} | {:.2}× |{squid_cells}", gw / limit);
    }
    Ok(())
}
