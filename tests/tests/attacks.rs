//! Attacks on the HTTP proxy that got past it or knocked it over (issue 9),
//! each replayed against the real gateway on the rig: decompression bombs,
//! endless bodies, encoded uploads, connection floods, a saturated
//! scanner, an ICAP service that changes messages without saying why.

use std::time::Duration;

use tests::{
    Ns,
    clamd::eicar,
    rig::SERVER_V4,
    util::{output_text as text, wait_for},
    web::{Web, WebSettings},
};

/// The gateway's peak resident memory so far, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A 1 GiB body of zeros gzipped twice (about 4 KiB on the wire) must not
/// be decoded into memory: before the fix one such response took the RSS
/// to gigabytes and a larger one killed the process, after which every
/// flow went unscanned. Now the ratio limit stops it, the body is refused
/// as undecodable, the gateway's memory stays small and it still blocks.
#[test]
fn a_decompression_bomb_is_refused_without_taking_memory() -> anyhow::Result<()> {
    let env = Web::start("abomb", "")?;
    let (status, page) = env.get(&format!("http://{SERVER_V4}:8081/bomb"), &[])?;
    let page = std::fs::read_to_string(page)?;
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("decompression bomb"), "{page}");
    let rss = peak_rss_kib(env.gw().pid);
    assert!(rss < 150 * 1024, "peak RSS {rss} KiB after a 1 GiB bomb");
    // Three stacked codings are more than any browser needs: undecodable.
    let (status, _) = env.get(&format!("http://{SERVER_V4}:8081/gz3-eicar"), &[])?;
    assert_eq!(status, 403);
    // Still alive, still scanning.
    let (status, _) = env.get(&format!("http://{SERVER_V4}/eicar.com"), &[])?;
    assert_eq!(status, 403);
    Ok(())
}

/// max_decoded_size: a body that decodes past it is oversize.
#[test]
fn a_body_decoding_past_max_decoded_size_is_oversize() -> anyhow::Result<()> {
    let env = Web::with("adecsz", &WebSettings { http: "max_decoded_size = \"8MiB\"", ..WebSettings::default() })?;
    let (status, page) = env.get(&format!("http://{SERVER_V4}:8081/zeros-gz-20m"), &[])?;
    let page = std::fs::read_to_string(page)?;
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("max_decoded_size"), "{page}");
    Ok(())
}

/// An endless body (internet radio) is held only up to max_scan_size: with
/// `on_oversize = "block"` the gateway stops reading and refuses at once;
/// before the fix it held the stream until the disk filled.
#[test]
fn an_endless_body_is_refused_at_max_scan_size() -> anyhow::Result<()> {
    let env = Web::start("aendless", "max_scan_size = \"8MiB\"\nspool_max_total = \"64MiB\"")?;
    let out = env.rig.curl(&[
        "-sS",
        "-m",
        "30",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{SERVER_V4}:8081/endless"),
    ])?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403", "{}", text(&out));
    wait_for("the spool to be empty", Duration::from_secs(10), || {
        (env.gw().open_spool_files() == 0 && env.gw().counter("/spool/disk").ok()? == 0).then_some(())
    })?;
    let log = env.gw().log_text();
    assert!(log.contains("oversize"), "{log}");
    Ok(())
}

/// With `on_oversize = "allow"` an endless body streams on, unscanned,
/// past what is held — and the spool stays at max_scan_size.
#[test]
fn an_allowed_endless_body_streams_with_a_bounded_spool() -> anyhow::Result<()> {
    let env = Web::start("astream", "max_scan_size = \"8MiB\"\nspool_max_total = \"64MiB\"\non_oversize = \"allow\"")?;
    let want = 40u64 << 20;
    let py = format!(
        "import socket,hashlib\ns=socket.create_connection(('{SERVER_V4}',8081))\n\
         s.sendall(b'GET /endless HTTP/1.1\\r\\nHost: s\\r\\n\\r\\n')\nd=b''\n\
         while len(d) < {want} + 4096:\n    c=s.recv(1<<20)\n    if not c: break\n    d+=c\nprint(d.split(b'\\r\\n')[0].decode(), len(d))\n"
    );
    let out = env.rig.run(Ns::Client, tests::util::PYTHON, &["-c", &py])?;
    let t = text(&out);
    assert!(t.starts_with("HTTP/1.1 200 OK"), "{t}");
    let got: u64 = t.split_whitespace().last().and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(got >= want, "only {got} bytes streamed: {t}");
    let disk = env.gw().counter("/spool/disk")?;
    assert!(disk <= 9 << 20, "{disk} bytes spooled for an endless body");
    Ok(())
}

/// The global spool quota: a body that would take the spools past
/// spool_max_total is refused (503) instead of filling the disk.
#[test]
fn the_spool_quota_refuses_what_it_cannot_hold() -> anyhow::Result<()> {
    let env = Web::start("aquota", "max_scan_size = \"16MiB\"\nspool_max_total = \"16MiB\"\nspool_memory = \"64KiB\"")?;
    // A first body of 12 MiB is held while its server stalls …
    let stalled = std::thread::scope(|s| {
        let first = s
            .spawn(|| env.rig.curl(&["-sS", "-m", "20", "-o", "/dev/null", &format!("http://{SERVER_V4}:8081/stall")]));
        let held = wait_for("12 MiB held", Duration::from_secs(15), || {
            (env.gw().counter("/spool/disk").ok()? >= 12 << 20).then_some(())
        });
        // … so a second one of 10 MiB does not fit.
        let second = env.get(&format!("http://{SERVER_V4}/tail-10m.bin"), &[]);
        let _ = first.join();
        (held, second)
    });
    stalled.0?;
    let (status, page) = stalled.1?;
    assert_eq!(status, 503, "{}", std::fs::read_to_string(page)?);
    assert!(env.gw().log_text().contains("spool quota"), "no log line names the quota");
    Ok(())
}

/// Uploads are scanned with their Content-Encoding undone: a brotli
/// EICAR POST (clamd unpacks gzip itself, not brotli) passed as "clean"
/// before.
#[test]
fn an_encoded_upload_is_decoded_for_the_scanner() -> anyhow::Result<()> {
    let env = Web::start("aupenc", "")?;
    let gz = env.rig.dir().join("eicar.br");
    let py = format!(
        "import brotli\nopen('{}','wb').write(brotli.compress(bytes.fromhex('{}')))\n",
        gz.display(),
        eicar().iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let out = std::process::Command::new(tests::util::PYTHON).args(["-c", &py]).output()?;
    anyhow::ensure!(out.status.success(), "{}", text(&out));
    let out = env.rig.curl(&[
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Content-Encoding: br",
        "--data-binary",
        &format!("@{}", gz.display()),
        &format!("http://{SERVER_V4}/upload/enc"),
    ])?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403", "{}", text(&out));
    assert!(env.nginx.log_lines().iter().all(|l| !l.contains("/upload/enc")), "the server saw it");
    Ok(())
}

/// One client holding idle connections cannot take every descriptor: past
/// max_connections_per_client it is refused (503) while others are served.
/// Before the fix 600 idle connections exhausted the 1024 descriptors.
#[test]
fn connection_caps_refuse_one_client_not_everyone() -> anyhow::Result<()> {
    let env = Web::with("acaps", &WebSettings { proxy: "max_connections_per_client = 40", ..WebSettings::default() })?;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", env.gw().pid))?;
    let soft: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(soft > 1024, "the descriptor limit was not raised: {limits}");
    let py = format!(
        "import socket,time\nheld=[]\nfor i in range(60):\n    held.append(socket.create_connection(('{SERVER_V4}',80)))\n\
         time.sleep(0.5)\nrefused=0\nfor s in held:\n    s.settimeout(0.2)\n    try:\n        if s.recv(100).startswith(b'HTTP/1.1 503'): refused+=1\n    except OSError: pass\n\
         print(refused)\nimport subprocess\n\
         r=subprocess.run(['curl','-sS','-o','/dev/null','-w','%{{http_code}}','--interface','198.18.0.3','http://{SERVER_V4}/eicar.com'],capture_output=True)\n\
         print(r.stdout.decode())\n"
    );
    let out = env.rig.run(Ns::Client, tests::util::PYTHON, &["-c", &py])?;
    let t = text(&out);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines.first().copied(), Some("20"), "refused of 60 (cap 40): {t}");
    assert_eq!(lines.get(1).copied(), Some("403"), "another client is still served (and scanned): {t}");
    assert!(env.gw().log_text().contains("max_connections_per_client"), "no log line for the refusals");
    Ok(())
}

/// A scanner that is merely busy slows clients down, it does not refuse
/// them: before the fix 300 concurrent downloads of 1 MiB got a third of
/// their answers as 503 (clamd's accept backlog overflowed, and EAGAIN was
/// taken for a dead scanner). clamd's backlog is made short here
/// (MaxConnectionQueueLength, 200 by default) so that 300 connections on
/// two cores are enough to show it.
#[test]
fn a_busy_scanner_queues_instead_of_refusing() -> anyhow::Result<()> {
    let env = Web::with("abusy", &WebSettings { clamd_conf: "MaxConnectionQueueLength 20", ..WebSettings::default() })?;
    tests::util::random_file(&env.nginx.www.join("1m"), 1 << 20, 77)?;
    let out = env.rig.run(
        Ns::Client,
        "wrk",
        &["-t", "2", "-c", "300", "-d", "6s", "--timeout", "60s", &format!("http://{SERVER_V4}/1m")],
    )?;
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(!t.contains("Non-2xx"), "refusals while the scanner was busy: {t}");
    assert!(!t.contains("Socket errors"), "{t}");
    let requests: u64 = t
        .lines()
        .find_map(|l| l.trim().split(" requests in ").next().filter(|_| l.contains(" requests in ")))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(requests > 0, "{t}");
    Ok(())
}

/// FAKE (fault injector): an ICAP service that answers every RESPMOD with
/// 200 and a changed body but no infection report. Real c-icap only does
/// that for content it rewrites. The gateway must deliver the service's
/// version (or block), never the original it was asked about.
#[test]
fn an_icap_service_that_changes_the_message_is_obeyed() -> anyhow::Result<()> {
    let fake = r#"
import socket, threading
def h(c):
    buf = b''
    try:
        while True:
            d = c.recv(65536)
            if not d: return
            buf += d
            if buf.startswith(b'OPTIONS'):
                if b'\r\n\r\n' in buf:
                    c.sendall(b'ICAP/1.0 200 OK\r\nMethods: RESPMOD, REQMOD\r\nISTag: "x"\r\nEncapsulated: null-body=0\r\n\r\n')
                    buf = b''
                continue
            if buf.endswith(b'0\r\n\r\n'):
                page = b'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n'
                body = b'REPLACED BY THE SERVICE'
                c.sendall(b'ICAP/1.0 200 OK\r\nISTag: "x"\r\nEncapsulated: res-hdr=0, res-body=%d\r\n\r\n' % len(page) + page + b'%x\r\n' % len(body) + body + b'\r\n0\r\n\r\n')
                buf = b''
    except OSError:
        pass
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', 1399)); s.listen(16)
while True:
    c, _ = s.accept(); threading.Thread(target=h, args=(c,), daemon=True).start()
"#;
    let mut rig = tests::Rig::new("aicap")?;
    let nginx = tests::nginx::Nginx::start(&mut rig, &[80], 0)?;
    std::fs::write(nginx.www.join("original.txt"), "THE ORIGINAL BODY")?;
    let mut cmd = rig.cmd(Ns::Gateway, tests::util::PYTHON);
    cmd.args(["-c", fake]);
    let log = rig.dir().join("fake-icap.log");
    rig.spawn(cmd, &log)?;
    wait_for("the fake ICAP service", Duration::from_secs(10), || {
        let out = rig.run(Ns::Gateway, "ss", &["-Hltn", "sport = :1399"]).ok()?;
        (!out.stdout.is_empty()).then_some(())
    })?;
    let scan = "backend = \"icap\"\nicap = [\"icap://127.0.0.1:1399/changes\"]";
    let _gw = tests::Gateway::start(&mut rig, &tests::gateway::Settings { scan, ..Default::default() })?;
    let out = rig.curl(&["-sS", "-m", "20", &format!("http://{SERVER_V4}/original.txt")])?;
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(!body.contains("THE ORIGINAL BODY"), "the original of a changed message was delivered: {body}");
    assert_eq!(body, "REPLACED BY THE SERVICE", "{}", text(&out));
    Ok(())
}

/// The control socket changes steering: root only. The detection log names
/// clients: owner and group only.
#[test]
fn the_control_socket_and_detection_log_are_private() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let env = Web::start("aperm", "")?;
    let (status, _) = env.get(&format!("http://{SERVER_V4}/eicar.com"), &[])?;
    assert_eq!(status, 403);
    let sock = std::fs::metadata(&env.gw().socket)?.permissions().mode() & 0o777;
    assert_eq!(sock, 0o600, "control socket mode {sock:o}");
    let log = std::fs::metadata(env.rig.dir().join("detections.jsonl"))?.permissions().mode() & 0o777;
    assert_eq!(log, 0o640, "detection log mode {log:o}");
    Ok(())
}
