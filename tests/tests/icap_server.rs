//! The gateway's ICAP server (issue 15) against real clients: Debian's
//! c-icap-client, the gateway's own ICAP client, and Squid 6.13; plus
//! garbage, truncated and refused requests sent by hand.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use tests::{
    Ns, Rig,
    clamd::{Clamd, eicar},
    gateway::binary,
    nginx::Nginx,
    rig::SERVER_V4,
    serve::{Served, config},
    squid::Squid,
    util::{output_text, random_file, sha256, sha256_file},
};

struct Env {
    rig: Rig,
    _clamd: Clamd,
    served: Served,
    files: PathBuf,
}

/// clamd, `gateway serve` with `icap_lines` in `[icap_server]` in the
/// server namespace, and the test files.
fn setup(tag: &str, icap_lines: &str) -> anyhow::Result<Env> {
    let mut rig = Rig::new(tag)?;
    let clamd = Clamd::start(rig.dir().join("clamd"), "300M")?;
    let dir = rig.dir().join("serve");
    let text = config(&dir, &clamd.addr(), &format!("[icap_server]\nlisten = \"127.0.0.1:1344\"\n{icap_lines}\n"));
    let served = Served::start(Some((&mut rig, Ns::Server)), &dir, &text)?;
    let files = rig.dir().join("files");
    std::fs::create_dir_all(&files)?;
    std::fs::write(files.join("eicar.com"), eicar())?;
    std::fs::write(files.join("small.txt"), b"a small clean text, well inside one preview\n")?;
    random_file(&files.join("clean-1m"), 1 << 20, 21)?;
    let tail = files.join("tail-10m");
    random_file(&tail, 10 << 20, 22)?;
    std::fs::OpenOptions::new().append(true).open(&tail)?.write_all(&eicar())?;
    tests::clamd::eicar_zip(&files.join("eicar.zip"), "x/eicar.com")?;
    Ok(Env { rig, _clamd: clamd, served, files })
}

impl Env {
    /// c-icap-client on `file` with `args`; its output and the body it
    /// wrote (empty when the answer had none, as for 204).
    fn cicap(&self, file: &str, args: &[&str]) -> anyhow::Result<(String, Vec<u8>)> {
        let out_file = self.rig.dir().join(format!("out-{file}-{}", args.join("_").replace('/', "")));
        let _ = std::fs::remove_file(&out_file);
        let out: Output = self
            .rig
            .cmd(Ns::Server, "c-icap-client")
            .args(["-i", "127.0.0.1", "-p", "1344", "-s", "avscan", "-v", "-f"])
            .arg(self.files.join(file))
            .arg("-o")
            .arg(&out_file)
            .args(args)
            .output()?;
        Ok((output_text(&out), std::fs::read(&out_file).unwrap_or_default()))
    }
}

fn status_of(text: &str) -> Option<u16> {
    text.lines().find_map(|l| l.trim().strip_prefix("ICAP/1.0 ")?.split(' ').next()?.parse().ok())
}

#[test]
fn c_icap_client_gets_204_for_clean_bodies_and_the_threat_for_eicar() -> anyhow::Result<()> {
    let env = setup("icaps1", "")?;
    let modes: [(&str, &[&str]); 6] = [
        ("RESPMOD, preview", &[]),
        ("RESPMOD, no preview", &["-nopreview"]),
        ("REQMOD, preview", &["-req", "http://example.test/upload"]),
        ("REQMOD, no preview", &["-req", "http://example.test/upload", "-nopreview"]),
        ("RESPMOD, preview 64", &["-w", "64"]),
        ("REQMOD, preview 64", &["-req", "http://example.test/upload", "-w", "64"]),
    ];
    for (mode, args) in modes {
        for clean in ["small.txt", "clean-1m"] {
            let (text, _) = env.cicap(clean, args)?;
            assert_eq!(status_of(&text), Some(204), "{mode}, {clean}: {text}");
        }
        for infected in ["eicar.com", "eicar.zip", "tail-10m"] {
            let (text, body) = env.cicap(infected, args)?;
            assert_eq!(status_of(&text), Some(200), "{mode}, {infected}: {text}");
            assert!(text.contains("X-Infection-Found: Type=0; Resolution=2; Threat=Test.EICAR"), "{mode}: {text}");
            assert!(text.contains("X-Virus-ID: Test.EICAR"), "{mode}: {text}");
            assert!(text.contains("HTTP/1.1 403 Forbidden"), "{mode}, {infected}: {text}");
            let page = String::from_utf8_lossy(&body);
            assert!(page.contains("The transfer was blocked") && page.contains("Test.EICAR"), "{mode}: {page}");
        }
    }
    // Without 204 outside the preview the clean body comes back whole.
    for args in [&["-no204"][..], &["-no204", "-nopreview"], &["-no204", "-req", "http://example.test/u"]] {
        let (text, body) = env.cicap("clean-1m", args)?;
        assert_eq!(status_of(&text), Some(200), "{args:?}: {text}");
        assert_eq!(sha256(&body), sha256_file(&env.files.join("clean-1m"))?, "{args:?}");
    }
    // And a clean body inside one preview is answered 204 all the same.
    let (text, _) = env.cicap("small.txt", &["-no204"])?;
    assert_eq!(status_of(&text), Some(204), "{text}");
    assert!(env.served.counter("/servers/icap/infected")? >= 18);
    let records = std::fs::read_to_string(env.rig.dir().join("serve/detections.jsonl"))?;
    assert!(records.contains("\"kind\":\"icap-respmod\"") && records.contains("\"kind\":\"icap-reqmod\""), "{records}");
    Ok(())
}

#[test]
fn options_name_the_service_and_its_limits() -> anyhow::Result<()> {
    let env = setup("icaps2", "max_connections = 7\npreview = 2048\n")?;
    let out =
        env.rig.cmd(Ns::Server, "c-icap-client").args(["-i", "127.0.0.1", "-p", "1344", "-s", "avscan"]).output()?;
    let text = output_text(&out);
    for want in [
        "ICAP/1.0 200 OK",
        "Methods: RESPMOD, REQMOD",
        "Max-Connections: 7",
        "Preview: 2048",
        "Allow: 204",
        "Options-TTL: 600",
        "Transfer-Preview: *",
        "ISTag: \"GW-",
    ] {
        assert!(text.contains(want), "{want:?} missing: {text}");
    }
    Ok(())
}

#[test]
fn the_gateways_own_icap_client_against_its_own_server() -> anyhow::Result<()> {
    let env = setup("icaps3", "")?;
    let mut cmd = env.rig.cmd(Ns::Server, binary()?);
    cmd.args(["scan", "--icap", "icap://127.0.0.1:1344/avscan"]);
    for f in ["eicar.com", "eicar.zip", "tail-10m", "clean-1m", "small.txt"] {
        cmd.arg(env.files.join(f));
    }
    let out = cmd.output()?;
    let lines: Vec<String> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| l.rsplit('/').next().unwrap_or(l).to_string()).collect();
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    for (i, f) in ["eicar.com", "eicar.zip", "tail-10m"].iter().enumerate() {
        assert!(lines[i].starts_with(&format!("{f}: Test.EICAR")) && lines[i].ends_with("FOUND"), "{lines:?}");
    }
    assert_eq!(lines[3..], ["clean-1m: OK".to_string(), "small.txt: OK".into()]);
    Ok(())
}

/// Sends `request` on a new connection and returns what comes back until
/// the server closes (or 10 s pass).
fn exchange(port: u16, request: &[u8]) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(request)?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn options_ok(port: u16) -> anyhow::Result<bool> {
    let r = exchange(port, b"OPTIONS icap://127.0.0.1/avscan ICAP/1.0\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    Ok(r.starts_with("ICAP/1.0 200 OK\r\n"))
}

#[test]
fn garbage_truncated_and_refused_requests_get_icap_errors_and_the_server_goes_on() -> anyhow::Result<()> {
    let rig = Rig::new("icaps4")?;
    let clamd = Clamd::start(rig.dir().join("clamd"), "300M")?;
    // Loopback of the test's own namespace, so that raw sockets reach it.
    let port = 20000 + (std::process::id() % 20000) as u16;
    let dir = rig.dir().join("serve");
    let extra = format!(
        "[icap_server]\nlisten = \"127.0.0.1:{port}\"\nmethods = [\"RESPMOD\"]\nmax_connections = 3\n\
         io_timeout = \"2s\"\nmax_head = \"4KiB\"\n"
    );
    let served = Served::start(None, &dir, &config(&dir, &clamd.addr(), &extra))?;
    let enc = "Encapsulated: res-hdr=0, res-body=19\r\n\r\nHTTP/1.1 200 OK\r\n\r\n";
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("garbage", b"garbage\r\n\r\n".to_vec(), "ICAP/1.0 400 "),
        ("binary", vec![0xff; 64].into_iter().chain(*b"\r\n\r\n").collect(), "ICAP/1.0 400 "),
        ("version", b"RESPMOD icap://h/avscan ICAP/2.0\r\n\r\n".to_vec(), "ICAP/1.0 505 "),
        ("unknown service", format!("RESPMOD icap://h/nosuch ICAP/1.0\r\n{enc}").into_bytes(), "ICAP/1.0 404 "),
        ("method not offered", b"REQMOD icap://h/avscan ICAP/1.0\r\nEncapsulated: req-hdr=0, null-body=18\r\n\r\nGET / HTTP/1.1\r\n\r\n".to_vec(), "ICAP/1.0 405 "),
        ("unknown method", b"GET icap://h/avscan ICAP/1.0\r\n\r\n".to_vec(), "ICAP/1.0 501 "),
        ("no Encapsulated", b"RESPMOD icap://h/avscan ICAP/1.0\r\n\r\n".to_vec(), "ICAP/1.0 400 "),
        ("head too long", format!("OPTIONS icap://h/avscan ICAP/1.0\r\nX: {}\r\n\r\n", "a".repeat(8000)).into_bytes(), "ICAP/1.0 413 "),
        ("bad chunk", format!("RESPMOD icap://h/avscan ICAP/1.0\r\n{enc}zz\r\nabc\r\n0\r\n\r\n").into_bytes(), "ICAP/1.0 400 "),
        ("bad HTTP head", b"RESPMOD icap://h/avscan ICAP/1.0\r\nEncapsulated: res-hdr=0, res-body=9\r\n\r\nnot http\n5\r\nhello\r\n0\r\n\r\n".to_vec(), "ICAP/1.0 400 "),
        ("stalled", format!("RESPMOD icap://h/avscan ICAP/1.0\r\n{enc}ffff\r\nonly a few bytes").into_bytes(), "ICAP/1.0 408 "),
    ];
    for (name, req, want) in &cases {
        let answer = exchange(port, req)?;
        assert!(answer.starts_with(want), "{name}: {answer:?}");
        assert!(answer.contains("ISTag: "), "{name}: {answer:?}");
        assert!(options_ok(port)?, "{name}: the server stopped answering");
    }
    // Truncated: the client leaves mid-body.
    {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.write_all(format!("RESPMOD icap://h/avscan ICAP/1.0\r\n{enc}100000\r\npartial").as_bytes())?;
    }
    assert!(options_ok(port)?, "after a truncated request");
    // The connection cap: three held, the fourth refused with 503.
    let held: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(("127.0.0.1", port))).collect::<Result<_, _>>()?;
    tests::util::wait_for("three connections open", Duration::from_secs(10), || {
        (served.counter("/servers/icap/active").ok()? == 3).then_some(())
    })?;
    let answer = exchange(port, b"OPTIONS icap://h/avscan ICAP/1.0\r\n\r\n")?;
    assert!(answer.starts_with("ICAP/1.0 503 "), "{answer:?}");
    drop(held);
    tests::util::wait_for("the held connections to close", Duration::from_secs(10), || {
        (served.counter("/servers/icap/active").ok()? == 0).then_some(())
    })?;
    assert!(options_ok(port)?);
    assert!(served.counter("/servers/icap/refused")? >= 1);
    assert!(served.counter("/servers/icap/errors")? >= cases.len() as u64);
    assert!(served.alive(), "{}", served.log_text());
    Ok(())
}

/// A clean upload and an EICAR upload, a clean 100 MiB download and an
/// EICAR download, through Squid 6.13 whose RESPMOD and REQMOD services
/// are the gateway's ICAP server.
#[test]
fn squid_uses_the_gateways_icap_server_for_downloads_and_uploads() -> anyhow::Result<()> {
    let mut rig = Rig::new("icaps5")?;
    let nginx = Nginx::start(&mut rig, &[80], 1)?;
    std::fs::write(nginx.www.join("eicar.com"), eicar())?;
    let big = random_file(&nginx.www.join("100m.bin"), 100 << 20, 23)?;
    let clamd = Clamd::start(rig.dir().join("clamd"), "300M")?;
    let dir = rig.dir().join("serve");
    let text = config(&dir, &clamd.addr(), "[icap_server]\nlisten = \"127.0.0.1:1344\"\n");
    let served = Served::start(Some((&mut rig, Ns::Gateway)), &dir, &text)?;
    let icap = "icap_service av_resp respmod_precache bypass=0 icap://127.0.0.1:1344/avscan\n\
                adaptation_access av_resp allow all\n\
                icap_service av_req reqmod_precache bypass=0 icap://127.0.0.1:1344/avscan\n\
                adaptation_access av_req allow all";
    let squid = Squid::start(&mut rig, Ns::Gateway, 3128, icap)?;
    let proxy = "http://198.18.0.1:3128";
    let curl = |args: &[&str]| -> anyhow::Result<(String, String)> {
        let out = rig.curl(&[&["-sS", "-x", proxy, "-o", "-", "-w", "\n%{http_code}"][..], args].concat())?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
        Ok((code.to_string(), body.to_string()))
    };
    let (code, page) = curl(&[&format!("http://{SERVER_V4}/eicar.com")])?;
    assert_eq!(code, "403", "{page}\n{}", std::fs::read_to_string(&squid.log).unwrap_or_default());
    assert!(page.contains("The transfer was blocked") && page.contains("Test.EICAR"), "{page}");

    let got = rig.dir().join("100m.got");
    let out = rig.curl(&[
        "-sS",
        "--fail",
        "-x",
        proxy,
        "-o",
        &got.to_string_lossy(),
        &format!("http://{SERVER_V4}/100m.bin"),
    ])?;
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(sha256_file(&got)?, sha256_file(&big)?, "the 100 MiB body changed on its way");

    let up = rig.dir().join("eicar-upload");
    std::fs::write(&up, eicar())?;
    let (code, page) = curl(&["--data-binary", &format!("@{}", up.display()), &format!("http://{SERVER_V4}/sink")])?;
    assert_eq!(code, "403", "{page}");
    assert!(page.contains("Test.EICAR"), "{page}");
    let (code, _) = curl(&["--data-binary", "clean words", &format!("http://{SERVER_V4}/sink")])?;
    assert_eq!(code, "204", "a clean upload reaches the server");
    assert!(served.counter("/servers/icap/infected")? >= 2);
    assert!(served.counter("/servers/icap/clean")? >= 2);
    let _ = Path::new(&squid.log);
    Ok(())
}
