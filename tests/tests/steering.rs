//! Foundation tests: eBPF steering into the transparent relay, on the rig,
//! with the real gateway binary, real nginx and real curl.
//!
//! Each test builds its own rig (namespaces named after the test), so they
//! run in parallel; the rig is torn down on drop, also when a test fails.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use tests::{
    Gateway, Ns, Rig,
    gateway::{NO_SCAN, Settings, config},
    nginx::Nginx,
    rig::{CLIENT_IFACE, CLIENT_V4, CLIENT_V6, GW_SERVER_V4, GW_SERVER_V6, SERVER_V4, SERVER_V6},
    util::{random_file, sha256_file, wait_for},
};

/// Steering tests look at steering and relaying: HTTP scanning is off.
fn relay_only(steering: &str) -> Settings<'_> {
    Settings { steering, http: NO_SCAN, ..Settings::default() }
}

use tests::util::output_text as text;

/// XDP attached whether or not it has anything to drop.
const XDP_ALWAYS: &str = "xdp_mode = \"skb\"";

/// Whether an XDP program is attached to the rig's client-facing link.
fn xdp_attached(rig: &Rig) -> anyhow::Result<bool> {
    Ok(text(&rig.ip(Ns::Gateway, &format!("-d link show {CLIENT_IFACE}"))?).contains("xdpgeneric"))
}

/// GETs `url` into `dest` in the rig dir and returns its sha256.
fn download(rig: &Rig, url: &str, dest: &str, extra: &[&str]) -> anyhow::Result<String> {
    let path = rig.dir().join(dest);
    let p = path.to_string_lossy().to_string();
    let mut args = vec!["-sS", "--fail", "-m", "60", "-o", &p];
    args.extend_from_slice(extra);
    args.push(url);
    let out = rig.curl(&args)?;
    ensure!(out.status.success(), "curl {url}: {}", text(&out));
    sha256_file(&path)
}

#[test]
fn intercepts_http_and_keeps_bytes_identical() -> anyhow::Result<()> {
    let mut rig = Rig::new("icpt")?;
    let nginx = Nginx::start(&mut rig, &[80], 0)?;
    let sizes: [(&str, u64); 4] = [("0b", 0), ("1b", 1), ("1m", 1 << 20), ("100m", 100 << 20)];
    let mut want = Vec::new();
    for (i, (name, len)) in sizes.iter().enumerate() {
        want.push(sha256_file(&random_file(&nginx.www.join(name), *len, i as u64 + 7)?)?);
    }
    let gw = Gateway::start(&mut rig, &relay_only(""))?;

    for ((name, _), want) in sizes.iter().zip(&want) {
        let got = download(&rig, &format!("http://{SERVER_V4}/{name}"), &format!("got-{name}"), &[])?;
        assert_eq!(&got, want, "download of {name} differs");
        assert_eq!(nginx.last_peer(&format!("/{name}"))?, GW_SERVER_V4, "{name} was not intercepted");
    }

    // Upload 50 MiB with PUT; nginx stores it.
    let up = random_file(&rig.dir().join("up50m"), 50 << 20, 99)?;
    let out = rig.curl(&[
        "-sS",
        "--fail",
        "-m",
        "60",
        "-T",
        &up.to_string_lossy(),
        &format!("http://{SERVER_V4}/upload/up50m"),
    ])?;
    ensure!(out.status.success(), "upload: {}", text(&out));
    assert_eq!(sha256_file(&nginx.uploads.join("up50m"))?, sha256_file(&up)?, "upload differs");
    assert_eq!(nginx.last_peer("/upload/up50m")?, GW_SERVER_V4);

    // The gateway logged each flow with the original destination and counted it.
    let flows = wait_for("5 flow log lines", Duration::from_secs(5), || {
        let l = gw.flow_lines();
        (l.len() >= 5).then_some(l)
    })?;
    assert!(flows.iter().all(|l| l.contains("kind=http") && l.contains(&format!("dst={SERVER_V4}:80"))), "{flows:#?}");
    let field = |l: &str, key: &str| -> u64 {
        l.split_whitespace().find_map(|w| w.strip_prefix(key)).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    assert!(flows.iter().any(|l| field(l, "down=") > 100 << 20), "no 100 MiB flow logged: {flows:#?}");
    assert!(flows.iter().any(|l| field(l, "up=") > 50 << 20), "no 50 MiB upload logged: {flows:#?}");
    assert!(gw.counter("/proxy/flows_total")? >= 5);
    assert!(gw.counter("/kernel/steer/listener/packets")? >= 5);
    assert!(gw.counter("/kernel/steer/established/packets")? > 0);
    Ok(())
}

#[test]
fn intercepts_http_over_ipv6() -> anyhow::Result<()> {
    let mut rig = Rig::new("v6")?;
    let nginx = Nginx::start(&mut rig, &[80], 0)?;
    let want = sha256_file(&random_file(&nginx.www.join("1m"), 1 << 20, 3)?)?;
    let _gw = Gateway::start(&mut rig, &relay_only(""))?;
    let got = download(&rig, &format!("http://[{SERVER_V6}]/1m"), "got", &[])?;
    assert_eq!(got, want);
    assert_eq!(nginx.last_peer("/1m")?, GW_SERVER_V6);
    Ok(())
}

#[test]
fn unsteered_port_udp_and_icmp_are_forwarded_untouched() -> anyhow::Result<()> {
    let mut rig = Rig::new("fwd")?;
    let nginx = Nginx::start(&mut rig, &[80, 8080], 0)?;
    random_file(&nginx.www.join("f"), 1000, 1)?;
    // "skb": XDP attached (and counting) with nothing to drop.
    let gw = Gateway::start(&mut rig, &relay_only(XDP_ALWAYS))?;

    download(&rig, &format!("http://{SERVER_V4}:8080/f"), "f", &[])?;
    assert_eq!(nginx.last_peer("/f")?, CLIENT_V4, "port 8080 must not be steered");

    // UDP: a real socket server that answers with the address it saw.
    let echo = "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',80))\nwhile True:\n d,a=s.recvfrom(100)\n s.sendto(a[0].encode(),a)\n";
    let mut cmd = rig.cmd(Ns::Server, tests::util::PYTHON);
    cmd.args(["-c", echo]);
    let log = rig.dir().join("udp.log");
    rig.spawn(cmd, &log)?;
    let ask = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(1)\nfor i in range(20):\n try:\n  s.sendto(b'x',('{SERVER_V4}',80)); print(s.recv(100).decode()); break\n except OSError: pass\n"
    );
    let out = rig.run(Ns::Client, tests::util::PYTHON, &["-c", &ask])?;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), CLIENT_V4, "UDP to port 80: {}", text(&out));

    let out = rig.run(Ns::Client, "ping", &["-c", "2", "-W", "2", SERVER_V4])?;
    assert!(out.status.success(), "ping: {}", text(&out));
    assert!(gw.counter("/kernel/xdp/icmp/packets")? >= 2);
    assert!(gw.counter("/kernel/xdp/udp/packets")? >= 1);
    assert_eq!(gw.counter("/proxy/flows_total")?, 0, "nothing should have reached the proxy");
    Ok(())
}

#[test]
fn bypassed_prefix_is_not_steered_and_blocked_prefix_is_dropped() -> anyhow::Result<()> {
    let mut rig = Rig::new("bpbl")?;
    let nginx = Nginx::start(&mut rig, &[80], 0)?;
    random_file(&nginx.www.join("f"), 1000, 1)?;
    let gw = Gateway::start(
        &mut rig,
        &relay_only("bypass = [\"198.18.0.3/32\"]\nblock = [\"198.18.0.4/32\", \"fd00:18::4/128\"]"),
    )?;

    download(&rig, &format!("http://{SERVER_V4}/f"), "a", &["--interface", "198.18.0.3"])?;
    assert_eq!(nginx.last_peer("/f")?, "198.18.0.3", "bypassed client was steered");
    download(&rig, &format!("http://{SERVER_V4}/f"), "b", &["--interface", CLIENT_V4])?;
    assert_eq!(nginx.last_peer("/f")?, GW_SERVER_V4, "normal client was not steered");
    assert!(gw.counter("/kernel/steer/bypassed/packets")? > 0);

    let out = rig.curl(&["-sS", "-m", "2", "--interface", "198.18.0.4", &format!("http://{SERVER_V4}/f")])?;
    assert!(!out.status.success(), "blocked client got through: {}", text(&out));
    let out = rig.run(Ns::Client, "ping", &["-c", "1", "-W", "1", "-I", "198.18.0.4", SERVER_V4])?;
    assert!(!out.status.success(), "blocked ping got through");
    assert!(gw.counter("/kernel/xdp/blocked/packets")? >= 2);
    Ok(())
}

/// An expectation steers a port chosen at run time to the FTP data
/// listener; a data connection no FTP session is waiting for is reset
/// there, never relayed unscanned (issue 9: a second data connection).
#[test]
fn expectation_steers_a_port_chosen_at_run_time_and_unclaimed_data_connections_are_reset() -> anyhow::Result<()> {
    let mut rig = Rig::new("expt")?;
    // A port nobody configured: derived from the pid so it differs per run.
    let port = 20000 + (std::process::id() % 20000) as u16;
    let nginx = Nginx::start(&mut rig, &[port], 0)?;
    random_file(&nginx.www.join("f"), 4096, 1)?;
    let gw = Gateway::start(&mut rig, &relay_only(""))?;
    let url = format!("http://{SERVER_V4}:{port}/f");

    download(&rig, &url, "a", &[])?;
    assert_eq!(nginx.last_peer("/f")?, CLIENT_V4);
    let served = nginx.log_lines().len();

    gw.expect("add", CLIENT_V4, SERVER_V4, port)?;
    assert_eq!(gw.counter("/expectations")?, 1);
    let out = rig.curl(&["-sS", "-m", "10", "-o", "/dev/null", &url])?;
    assert!(
        matches!(out.status.code(), Some(56 | 52 | 7)),
        "steered, unclaimed: reset: {:?} {}",
        out.status,
        text(&out)
    );
    assert_eq!(nginx.log_lines().len(), served, "the unclaimed connection reached the server");
    wait_for("the reset's log line", Duration::from_secs(5), || {
        gw.log_text().lines().find(|l| l.contains(&format!("data connection to {SERVER_V4}:{port} reset"))).map(|_| ())
    })?;

    gw.expect("del", CLIENT_V4, SERVER_V4, port)?;
    assert_eq!(gw.counter("/expectations")?, 0);
    download(&rig, &url, "c", &[])?;
    assert_eq!(nginx.last_peer("/f")?, CLIENT_V4, "removed expectation still steers");
    Ok(())
}

#[test]
fn refused_upstream_resets_the_client() -> anyhow::Result<()> {
    let mut rig = Rig::new("rst")?;
    let _nginx = Nginx::start(&mut rig, &[80], 0)?;
    let gw = Gateway::start(&mut rig, &relay_only("http_ports = [80, 81]"))?;
    let out = rig.curl(&["-sS", "-m", "10", &format!("http://{SERVER_V4}:81/")])?;
    // The handshake with the gateway completes, then the reset arrives:
    // curl reports 56 (reset while receiving) or 7 (reset before it got
    // to send); 28 would mean a hang.
    assert!(matches!(out.status.code(), Some(56 | 7)), "{:?} {}", out.status, text(&out));
    let line = wait_for("the flow line", Duration::from_secs(5), || {
        gw.flow_lines().into_iter().find(|l| l.contains("upstream-failed"))
    })?;
    assert!(line.contains(&format!("dst={SERVER_V4}:81")), "{line}");
    Ok(())
}

fn assert_nothing_left(rig: &Rig) -> anyhow::Result<()> {
    wait_for("the fwmark rules to go", Duration::from_secs(10), || {
        let v4 = rig.ip(Ns::Gateway, "rule show").ok()?;
        let v6 = rig.ip(Ns::Gateway, "-6 rule show").ok()?;
        let all = format!("{}{}", text(&v4), text(&v6));
        (!all.contains("fwmark")).then_some(())
    })?;
    for fam in ["-4", "-6"] {
        let routes = rig.ip(Ns::Gateway, &format!("{fam} route show table 4757"))?;
        assert!(routes.stdout.is_empty(), "routes left: {}", text(&routes));
    }
    // Debian 12's bpftool does not list TCX links; XDP shows on the link,
    // and the TC program's absence shows in the forwarding check after this.
    let link = text(&rig.ip(Ns::Gateway, &format!("-d link show {CLIENT_IFACE}"))?);
    assert!(!link.contains("xdp"), "XDP program left attached: {link}");
    Ok(())
}

fn teardown(signal: i32, tag: &str) -> anyhow::Result<()> {
    let mut rig = Rig::new(tag)?;
    let nginx = Nginx::start(&mut rig, &[80], 0)?;
    random_file(&nginx.www.join("f"), 1000, 1)?;
    let gw = Gateway::start(&mut rig, &relay_only(XDP_ALWAYS))?;
    let link = text(&rig.ip(Ns::Gateway, &format!("-d link show {CLIENT_IFACE}"))?);
    assert!(link.contains("xdpgeneric"), "XDP program not attached: {link}");
    download(&rig, &format!("http://{SERVER_V4}/f"), "a", &[])?;
    assert_eq!(nginx.last_peer("/f")?, GW_SERVER_V4);

    let status = gw.stop(&mut rig, signal)?;
    if signal == libc::SIGTERM {
        assert!(status.success(), "SIGTERM exit: {status}");
    }
    // The steering stays pinned for the next gateway; with none running,
    // when_down = "forward" (the default) forwards steered flows untouched.
    let link = text(&rig.ip(Ns::Gateway, &format!("-d link show {CLIENT_IFACE}"))?);
    assert!(link.contains("xdpgeneric"), "the pinned XDP program went with the process: {link}");
    download(&rig, &format!("http://{SERVER_V4}/f"), "b", &[]).context("forwarding after exit")?;
    assert_eq!(nginx.last_peer("/f")?, CLIENT_V4, "traffic still steered with no gateway running");
    // `gateway detach` removes all of it.
    let conf = rig.dir().join("gateway.toml");
    let mut detach = rig.gateway_cmd(tests::gateway::binary()?)?;
    let out = detach.arg("detach").arg("--config").arg(&conf).output()?;
    assert!(out.status.success(), "detach: {}", text(&out));
    assert_nothing_left(&rig)?;
    download(&rig, &format!("http://{SERVER_V4}/f"), "c", &[]).context("forwarding after detach")?;
    assert_eq!(nginx.last_peer("/f")?, CLIENT_V4);
    Ok(())
}

#[test]
fn after_sigterm_steering_forwards_and_detach_leaves_nothing() -> anyhow::Result<()> {
    teardown(libc::SIGTERM, "term")
}

#[test]
fn after_sigkill_steering_forwards_and_detach_leaves_nothing() -> anyhow::Result<()> {
    teardown(libc::SIGKILL, "kill")
}

#[test]
fn ipv6_client_address_is_seen_when_not_steered() -> anyhow::Result<()> {
    let mut rig = Rig::new("v6fw")?;
    let nginx = Nginx::start(&mut rig, &[8080], 0)?;
    random_file(&nginx.www.join("f"), 10, 1)?;
    let _gw = Gateway::start(&mut rig, &relay_only(""))?;
    download(&rig, &format!("http://[{SERVER_V6}]:8080/f"), "a", &[])?;
    assert_eq!(nginx.last_peer("/f")?, CLIENT_V6);
    Ok(())
}

#[test]
fn client_reusing_a_port_in_gateway_time_wait_connects_at_once() -> anyhow::Result<()> {
    let mut rig = Rig::new("twre")?;
    let nginx = Nginx::start(&mut rig, &[80], 0)?;
    random_file(&nginx.www.join("f"), 100, 1)?;
    let gw = Gateway::start(&mut rig, &relay_only(""))?;
    // The client reads to EOF before closing, so the gateway's client-side
    // socket is the one that ends in TIME_WAIT; the same client port again
    // must not wait for it to expire (connect times out after 5 s).
    let port = 40000 + std::process::id() % 10000;
    let script = r"
import socket, time
for r in range(3):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.settimeout(5)
    s.bind(('CLIENT', PORT))
    s.connect(('SERVER', 80))
    s.sendall(b'GET /f HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n')
    d = b''
    while True:
        c = s.recv(65536)
        if not c:
            break
        d += c
    s.close()
    print(d.split(b' ')[1].decode())
    time.sleep(0.2)
"
    .replace("CLIENT", CLIENT_V4)
    .replace("SERVER", SERVER_V4)
    .replace("PORT", &port.to_string());
    let out = rig.run(Ns::Client, tests::util::PYTHON, &["-c", &script])?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).split_whitespace().collect::<Vec<_>>(),
        ["200", "200", "200"],
        "{}",
        text(&out)
    );
    assert_eq!(nginx.last_peer("/f")?, GW_SERVER_V4);
    assert!(gw.counter("/kernel/steer/time_wait_reused/packets")? >= 2);
    Ok(())
}

/// `xdp_mode = "auto"` (the default): no XDP program while there is nothing
/// to drop, so forwarded traffic is not copied for it; a reload that adds a
/// block prefix attaches it (the prefix is dropped, others pass), and one
/// that empties the list detaches it again.
#[test]
fn auto_xdp_is_attached_only_while_there_is_something_to_drop() -> anyhow::Result<()> {
    let mut rig = Rig::new("xdpa")?;
    let nginx = Nginx::start(&mut rig, &[80], 0)?;
    random_file(&nginx.www.join("f"), 1000, 1)?;
    let gw = Gateway::start(&mut rig, &relay_only(""))?;
    assert!(!xdp_attached(&rig)?, "XDP attached with nothing to drop");
    let ping = |rig: &Rig| rig.run(Ns::Client, "ping", &["-c", "1", "-W", "2", "-I", "198.18.0.4", SERVER_V4]);
    assert!(ping(&rig)?.status.success(), "ping before any block list");

    let conf = rig.dir().join("gateway.toml");
    std::fs::write(&conf, config(&rig, &relay_only("block = [\"198.18.0.4/32\"]")))?;
    let answer = gw.reload()?;
    ensure!(answer.starts_with("ok"), "{answer}");
    assert!(xdp_attached(&rig)?, "a block list did not attach XDP");
    assert!(!ping(&rig)?.status.success(), "a blocked client's ping got through");
    assert!(gw.counter("/kernel/xdp/blocked/packets")? >= 1);
    download(&rig, &format!("http://{SERVER_V4}/f"), "a", &[])?;
    assert_eq!(nginx.last_peer("/f")?, GW_SERVER_V4, "other clients are still steered");

    std::fs::write(&conf, config(&rig, &relay_only("")))?;
    let answer = gw.reload()?;
    ensure!(answer.starts_with("ok"), "{answer}");
    assert!(!xdp_attached(&rig)?, "XDP left attached after the block list emptied");
    assert!(ping(&rig)?.status.success(), "still blocked after the block list emptied");
    Ok(())
}
