//! Prometheus metrics (issue 13, item 4): Debian's Prometheus server
//! scrapes the real gateway while curl makes clean and EICAR requests, and
//! its query API must return the gateway's series with the values the
//! traffic implies; `promtool check metrics` must pass on a scrape; the
//! endpoint stays within its bounds; FTP transfers and the scanner pool's
//! member states are exported.

use std::time::Duration;

use tests::{
    Gateway, Ns, Rig,
    clamd::eicar,
    ftpd::FtpEnv,
    gateway::{NO_SCAN, Settings},
    prometheus::{GATEWAY_METRICS, Prometheus, promtool_check, sample, scrape},
    rig::SERVER_V4,
    tls::{BANK, TlsEnv, WWW},
    util::{PYTHON, output_text, random_file, wait_for},
    web::{Web, WebSettings},
};

/// What Prometheus 2.42 sends when it scrapes.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// A scrape once every flow has ended (bytes are counted at a flow's end).
fn scrape_when_idle(rig: &Rig, gw: &Gateway) -> anyhow::Result<String> {
    wait_for("the flows to end", Duration::from_secs(10), || {
        (gw.counter("/proxy/flows_active").ok()? == 0).then_some(())
    })?;
    Ok(scrape(rig, None)?.1)
}

#[test]
fn prometheus_scrapes_the_gateway_series() -> anyhow::Result<()> {
    // XDP attached with nothing to drop, so that its counters count.
    let mut env = Web::with("mprom", &WebSettings { steering: "xdp_mode = \"skb\"", ..WebSettings::default() })?;
    random_file(&env.nginx.www.join("1m"), 1 << 20, 7)?;
    let prom = Prometheus::start(&mut env.rig, Ns::Gateway, GATEWAY_METRICS)?;
    prom.wait_value(&env.rig, "up{job=\"gateway\"}", 1.0)?;

    for _ in 0..3 {
        assert_eq!(env.get(&format!("http://{SERVER_V4}/1m"), &[])?.0, 200);
    }
    // The first EICAR is scanned; the second is refused from the verdict
    // cache (same URL and ETag) before its body is fetched.
    for _ in 0..2 {
        assert_eq!(env.get(&format!("http://{SERVER_V4}/eicar.com"), &[])?.0, 403);
    }
    wait_for("the flows to end", Duration::from_secs(10), || {
        (env.gw().counter("/proxy/flows_active").ok()? == 0).then_some(())
    })?;

    let r = &env.rig;
    for (q, want) in [
        ("gateway_decisions_total{transfer=\"http-download\",decision=\"infected\"}", 2.0),
        ("gateway_decisions_total{transfer=\"http-download\",decision=\"pass\"}", 3.0),
        ("gateway_http_requests_total{class=\"2xx\"}", 3.0),
        ("gateway_http_requests_total{class=\"4xx\"}", 2.0),
        ("gateway_scans_total{backend=\"clamd\",verdict=\"clean\"}", 3.0),
        ("gateway_scans_total{backend=\"clamd\",verdict=\"infected\"}", 1.0),
        ("gateway_verdict_cache_hits_total{key=\"url\"}", 1.0),
        ("gateway_scan_duration_seconds_count{backend=\"clamd\"}", 4.0),
        ("gateway_flows_total{protocol=\"http\"}", 5.0),
        ("gateway_flows_active{protocol=\"http\"}", 0.0),
        ("gateway_spool_bytes{store=\"memory\"}", 0.0),
        ("sum(gateway_scan_errors_total)", 0.0),
        ("gateway_connections_refused_total", 0.0),
    ] {
        prom.wait_value(r, q, want)?;
    }
    // Bytes each way, and the kernel's counters read from the eBPF maps.
    assert!(prom.value(r, "gateway_bytes_total{direction=\"down\"}")? >= (3 << 20) as f64);
    assert!(prom.value(r, "gateway_bytes_total{direction=\"up\"}")? > 0.0);
    assert!(prom.value(r, "gateway_steer_packets_total{outcome=\"listener\"}")? >= 5.0, "every SYN went to a listener");
    assert!(prom.value(r, "gateway_xdp_packets_total{counter=\"tcp\"}")? > 0.0);
    assert_eq!(prom.value(r, "gateway_scan_duration_seconds_bucket{backend=\"clamd\",le=\"+Inf\"}")?, 4.0);
    assert_eq!(prom.value(r, "gateway_scanner_state{state=\"up\"}")?, 1.0, "the clamd member is up");

    // The classic text format by default, and promtool finds nothing wrong.
    let (kind, classic) = scrape(r, None)?;
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    assert!(!classic.contains("# EOF"));
    let (ok, findings) = promtool_check(classic.as_bytes())?;
    assert!(ok && findings.trim().is_empty(), "promtool check metrics: {findings}\n{classic}");
    assert_eq!(sample(&classic, "gateway_flows_total{protocol=\"http\"}"), Some(5.0), "{classic}");
    // OpenMetrics to a scraper that asks as Prometheus does.
    let (kind, om) = scrape(r, Some(PROMETHEUS_ACCEPT))?;
    assert!(kind.starts_with("application/openmetrics-text; version=1.0.0"), "{kind}");
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# TYPE gateway_flows counter\n"), "{om}");
    Ok(())
}

#[test]
fn ftp_transfers_and_505s_are_counted() -> anyhow::Result<()> {
    let env = FtpEnv::start("mftp", "", "")?;
    std::fs::write(env.root.join("eicar.com"), eicar())?;
    random_file(&env.root.join("clean.bin"), 64 << 10, 3)?;
    let out = env.ftplib(
        SERVER_V4,
        "f.retrbinary('RETR clean.bin', lambda b: None)\n\
         try:\n    f.retrbinary('RETR eicar.com', lambda b: None)\nexcept ftplib.error_perm as e:\n    print('refused', e)\n\
         f.quit()",
    )?;
    let text = output_text(&out);
    assert!(out.status.success() && text.contains("refused 505"), "{text}");
    let m = scrape_when_idle(&env.rig, &env.gw)?;
    let at = |s: &str| sample(&m, s);
    assert_eq!(at("gateway_ftp_transfers_total{direction=\"download\",outcome=\"infected\"}"), Some(1.0), "{m}");
    assert_eq!(at("gateway_ftp_transfers_total{direction=\"download\",outcome=\"delivered\"}"), Some(1.0), "{m}");
    assert_eq!(at("gateway_decisions_total{transfer=\"ftp-download\",decision=\"infected\"}"), Some(1.0), "{m}");
    assert_eq!(at("gateway_flows_total{protocol=\"ftp\"}"), Some(1.0), "{m}");
    assert_eq!(at("gateway_flows_total{protocol=\"ftp-data\"}"), Some(2.0), "{m}");
    Ok(())
}

#[test]
fn tls_handshakes_are_counted() -> anyhow::Result<()> {
    let env = TlsEnv::start("mtls", "")?;
    assert_eq!(env.get(WWW, "/eicar.com", &[])?.0, 403, "intercepted and blocked");
    // A name in bypass_sni is spliced: the client sees the server's own certificate.
    let out = env.curl(BANK, "/eicar.com", &env.upstream_ca(), &["-o", "/dev/null"])?;
    assert!(out.status.success(), "{}", output_text(&out));
    let m = scrape_when_idle(&env.rig, env.gw())?;
    let at = |s: &str| sample(&m, s);
    assert_eq!(at("gateway_tls_handshakes_total{outcome=\"intercepted\"}"), Some(1.0), "{m}");
    assert_eq!(at("gateway_tls_handshakes_total{outcome=\"spliced\"}"), Some(1.0), "{m}");
    assert_eq!(at("gateway_tls_handshakes_total{outcome=\"failed\"}"), Some(0.0), "{m}");
    assert_eq!(at("gateway_flows_total{protocol=\"tls\"}"), Some(2.0), "{m}");
    assert_eq!(at("gateway_decisions_total{transfer=\"http-download\",decision=\"infected\"}"), Some(1.0), "{m}");
    Ok(())
}

#[test]
fn icap_service_state_is_exported() -> anyhow::Result<()> {
    let env = Web::with("micap", &WebSettings { icap: true, ..WebSettings::default() })?;
    assert_eq!(env.get(&format!("http://{SERVER_V4}/eicar.com"), &[])?.0, 403);
    let member_state = |m: &str, state: &str| {
        m.lines()
            .find(|l| {
                l.starts_with("gateway_scanner_state{")
                    && l.contains("icap://")
                    && l.contains(&format!("state=\"{state}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    let (_, m) = scrape(&env.rig, None)?;
    assert_eq!(member_state(&m, "up"), Some(1.0), "{m}");
    assert_eq!(sample(&m, "gateway_scans_total{backend=\"icap\",verdict=\"infected\"}"), Some(1.0), "{m}");
    // The service goes away: the pool marks it down and the series says so.
    let pid = env.rig.run(Ns::Gateway, "ss", &["-Hltnp", "sport = :1344"])?;
    let pids: Vec<i32> =
        output_text(&pid).split("pid=").skip(1).filter_map(|p| p.split(',').next()?.parse().ok()).collect();
    assert!(!pids.is_empty(), "c-icap listens: {}", output_text(&pid));
    for p in pids {
        // SAFETY: plain kill(2) on c-icap, a process of this rig.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    // A URL the verdict cache does not know, so that a scan is tried.
    let _ = env.get(&format!("http://{SERVER_V4}/eicar.zip"), &[]);
    let down = wait_for("the ICAP member to show as down", Duration::from_secs(20), || {
        let (_, m) = scrape(&env.rig, None).ok()?;
        (member_state(&m, "down") == Some(1.0) && member_state(&m, "up") == Some(0.0)).then_some(m)
    });
    let m = down.map_err(|e| anyhow::anyhow!("{e}: {:?}", scrape(&env.rig, None)))?;
    assert!(sample(&m, "gateway_scan_errors_total{kind=\"unavailable\"}").unwrap_or(0.0) >= 1.0, "{m}");
    Ok(())
}

#[test]
fn the_endpoint_is_bounded() -> anyhow::Result<()> {
    let mut rig = Rig::new("mbound")?;
    let gw = Gateway::start(&mut rig, &Settings { http: NO_SCAN, ..Settings::default() })?;
    // Other paths, other methods, oversized heads.
    let status = |req: &str| -> anyhow::Result<String> {
        let py = format!(
            "import socket\ns=socket.create_connection(('127.0.0.1',9447))\ns.sendall({req:?}.encode())\n\
             print(s.recv(200).split(b'\\r\\n')[0].decode())"
        );
        Ok(output_text(&rig.run(Ns::Gateway, PYTHON, &["-c", &py])?).trim().to_string())
    };
    assert_eq!(status("GET / HTTP/1.1\r\n\r\n")?, "HTTP/1.1 404 Not Found");
    assert_eq!(status("POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")?, "HTTP/1.1 405 Method Not Allowed");
    let big = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000));
    assert_eq!(status(&big)?, "HTTP/1.1 431 Request Header Fields Too Large");
    // 8 connections that send nothing hold every slot: a 9th is refused
    // with 503 and a log line; once they time out (5 s), scrapes work again.
    let py = "import socket,time\nidle=[socket.create_connection(('127.0.0.1',9447)) for _ in range(8)]\n\
              time.sleep(0.5)\ns=socket.create_connection(('127.0.0.1',9447))\ns.sendall(b'GET /metrics HTTP/1.1\\r\\n\\r\\n')\n\
              print(s.recv(100).split(b'\\r\\n')[0].decode())\n\
              print([c.recv(10) for c in idle])\n";
    let out = rig.run(Ns::Gateway, PYTHON, &["-c", py])?;
    let text = output_text(&out);
    assert!(text.starts_with("HTTP/1.1 503 Service Unavailable\n"), "{text}");
    assert!(
        text.contains("[b'', b'', b'', b'', b'', b'', b'', b'']"),
        "idle connections closed at the timeout: {text}"
    );
    assert!(gw.log_text().contains("metrics: connection from 127.0.0.1"), "{}", gw.log_text());
    assert!(gw.log_text().contains("refused: 8 scrapes are being served"), "{}", gw.log_text());
    let (_, m) = scrape(&rig, None)?;
    assert!(m.contains("gateway_build_info{version="), "{m}");
    Ok(())
}

#[test]
fn metrics_can_be_switched_off() -> anyhow::Result<()> {
    let mut rig = Rig::new("moff")?;
    let text = tests::gateway::config(&rig, &Settings { http: NO_SCAN, ..Settings::default() });
    let _gw = Gateway::start_with(&mut rig, &format!("{text}\n[metrics]\nlisten = \"\"\n"))?;
    let out = rig.run(Ns::Gateway, "ss", &["-Hltn", "sport = :9447"])?;
    assert!(out.stdout.is_empty(), "nothing listens on 9447: {}", output_text(&out));
    Ok(())
}
