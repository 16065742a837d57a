//! TLS interception (issue 14) on the rig: nginx with TLS and certificates
//! from a test upstream CA that the gateway trusts, real clamd, the gateway
//! with a CA from its own `gateway ca new`, and real clients in the client
//! namespace (curl and openssl s_client trusting the gateway's CA, headless
//! Chromium with that CA in an NSS database). See `tests::tls`.

use std::{path::Path, time::Duration};

use tests::{
    Ns,
    clamd::eicar,
    gateway::binary,
    rig::{GW_SERVER_V4, SERVER_V4},
    tls::{BANK, EXPIRED, SELF_SIGNED, TlsEnv, WRONG_NAME, WWW, make_pki},
    util::{PYTHON, output_text as text, random_file, run_ok, sha256, sha256_file, wait_for},
};

#[test]
fn clean_files_arrive_identical_through_interception() -> anyhow::Result<()> {
    let env = TlsEnv::start("tclean", "")?;
    for (name, len) in [("0b", 0u64), ("1m", 1 << 20), ("100m", 100 << 20)] {
        let want = sha256_file(&random_file(&env.nginx.www.join(name), len, len + 7)?)?;
        let (status, got) = env.get(WWW, &format!("/{name}"), &[])?;
        assert_eq!(status, 200, "{name}");
        assert_eq!(sha256_file(&got)?, want, "{name} differs");
        assert_eq!(env.nginx.last_peer(&format!("/{name}"))?, GW_SERVER_V4, "nginx is reached by the gateway");
    }
    // The client was shown the gateway's certificate, not nginx's: trusting
    // only the upstream root, curl refuses it.
    let out = env.curl(WWW, "/1m", &env.upstream_ca(), &["-o", "/dev/null"])?;
    assert!(!out.status.success(), "the client saw the server's own certificate: {}", text(&out));
    // A clean upload arrives identical.
    let up = random_file(&env.rig.dir().join("up.bin"), 1 << 20, 99)?;
    let (status, _) = env.get(WWW, "/upload/up.bin", &["-T", &up.to_string_lossy()])?;
    assert!(status == 201 || status == 204, "PUT answered {status}");
    assert_eq!(sha256_file(&env.nginx.uploads.join("up.bin"))?, sha256_file(&up)?);
    // Request log lines are marked tls and name https URLs.
    let log = env.gw().log_text();
    let line = log.lines().find(|l| l.contains("url=https://www.example.test/100m")).unwrap_or_default();
    assert!(line.contains("verdict=clean") && line.contains(&format!("tls={WWW}")), "{log}");
    Ok(())
}

#[test]
fn infected_downloads_and_uploads_are_blocked_inside_tls() -> anyhow::Result<()> {
    let env = TlsEnv::start("tinf", "")?;
    for (path, extra) in
        [("/eicar.com", &[][..]), ("/eicar.zip", &[]), ("/gz/eicar.bin", &[]), ("/eicar.com", &["-r", "0-9"])]
    {
        let (status, got) = env.get(WWW, path, extra)?;
        let page = std::fs::read_to_string(&got)?;
        assert_eq!(status, 403, "{path}: {page}");
        assert!(page.contains("Test.EICAR"), "{path}: no threat name in the page: {page}");
        assert!(!page.contains("EICAR-STANDARD-ANTIVIRUS"), "{path}: the payload reached the client");
    }
    // A multipart upload carrying EICAR is refused before nginx sees it;
    // the same upload of a clean file reaches nginx (so the check can see).
    let dir = env.rig.dir();
    std::fs::write(dir.join("bad.com"), eicar())?;
    std::fs::write(dir.join("good.txt"), "clean text\n".repeat(100))?;
    let (status, _) = env.get(WWW, "/sink?infected", &["-F", &format!("file=@{}", dir.join("bad.com").display())])?;
    assert_eq!(status, 403);
    let (status, _) = env.get(WWW, "/sink?clean", &["-F", &format!("file=@{}", dir.join("good.txt").display())])?;
    assert_eq!(status, 204);
    env.nginx.last_peer("/sink?clean")?;
    assert!(!env.nginx.log_lines().iter().any(|l| l.contains("/sink?infected")), "nginx saw the infected upload");
    // Detection records name the server name and the server's certificate.
    let records = env.gw().detections();
    assert!(records.len() >= 4, "{records:#?}");
    for r in &records {
        assert_eq!(r["sni"], WWW, "{r}");
        assert!(r["upstream_certificate"].as_str().is_some_and(|s| s.contains("CN=www.example.test")), "{r}");
        assert!(r["object"].as_str().is_some_and(|o| o.starts_with("https://www.example.test/")), "{r}");
    }
    assert!(records.iter().any(|r| r["kind"] == "http-upload"), "{records:#?}");
    Ok(())
}

#[test]
fn bypassed_names_and_missing_sni_are_spliced_not_decrypted() -> anyhow::Result<()> {
    let mut env = TlsEnv::start("tsplice", "")?;
    let want = sha256_file(&random_file(&env.nginx.www.join("1m"), 1 << 20, 5)?)?;
    let dest = env.rig.dir().join("spliced");
    let d = dest.to_string_lossy().to_string();
    // bypass_sni: the client sees nginx's own certificate (it verifies
    // against the upstream root, not against the gateway's CA).
    let out = env.curl(BANK, "/1m", &env.upstream_ca(), &["-o", &d, "-w", "%{http_code}"])?;
    assert_eq!(text(&out), "200", "{}", text(&out));
    assert_eq!(sha256_file(&dest)?, want);
    let out = env.curl(BANK, "/1m", &env.gw_ca, &["-o", "/dev/null"])?;
    assert!(!out.status.success(), "a bypassed name was decrypted: {}", text(&out));
    // No SNI (curl sends none to an address): spliced by default.
    let url = format!("https://{SERVER_V4}/1m");
    let ca = env.upstream_ca().to_string_lossy().to_string();
    let out = env.rig.curl(&["-sS", "-m", "30", "--cacert", &ca, "-o", &d, "-w", "%{http_code}", &url])?;
    assert_eq!(text(&out), "200", "{}", text(&out));
    assert_eq!(sha256_file(&dest)?, want);
    let flows = env.gw().flow_lines();
    assert!(flows.iter().any(|l| l.contains("kind=tls") && l.contains("matches bypass_sni")), "{flows:#?}");
    assert!(flows.iter().any(|l| l.contains("kind=tls") && l.contains("spliced (no server name")), "{flows:#?}");
    // A client in [steering] bypass is never steered: it sees nginx.
    env.steering = "bypass = [\"198.18.0.3/32\"]".into();
    env.restart("no_sni = \"block\"")?;
    let out =
        env.curl(WWW, "/1m", &env.upstream_ca(), &["--interface", "198.18.0.3", "-o", &d, "-w", "%{http_code}"])?;
    assert_eq!(text(&out), "200", "{}", text(&out));
    assert_eq!(sha256_file(&dest)?, want);
    // no_sni = "block": refused with an alert and a log line.
    let out = env.rig.curl(&["-sS", "-m", "30", "--cacert", &ca, "-o", "/dev/null", &url])?;
    assert!(!out.status.success(), "{}", text(&out));
    let flows = env.gw().flow_lines();
    assert!(flows.iter().any(|l| l.contains("refused: no server name")), "{flows:#?}");
    Ok(())
}

#[test]
fn bad_server_certificates_get_a_block_page_or_a_splice_as_configured() -> anyhow::Result<()> {
    let mut env = TlsEnv::start("tcert", "")?;
    let want = sha256_file(&random_file(&env.nginx.www.join("c.bin"), 65536, 3)?)?;
    for (name, reason) in
        [(EXPIRED, "has expired"), (SELF_SIGNED, "self-signed"), (WRONG_NAME, "is not valid for wrong.example.test")]
    {
        let (status, got) = env.get(name, "/c.bin", &[])?;
        let page = std::fs::read_to_string(&got)?;
        assert_eq!(status, 403, "{name}: {page}");
        assert!(page.contains(reason) && page.contains(name), "{name}: {page}");
    }
    assert!(
        !env.nginx.log_lines().iter().any(|l| l.contains("/c.bin")),
        "a request reached a server that failed the check"
    );
    // on_upstream_error = "splice": passed unscanned, and the client sees
    // the server's own (bad) certificate.
    env.restart("on_upstream_error = \"splice\"")?;
    for name in [EXPIRED, SELF_SIGNED, WRONG_NAME] {
        let dest = env.rig.dir().join(format!("got-{name}"));
        let d = dest.to_string_lossy().to_string();
        let out = env.curl(name, "/c.bin", &env.gw_ca, &["-k", "-o", &d, "-w", "%{http_code}"])?;
        assert_eq!(text(&out), "200", "{name}: {}", text(&out));
        assert_eq!(sha256_file(&dest)?, want, "{name}");
        let out = env.curl(name, "/c.bin", &env.gw_ca, &["-o", "/dev/null"])?;
        assert!(!out.status.success(), "{name}: the gateway's certificate was shown: {}", text(&out));
    }
    let flows = env.gw().flow_lines();
    assert_eq!(flows.iter().filter(|l| l.contains("on_upstream_error = \"splice\"")).count(), 6, "{flows:#?}");
    Ok(())
}

/// openssl s_client in the client namespace to www through the gateway,
/// trusting its CA; `request` goes out once the handshake is done.
fn s_client(env: &TlsEnv, args: &[&str], request: &str) -> anyhow::Result<String> {
    use std::io::Write as _;
    let connect = format!("{SERVER_V4}:443");
    let mut cmd = env.rig.cmd(Ns::Client, "timeout");
    cmd.args(["20", "openssl", "s_client", "-connect", &connect, "-servername", WWW, "-CAfile"]).arg(&env.gw_ca);
    cmd.args(["-ign_eof"]).args(args);
    cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(request.as_bytes())?;
    }
    Ok(text(&child.wait_with_output()?))
}

#[test]
fn tls12_and_tls13_clients_and_only_http11_is_negotiated() -> anyhow::Result<()> {
    let env = TlsEnv::start("tver", "")?;
    std::fs::write(env.nginx.www.join("hello.txt"), "hello over tls\n")?;
    let get = format!("GET /hello.txt HTTP/1.1\r\nHost: {WWW}\r\nConnection: close\r\n\r\n");
    for (flag, version) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let out = s_client(&env, &[flag, "-alpn", "h2,http/1.1"], &get)?;
        assert!(out.contains("Verify return code: 0 (ok)"), "{flag}: {out}");
        assert!(out.contains(&format!("Protocol  : {version}")), "{flag}: {out}");
        assert!(out.contains("ALPN protocol: http/1.1"), "{flag}: {out}");
        assert!(out.contains("HTTP/1.1 200 OK") && out.contains("hello over tls"), "{flag}: {out}");
    }
    // A client offering only h2 is refused (it would otherwise walk around
    // the scanner), with a log line.
    let out = s_client(&env, &["-alpn", "h2"], &get)?;
    assert!(!out.contains("hello over tls"), "{out}");
    assert!(env.gw().flow_lines().iter().any(|l| l.contains("offers only h2")), "{}", env.gw().log_text());
    // curl asking for HTTP/2 gets HTTP/1.1.
    let out = env.curl(WWW, "/hello.txt", &env.gw_ca, &["--http2", "-o", "/dev/null", "-w", "%{http_version}"])?;
    assert_eq!(text(&out), "1.1");
    Ok(())
}

/// Counts UDP datagrams per port in the server namespace.
const UDP_SINK: &str = r#"
import socket, select, sys
socks = []
for port in (443, 4443):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(('0.0.0.0', port))
    socks.append(s)
out = open(sys.argv[1], 'a')
while True:
    for s in select.select(socks, [], [])[0]:
        s.recv(2048)
        out.write('%d\n' % s.getsockname()[1])
        out.flush()
"#;

#[test]
fn quic_to_intercepted_ports_is_dropped_and_counted() -> anyhow::Result<()> {
    let mut env = TlsEnv::start("tquic", "")?;
    let seen = env.rig.dir().join("udp-seen");
    std::fs::write(&seen, "")?;
    let mut cmd = env.rig.cmd(Ns::Server, PYTHON);
    cmd.args(["-c", UDP_SINK]).arg(&seen);
    let log = env.rig.dir().join("udp-sink.log");
    env.rig.spawn(cmd, &log)?;
    wait_for("the UDP sink", Duration::from_secs(10), || {
        let out = env.rig.run(Ns::Server, "ss", &["-Hlun", "sport = :4443"]).ok()?;
        (!out.stdout.is_empty()).then_some(())
    })?;
    let send = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         for p in (443,4443):\n    for i in range(5):\n        s.sendto(b'quic?',('{SERVER_V4}',p))\n"
    );
    run_ok(env.rig.cmd(Ns::Client, PYTHON).args(["-c", &send]))?;
    wait_for("the datagrams to port 4443", Duration::from_secs(10), || {
        (std::fs::read_to_string(&seen).ok()?.lines().filter(|l| *l == "4443").count() == 5).then_some(())
    })?;
    let ports = std::fs::read_to_string(&seen)?;
    assert!(!ports.lines().any(|l| l == "443"), "UDP to 443 got through: {ports}");
    assert!(env.gw().counter("/kernel/xdp/udp_dropped/packets")? >= 5);
    Ok(())
}

/// A client sending `hex` to the server's `port`, closing its side if
/// `close`, then waiting `secs`; prints what came back (hex) and how the
/// connection ended.
fn raw_client(env: &TlsEnv, port: u16, hex: &str, close: bool, secs: u32) -> anyhow::Result<String> {
    let shut = if close { "s.shutdown(socket.SHUT_WR)" } else { "pass" };
    let py = format!(
        "import socket,time\ns=socket.create_connection(('{SERVER_V4}',{port}))\ns.sendall(bytes.fromhex('{hex}'))\n\
         {shut}\ntime.sleep({secs})\ns.settimeout(5)\nd=b''\ntry:\n    while True:\n        c=s.recv(65536)\n        if not c: break\n        d+=c\n\
         except OSError as e:\n    print('error', e)\nprint('got', d.hex())\n"
    );
    Ok(text(&env.rig.run(Ns::Client, PYTHON, &["-c", &py])?))
}

/// A real ClientHello for www (made by Python's ssl module into a memory
/// buffer, never sent by a socket of its own).
fn client_hello_hex(env: &TlsEnv) -> anyhow::Result<String> {
    let py = format!(
        "import ssl\nc=ssl.create_default_context()\ni,o=ssl.MemoryBIO(),ssl.MemoryBIO()\n\
         t=c.wrap_bio(i,o,server_hostname='{WWW}')\ntry:\n    t.do_handshake()\nexcept ssl.SSLWantReadError:\n    pass\nprint(o.read().hex())\n"
    );
    let out = run_ok(env.rig.cmd(Ns::Client, PYTHON).args(["-c", &py]))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Resets every connection after reading its first bytes (a server that
/// dies mid-handshake).
const RESETTER: &str = r#"
import socket, struct
s = socket.socket(socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 8443)); s.listen(16)
while True:
    c, _ = s.accept()
    c.recv(65536)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
    c.close()
"#;

#[test]
fn bad_input_on_the_tls_port_ends_only_that_connection() -> anyhow::Result<()> {
    let mut env = TlsEnv::start("tbad", "handshake_timeout = \"2s\"\nports = [443, 8443]")?;
    std::fs::write(env.nginx.www.join("ok.txt"), "still fine\n")?;
    let mut cmd = env.rig.cmd(Ns::Server, PYTHON);
    cmd.args(["-c", RESETTER]);
    let log = env.rig.dir().join("resetter.log");
    env.rig.spawn(cmd, &log)?;
    let hello = client_hello_hex(&env)?;
    // (what, bytes, close after sending, wait, the flow line's words)
    let cases: [(&str, String, bool, u32, &str); 5] = [
        ("plain HTTP", hex(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), false, 0, "not TLS"),
        ("garbage record", "16030100050909090909".into(), false, 0, "malformed ClientHello"),
        (
            "a truncated hello",
            hello[..hello.len() / 2].to_string(),
            true,
            0,
            "closed before its ClientHello was complete",
        ),
        ("a slow hello", hello[..20].to_string(), false, 4, "no complete ClientHello within 2s"),
        ("a stalled handshake", hello.clone(), false, 4, "did not complete its TLS handshake within 2s"),
    ];
    for (what, bytes, close, secs, _) in &cases {
        let out = raw_client(&env, 443, bytes, *close, *secs)?;
        assert!(!out.contains("485454502f"), "{what}: got an HTTP answer: {out}");
    }
    let out = env.rig.curl(&[
        "-sS",
        "-m",
        "20",
        "--resolve",
        &format!("{WWW}:8443:{SERVER_V4}"),
        "--cacert",
        &env.gw_ca.to_string_lossy(),
        &format!("https://{WWW}:8443/"),
    ])?;
    assert!(!out.status.success(), "{}", text(&out));
    let flows = env.gw().flow_lines();
    for (what, _, _, _, line) in &cases {
        assert!(flows.iter().any(|l| l.contains("kind=tls") && l.contains(line)), "{what}: no {line:?} in {flows:#?}");
    }
    assert!(flows.iter().any(|l| l.contains("TLS handshake with the server failed")), "{flows:#?}");
    // Nothing else was affected.
    let (status, got) = env.get(WWW, "/ok.txt", &[])?;
    assert_eq!((status, std::fs::read_to_string(got)?), (200, "still fine\n".to_string()));
    wait_for("the gateway's connections to close", Duration::from_secs(10), || {
        env.gw().tcp_connections().ok().filter(Vec::is_empty)
    })?;
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn chromium_gets_the_page_and_the_clean_file_and_the_block_page_for_eicar() -> anyhow::Result<()> {
    let mut env = TlsEnv::start("tchrome", "")?;
    let clean: String = (0..2000).map(|i| format!("line {i} of a clean file\n")).collect();
    std::fs::write(env.nginx.www.join("clean.txt"), &clean)?;
    std::fs::write(env.nginx.www.join("index.html"), PAGE)?;
    let home = env.rig.dir().join("chrome-home");
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db)?;
    let db_arg = format!("sql:{}", db.display());
    run_ok(std::process::Command::new("certutil").args(["-N", "--empty-password", "-d", &db_arg]))?;
    run_ok(
        std::process::Command::new("certutil")
            .args(["-A", "-t", "C,,", "-n", "gateway", "-d", &db_arg, "-i"])
            .arg(&env.gw_ca),
    )?;
    let dom = chromium_dom(&env, &home, &format!("https://{WWW}/index.html"))?;
    let want = format!("clean:200:{}:{}", clean.len(), sha256(clean.as_bytes()));
    assert!(dom.contains("page:loaded"), "{dom}");
    assert!(dom.contains(&want), "want {want} in {dom}");
    assert!(dom.contains("eicar:403:blocked"), "{dom}");
    let log = env.gw().log_text();
    assert!(
        log.lines().any(|l| l.contains("url=https://www.example.test/eicar.com") && l.contains("infected")),
        "{log}"
    );
    // Chromium offers Encrypted Client Hello (GREASE) on every connection:
    // rejected by default, so the page loads; refused with ech = "block".
    assert!(env.gw().flow_lines().iter().any(|l| l.contains("Encrypted Client Hello extension was rejected")), "{log}");
    env.restart("ech = \"block\"")?;
    assert!(chromium_dom(&env, &home, &format!("https://{WWW}/index.html")).is_err(), "loaded despite ech = block");
    let flows = env.gw().flow_lines();
    assert!(
        flows.iter().any(|l| l.contains("refused: Encrypted Client Hello (outer name www.example.test)")),
        "{flows:#?}"
    );
    Ok(())
}

/// The page Chromium loads: it fetches the clean file and EICAR with
/// synchronous requests (so `--dump-dom` sees the results) and writes what
/// came back into the page, with the clean file's SHA-256 done in JS.
const PAGE: &str = r#"<!DOCTYPE html><html><head><meta charset="utf-8"><title>t</title></head><body>
<p id="page">page:loaded</p><p id="clean"></p><p id="eicar"></p>
<script>
function get(p) { var x = new XMLHttpRequest(); x.open('GET', p, false); x.send(); return x; }
function sha256(s) {
  function r(n, x) { return (x >>> n) | (x << (32 - n)); }
  var K = [], H = [], p = 2, n = 0;
  function frac(x) { return ((x - Math.floor(x)) * 4294967296) | 0; }
  while (n < 64) { var prime = true; for (var d = 2; d * d <= p; d++) if (p % d == 0) prime = false;
    if (prime) { if (n < 8) H[n] = frac(Math.pow(p, 1 / 2)); K[n++] = frac(Math.pow(p, 1 / 3)); } p++; }
  var b = new TextEncoder().encode(s), l = b.length, m = new Uint8Array(((l + 9 + 63) >> 6) << 6);
  m.set(b); m[l] = 0x80; var bits = l * 8;
  for (var i = 0; i < 4; i++) m[m.length - 1 - i] = (bits >>> (8 * i)) & 255;
  for (var o = 0; o < m.length; o += 64) {
    var w = [], a = H.slice();
    for (var t = 0; t < 64; t++) {
      if (t < 16) w[t] = (m[o + 4 * t] << 24) | (m[o + 4 * t + 1] << 16) | (m[o + 4 * t + 2] << 8) | m[o + 4 * t + 3];
      else w[t] = (w[t - 16] + (r(7, w[t - 15]) ^ r(18, w[t - 15]) ^ (w[t - 15] >>> 3)) + w[t - 7]
                 + (r(17, w[t - 2]) ^ r(19, w[t - 2]) ^ (w[t - 2] >>> 10))) | 0;
      var t1 = (a[7] + (r(6, a[4]) ^ r(11, a[4]) ^ r(25, a[4])) + ((a[4] & a[5]) ^ (~a[4] & a[6])) + K[t] + w[t]) | 0;
      var t2 = ((r(2, a[0]) ^ r(13, a[0]) ^ r(22, a[0])) + ((a[0] & a[1]) ^ (a[0] & a[2]) ^ (a[1] & a[2]))) | 0;
      a = [(t1 + t2) | 0, a[0], a[1], a[2], (a[3] + t1) | 0, a[4], a[5], a[6]];
    }
    for (var j = 0; j < 8; j++) H[j] = (H[j] + a[j]) | 0;
  }
  return H.map(function (h) { return ('00000000' + (h >>> 0).toString(16)).slice(-8); }).join('');
}
var c = get('/clean.txt');
document.getElementById('clean').textContent = 'clean:' + c.status + ':' + c.responseText.length + ':' + sha256(c.responseText);
var e = get('/eicar.com');
var blocked = e.status == 403 && e.responseText.indexOf('Test.EICAR') >= 0 && e.responseText.indexOf('ANTIVIRUS-TEST') < 0;
document.getElementById('eicar').textContent = 'eicar:' + e.status + ':' + (blocked ? 'blocked' : 'NOT-BLOCKED');
</script></body></html>
"#;

/// Headless Chromium in the client namespace: the DOM of `url` after its
/// scripts ran. Names under example.test resolve to the server.
fn chromium_dom(env: &TlsEnv, home: &Path, url: &str) -> anyhow::Result<String> {
    let profile = home.join("profile");
    let out = env
        .rig
        .cmd(Ns::Client, "timeout")
        .args(["90", "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
        .arg("--disable-background-networking")
        .arg(format!("--host-resolver-rules=MAP *.example.test {SERVER_V4}"))
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--dump-dom", url])
        .env("HOME", home)
        .output()?;
    let dom = String::from_utf8_lossy(&out.stdout).to_string();
    anyhow::ensure!(out.status.success() && !dom.is_empty(), "chromium: {}", text(&out));
    Ok(dom)
}

/// `gateway check-config` on a `[tls]` section: exit status 2 and one
/// sentence naming the problem.
fn check_tls(dir: &Path, tls: &str) -> anyhow::Result<(Option<i32>, String)> {
    let path = dir.join("gateway.toml");
    std::fs::write(&path, format!("[steering]\ninterfaces = [\"lo\"]\n\n[tls]\nintercept = true\n{tls}\n"))?;
    let out = std::process::Command::new(binary()?).arg("check-config").arg(&path).output()?;
    Ok((out.status.code(), String::from_utf8_lossy(&out.stderr).trim_end().to_string()))
}

#[test]
fn unusable_ca_files_exit_2_with_one_sentence() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("gw-tls-ca-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (ours, other, pki) = (dir.join("ca"), dir.join("other"), dir.join("pki"));
    for d in [&ours, &other] {
        let out = std::process::Command::new(binary()?).args(["ca", "new", "--out"]).arg(d).output()?;
        assert!(out.status.success(), "{}", text(&out));
    }
    // Never overwritten.
    let again = std::process::Command::new(binary()?).args(["ca", "new", "--out"]).arg(&ours).output()?;
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
    assert!(text(&again).contains("already exists"), "{}", text(&again));
    make_pki(&pki)?;
    let roots = pki.join("upstream-ca.pem");
    let files = |cert: &Path, key: &Path| {
        format!("ca_cert = {:?}\nca_key = {:?}\nupstream_roots = {roots:?}", cert.display(), key.display())
    };
    let (code, err) = check_tls(&dir, &files(&ours.join("ca.pem"), &ours.join("ca.key")))?;
    assert_eq!(code, Some(0), "{err}");
    for (what, cert, key, needle) in [
        ("missing", dir.join("none.pem"), ours.join("ca.key"), "cannot read"),
        ("mismatched", ours.join("ca.pem"), other.join("ca.key"), "does not belong to the CA certificate"),
        ("not a CA", pki.join("www.pem"), pki.join("www.key"), "is not a CA certificate"),
        ("a key as the certificate", ours.join("ca.key"), ours.join("ca.key"), "holds no PEM X.509 certificate"),
    ] {
        let (code, err) = check_tls(&dir, &files(&cert, &key))?;
        assert_eq!(code, Some(2), "{what}: {err}");
        assert_eq!(err.lines().count(), 1, "{what}: more than one line: {err}");
        assert!(err.contains(needle), "{what}: {needle:?} not in {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
