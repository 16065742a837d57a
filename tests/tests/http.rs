//! The scanning HTTP proxy on steered flows (issue 4): real curl and raw
//! sockets in the client namespace, real nginx for plain files, real clamd,
//! and the rig's origin server for what nginx will not produce
//! (`tests::web`).

use std::time::Duration;

use tests::{
    Gateway, Ns,
    clamd::eicar,
    gateway::Settings,
    rig::{GW_SERVER_V4, SERVER_V4},
    util::{random_file, sha256_file, wait_for},
    web::{Web, WebSettings, random_bytes, status_lines},
};

fn setup(tag: &str, scan: &str) -> anyhow::Result<Web> {
    Web::start(tag, scan)
}

fn setup_with(tag: &str, scan: &str, http: &str, icap: bool) -> anyhow::Result<Web> {
    Web::with(tag, &WebSettings { scan, http, icap, ..WebSettings::default() })
}

use tests::util::output_text as text;

#[test]
fn clean_downloads_arrive_identical() -> anyhow::Result<()> {
    let env = setup("hclean", "")?;
    for (name, len) in [("0b", 0u64), ("1k", 1024), ("1m", 1 << 20), ("100m", 100 << 20)] {
        let want = sha256_file(&random_file(&env.nginx.www.join(name), len, len + 1)?)?;
        let (status, got) = env.get(&format!("http://{SERVER_V4}/{name}"), &[])?;
        assert_eq!(status, 200, "{name}");
        assert_eq!(sha256_file(&got)?, want, "{name} differs");
        assert_eq!(env.nginx.last_peer(&format!("/{name}"))?, GW_SERVER_V4);
    }
    // Encoded clean content and close-delimited bodies pass too, unchanged.
    let (s, got) = env.get(&format!("http://{SERVER_V4}:8081/gz-clean"), &[])?;
    assert_eq!(s, 200);
    assert_eq!(&std::fs::read(&got)?[..2], &[0x1f, 0x8b], "delivered as the server sent it (gzip)");
    let (s, got) = env.get(&format!("http://{SERVER_V4}:8081/br-clean"), &[])?;
    assert_eq!(s, 200, "real brotli data decoded, found clean and passed");
    assert_ne!(std::fs::read(&got)?, b"just text ".repeat(1000), "delivered as the server sent it (br)");
    let (s, got) = env.get(&format!("http://{SERVER_V4}:8081/close-clean"), &[])?;
    assert_eq!((s, std::fs::read(&got)?), (200, b"clean body until close".to_vec()));
    Ok(())
}

#[test]
fn infected_downloads_are_blocked_in_every_form() -> anyhow::Result<()> {
    let env = setup("hinf", "")?;
    for path in [
        format!("http://{SERVER_V4}/eicar.com"),
        format!("http://{SERVER_V4}/eicar.zip"),
        format!("http://{SERVER_V4}/tail-10m.bin"),
        format!("http://{SERVER_V4}:8081/gz-eicar"),
        format!("http://{SERVER_V4}:8081/gz2-eicar"),
        format!("http://{SERVER_V4}:8081/br-eicar"),
        format!("http://{SERVER_V4}:8081/gz-br-eicar"),
        format!("http://{SERVER_V4}:8081/deflate-eicar"),
        format!("http://{SERVER_V4}:8081/rawdeflate-eicar"),
        format!("http://{SERVER_V4}:8081/chunked1-eicar"),
        format!("http://{SERVER_V4}:8081/close-eicar"),
        format!("http://{SERVER_V4}:8081/foo-eicar"),
        format!("http://{SERVER_V4}:8081/identity-gz-eicar"),
    ] {
        let (status, got) = env.get(&path, &[])?;
        let page = std::fs::read_to_string(&got)?;
        assert_eq!(status, 403, "{path}: {page}");
        assert!(page.contains("Test.EICAR"), "{path}: no threat name in the page: {page}");
        assert!(!page.contains("EICAR-STANDARD-ANTIVIRUS"), "{path}: the payload reached the client");
    }
    let records = env.gw().detections();
    assert_eq!(records.len(), 13, "{records:#?}");
    assert!(
        records
            .iter()
            .all(|r| r["kind"] == "http-download" && r["client"].as_str().is_some_and(|c| c.starts_with("198.18.0.2")))
    );
    // Content that does not decode is blocked, not passed unscanned.
    let (status, _) = env.get(&format!("http://{SERVER_V4}:8081/bad-gzip"), &[])?;
    assert_eq!(status, 403);
    // A coding browsers do not know: they show the raw bytes, so those are
    // scanned and delivered without the header (no browser decodes them).
    let raw = env.raw(8081, b"GET /compress HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n")?;
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200") && text.ends_with("\r\n\r\nwhatever"), "{text}");
    assert!(!text.to_ascii_lowercase().contains("content-encoding"), "{text}");
    Ok(())
}

#[test]
fn range_requests_for_infected_files_are_blocked() -> anyhow::Result<()> {
    let env = setup("hrange", "")?;
    let (status, got) = env.get(&format!("http://{SERVER_V4}/eicar.com"), &["-r", "0-9"])?;
    assert_eq!(status, 403, "{}", std::fs::read_to_string(&got)?);
    Ok(())
}

#[test]
fn pipelined_requests_and_keep_alive_after_a_block() -> anyhow::Result<()> {
    let env = setup("hpipe", "")?;
    // A text body, so that status lines start lines in the raw stream.
    std::fs::write(env.nginx.www.join("c1"), "clean text\n".repeat(500))?;
    let req = b"GET /c1 HTTP/1.1\r\nHost: s\r\n\r\nGET /eicar.com HTTP/1.1\r\nHost: s\r\n\r\nGET /c1 HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n";
    let raw = env.raw(80, req)?;
    assert_eq!(
        status_lines(&raw),
        ["HTTP/1.1 200 OK", "HTTP/1.1 403 Forbidden", "HTTP/1.1 200 OK"],
        "{}",
        String::from_utf8_lossy(&raw)
    );
    // One connection carried all three.
    let lines = env.gw().flow_lines();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    Ok(())
}

#[test]
fn infected_uploads_never_reach_the_server() -> anyhow::Result<()> {
    let env = setup("hup", "")?;
    let e = env.rig.dir().join("eicar-up.com");
    std::fs::write(&e, eicar())?;
    let out = env.rig.curl(&[
        "-sS",
        "-m",
        "30",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-F",
        &format!("file=@{}", e.display()),
        "-F",
        "note=hello",
        &format!("http://{SERVER_V4}/upload/form"),
    ])?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403", "{}", text(&out));
    assert!(env.nginx.log_lines().iter().all(|l| !l.contains("/upload/form")), "the server saw the upload");
    let records = env.gw().detections();
    assert!(records.iter().any(|r| r["kind"] == "http-upload"), "{records:#?}");
    // A clean upload (2 MiB: curl sends Expect: 100-continue) arrives identical.
    let up = random_file(&env.rig.dir().join("up2m"), 2 << 20, 9)?;
    let out = env.rig.curl(&[
        "-sS",
        "-m",
        "30",
        "-w",
        "%{http_code}",
        "-T",
        &up.to_string_lossy(),
        &format!("http://{SERVER_V4}/upload/up2m"),
    ])?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "201", "{}", text(&out));
    assert_eq!(sha256_file(&env.nginx.uploads.join("up2m"))?, sha256_file(&up)?);
    Ok(())
}

#[test]
fn head_204_304_are_bodiless() -> anyhow::Result<()> {
    let env = setup("hhead", "")?;
    random_file(&env.nginx.www.join("h"), 3000, 1)?;
    let out = env.rig.curl(&["-sS", "-I", &format!("http://{SERVER_V4}/h")])?;
    let t = text(&out);
    assert!(t.starts_with("HTTP/1.1 200") && t.contains("Content-Length: 3000"), "{t}");
    let raw = env.raw(8081, b"GET /204 HTTP/1.1\r\nHost: s\r\n\r\nGET /304 HTTP/1.1\r\nHost: s\r\n\r\nGET /nothing HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n")?;
    assert_eq!(
        status_lines(&raw),
        ["HTTP/1.1 204 No Content", "HTTP/1.1 304 Not Modified", "HTTP/1.1 404 Not Found"],
        "{}",
        String::from_utf8_lossy(&raw)
    );
    Ok(())
}

#[test]
fn ambiguous_framing_is_refused() -> anyhow::Result<()> {
    let env = setup("hsmug", "")?;
    let requests: [&[u8]; 7] = [
        b"POST /upload/x HTTP/1.1\r\nHost: s\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST /upload/x HTTP/1.1\r\nHost: s\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST /upload/x HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        b"POST /upload/x HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: s\r\nX-A: 1\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\nHost: s\n\n",
        b"GET / HTTP/1.1\r\nHost: s\r\nContent-Length : 5\r\n\r\nhello",
    ];
    for r in requests {
        let raw = env.raw(80, r)?;
        assert_eq!(
            status_lines(&raw),
            ["HTTP/1.1 400 Bad Request"],
            "{:?} → {}",
            String::from_utf8_lossy(r),
            String::from_utf8_lossy(&raw)
        );
    }
    assert!(env.nginx.log_lines().iter().all(|l| !l.contains("/upload/x")), "a smuggled request reached the server");
    // Responses are read as browsers read them and delivered re-framed:
    // chunked wins over Content-Length; an invalid chunk size is refused.
    let raw = env.raw(8081, b"GET /te-cl HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n")?;
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200") && text.ends_with("Content-Length: 5\r\n\r\nhello"), "{text}");
    assert!(!text.contains("Transfer-Encoding"), "{text}");
    let (status, _) = env.get(&format!("http://{SERVER_V4}:8081/bad-chunk"), &[])?;
    assert_eq!(status, 502);
    let many: String = (0..200).map(|i| format!("X-{i}: v\r\n")).collect();
    let raw = env.raw(80, format!("GET / HTTP/1.1\r\nHost: s\r\n{many}\r\n").as_bytes())?;
    assert_eq!(status_lines(&raw), ["HTTP/1.1 431 Request Header Fields Too Large"]);
    Ok(())
}

#[test]
fn a_dead_scanner_fails_closed_by_default_and_open_when_configured() -> anyhow::Result<()> {
    let mut env = setup("hdead", "")?;
    random_file(&env.nginx.www.join("c"), 1000, 1)?;
    env.clamd.stop();
    let (status, got) = env.get(&format!("http://{SERVER_V4}/c"), &[])?;
    assert_eq!(status, 503, "{}", std::fs::read_to_string(&got)?);
    let gw = env.gw.take().expect("gateway");
    gw.stop(&mut env.rig, libc::SIGTERM)?;
    let scan = format!("clamd = \"{}\"\non_error = \"allow\"", env.clamd.addr());
    env.gw = Some(Gateway::start(
        &mut env.rig,
        &Settings { steering: "http_ports = [80, 8081]", scan: &scan, ..Settings::default() },
    )?);
    let (status, got) = env.get(&format!("http://{SERVER_V4}/c"), &[])?;
    assert_eq!(status, 200);
    assert_eq!(sha256_file(&got)?, sha256_file(&env.nginx.www.join("c"))?);
    Ok(())
}

#[test]
fn with_icap_the_services_replacement_page_is_shown() -> anyhow::Result<()> {
    let env = setup_with("hicap", "", "", true)?;
    random_file(&env.nginx.www.join("c"), 200_000, 4)?;
    let (status, got) = env.get(&format!("http://{SERVER_V4}/c"), &[])?;
    assert_eq!((status, sha256_file(&got)?), (200, sha256_file(&env.nginx.www.join("c"))?));
    let (status, got) = env.get(&format!("http://{SERVER_V4}/eicar.com"), &[])?;
    let page = std::fs::read_to_string(&got)?;
    assert_eq!(status, 403, "{page}");
    // c-icap's own page, not the gateway's.
    assert!(page.contains("VIRUS FOUND") && !page.contains("The transfer was blocked"), "{page}");
    let records = env.gw().detections();
    assert!(records.iter().any(|r| r["engine"].as_str().is_some_and(|e| e.starts_with("icap://"))), "{records:#?}");
    // Uploads go through REQMOD.
    let e = env.rig.dir().join("e.com");
    std::fs::write(&e, eicar())?;
    let out = env.rig.curl(&[
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-T",
        &e.to_string_lossy(),
        &format!("http://{SERVER_V4}/upload/e.com"),
    ])?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403", "{}", text(&out));
    assert!(!env.nginx.uploads.join("e.com").exists());
    Ok(())
}

#[test]
fn websocket_upgrades_are_relayed_and_connect_is_refused() -> anyhow::Result<()> {
    let env = setup("hupg", "")?;
    let raw = env.raw(
        8081,
        b"GET /ws HTTP/1.1\r\nHost: s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nhello-after-upgrade",
    )?;
    let t = String::from_utf8_lossy(&raw);
    assert!(t.starts_with("HTTP/1.1 101 Switching Protocols") && t.contains("echo:hello-after-upgrade"), "{t}");
    let raw = env.raw(80, b"CONNECT 198.19.0.2:443 HTTP/1.1\r\nHost: 198.19.0.2:443\r\n\r\n")?;
    assert_eq!(status_lines(&raw), ["HTTP/1.1 405 Method Not Allowed"]);
    Ok(())
}

#[test]
fn a_slow_request_head_gets_408() -> anyhow::Result<()> {
    let env = setup_with("hslow", "", "head_timeout = \"1s\"", false)?;
    let py = format!(
        "import socket,time\ns=socket.create_connection(('{SERVER_V4}',80))\ns.sendall(b'GET / HTTP/1.1\\r\\nHo')\ns.settimeout(10)\nprint(s.recv(200).split(b'\\r\\n')[0].decode())\n"
    );
    let out = env.rig.run(Ns::Client, tests::util::PYTHON, &["-c", &py])?;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "HTTP/1.1 408 Request Timeout", "{}", text(&out));
    Ok(())
}

#[test]
fn trickling_keeps_clients_waiting_and_resets_when_infected() -> anyhow::Result<()> {
    // clamd needs well over 50 ms for 40 MiB, so the head and the first
    // trickles go out before the verdict.
    let env = setup_with("htrick", "", "trickle_after = \"50ms\"\ntrickle_bytes = \"1KiB\"", false)?;
    let clean = random_file(&env.nginx.www.join("clean40m"), 40 << 20, 3)?;
    let (status, got) = env.get(&format!("http://{SERVER_V4}/clean40m"), &[])?;
    assert_eq!((status, sha256_file(&got)?), (200, sha256_file(&clean)?));
    let line = wait_for("the request log line", Duration::from_secs(5), || {
        env.gw().log_text().lines().find(|l| l.contains("/clean40m")).map(str::to_string)
    })?;
    assert!(line.contains("verdict=clean (trickled "), "{line}");

    let mut infected = random_bytes(40 << 20);
    infected.extend_from_slice(&eicar());
    std::fs::write(env.nginx.www.join("bad40m"), &infected)?;
    let dest = env.rig.dir().join("bad40m.part");
    let out =
        env.rig.curl(&["-sS", "-m", "60", "-o", &dest.to_string_lossy(), &format!("http://{SERVER_V4}/bad40m")])?;
    assert!(!out.status.success(), "the client must see a broken transfer: {}", text(&out));
    let got = std::fs::read(&dest).unwrap_or_default();
    assert!(got.len() < 64 * 1024, "only trickles may arrive, got {} bytes", got.len());
    assert!(got.windows(16).all(|w| w != b"EICAR-STANDARD-A"), "infected bytes arrived");
    let rec = wait_for("the detection record", Duration::from_secs(5), || {
        env.gw().detections().into_iter().find(|r| r["object"].as_str().is_some_and(|o| o.ends_with("/bad40m")))
    })?;
    assert!(
        rec["delivered_before_verdict"].as_u64().is_some_and(|n| n > 0 && n == got.len() as u64),
        "{rec} vs {}",
        got.len()
    );
    assert!(env.gw().log_text().lines().any(|l| l.contains("/bad40m") && l.contains("partially delivered")));
    Ok(())
}

#[test]
fn vanishing_clients_and_servers_leave_nothing_behind() -> anyhow::Result<()> {
    let env = setup("hgone", "")?;
    random_file(&env.nginx.www.join("100m"), 100 << 20, 21)?;
    // A download whose client gives up while the gateway still scans …
    let out = env.rig.curl(&["-sS", "-m", "0.5", "-o", "/dev/null", &format!("http://{SERVER_V4}/100m")])?;
    assert!(!out.status.success(), "the client was meant to give up: {}", text(&out));
    // … and an upload cut off after 1 MiB of a declared 10 MiB.
    let py = format!(
        "import socket\ns=socket.create_connection(('{SERVER_V4}',80))\n\
         s.sendall(b'POST /upload/cut HTTP/1.1\\r\\nHost: s\\r\\nContent-Length: 10485760\\r\\n\\r\\n'+b'x'*(1<<20))\n\
         s.close()\n"
    );
    let out = env.rig.run(Ns::Client, tests::util::PYTHON, &["-c", &py])?;
    assert!(out.status.success(), "{}", text(&out));
    wait_for("the gateway to let go of both flows", Duration::from_secs(30), || {
        let tcp = env.gw().tcp_connections().ok()?;
        (env.gw().open_spool_files() == 0 && tcp.is_empty()).then_some(())
    })
    .map_err(|e| {
        anyhow::anyhow!("{e}: {:?}, spool files {}", env.gw().tcp_connections(), env.gw().open_spool_files())
    })?;
    assert!(env.nginx.log_lines().iter().all(|l| !l.contains("/upload/cut")), "the server saw the cut-off upload");
    let log = env.gw().log_text();
    assert!(
        log.lines()
            .any(|l| l.contains(" http: ") && l.contains("url=http://198.19.0.2/100m") && l.contains("not delivered")),
        "no request line for the abandoned download: {log}"
    );
    assert!(log.lines().any(|l| l.contains("body cut short after 1048576 bytes")), "{log}");
    // A server that dies mid-body: 502, never a short body passed as whole.
    let (status, got) = env.get(&format!("http://{SERVER_V4}:8081/close-cut"), &[])?;
    let page = std::fs::read_to_string(&got)?;
    assert_eq!(status, 502, "{page}");
    assert!(!page.contains("only this much"), "{page}");
    // And it still serves.
    let (status, _) = env.get(&format!("http://{SERVER_V4}/eicar.com"), &[])?;
    assert_eq!(status, 403);
    Ok(())
}
