//! systemd (issue 13, item 8): the notify protocol spoken by the real
//! binary to a test socket standing in for systemd's (READY=1 once it
//! serves, WATCHDOG=1 while WATCHDOG_USEC is set, RELOADING=1 and READY=1
//! around a SIGHUP reload, STOPPING=1 on SIGTERM);
//! `dist/gateway.service` and the clamd drop-in pass `systemd-analyze
//! verify`; the unit's capability set is enough to run the gateway, and
//! less is not.

use std::{
    os::unix::net::UnixDatagram,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use tests::{
    Ns, Rig,
    gateway::{NO_SCAN, Settings, binary, config},
    nginx::Nginx,
    prometheus::scrape,
    rig::{GW_SERVER_V4, SERVER_V4},
    util::{output_text, wait_for, workspace_root},
};

/// Datagrams received on `sock` until one contains `want` or `limit`
/// passes; all of them, in order.
fn receive_until(sock: &UnixDatagram, want: &str, limit: Duration) -> Vec<String> {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = msg.lines().any(|l| l == want);
            got.push(msg);
            if done {
                break;
            }
        }
    }
    got
}

/// The socket standing in for systemd's, in the rig's directory.
fn notify_socket(rig: &Rig) -> anyhow::Result<(std::path::PathBuf, UnixDatagram)> {
    let path = rig.dir().join("notify.sock");
    let sock = UnixDatagram::bind(&path)?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    Ok((path, sock))
}

#[test]
fn notify_ready_watchdog_stopping() -> anyhow::Result<()> {
    let mut rig = Rig::new("sdn")?;
    let (path, sock) = notify_socket(&rig)?;
    let conf = rig.dir().join("gateway.toml");
    std::fs::write(&conf, config(&rig, &Settings { http: NO_SCAN, ..Settings::default() }))?;
    let mut cmd = rig.gateway_cmd(binary()?)?;
    cmd.args(["run", "--config"]).arg(&conf).env("NOTIFY_SOCKET", &path).env("WATCHDOG_USEC", "200000");
    let pid = rig.spawn(cmd, &rig.dir().join("gateway.log"))?;

    let before = receive_until(&sock, "READY=1", Duration::from_secs(20));
    assert!(before.last().is_some_and(|m| m.contains("READY=1")), "no READY=1: {before:?}");
    // READY=1 means serving: the listeners, the control socket and the
    // metrics endpoint are there the moment it arrives.
    let listeners = rig.run(Ns::Gateway, "ss", &["-Hltn", "sport = :15080"])?;
    assert!(!listeners.stdout.is_empty(), "READY=1 before the HTTP listener");
    let stats = rig.run(
        Ns::Gateway,
        &binary()?.to_string_lossy(),
        &["stats", "--socket", &rig.dir().join("control.sock").to_string_lossy()],
    )?;
    assert!(stats.status.success(), "READY=1 before the control socket: {}", output_text(&stats));
    assert!(scrape(&rig, None).is_ok(), "READY=1 before the metrics endpoint");

    // WATCHDOG_USEC = 200 ms: a ping every 100 ms.
    let pings = receive_until(&sock, "never", Duration::from_secs(1));
    let n = pings.iter().filter(|m| m.lines().any(|l| l == "WATCHDOG=1")).count();
    assert!((5..=15).contains(&n), "{n} WATCHDOG=1 in 1 s: {pings:?}");

    // SIGHUP reloads: RELOADING=1 with the time, then READY=1 again.
    // SAFETY: plain kill(2) on the gateway this test started.
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    let reload = receive_until(&sock, "READY=1", Duration::from_secs(10));
    let start = reload.iter().position(|m| m.lines().any(|l| l == "RELOADING=1"));
    let start = start.unwrap_or_else(|| panic!("no RELOADING=1: {reload:?}"));
    assert!(reload[start].contains("MONOTONIC_USEC="), "{reload:?}");
    assert!(reload.last().is_some_and(|m| m.contains("READY=1")), "no READY=1 after the reload: {reload:?}");

    // SAFETY: as above.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let after = receive_until(&sock, "STOPPING=1", Duration::from_secs(10));
    assert!(after.last().is_some_and(|m| m.contains("STOPPING=1")), "no STOPPING=1: {after:?}");
    let status = rig.wait(pid).map(|s| s.code());
    assert_eq!(status, Some(Some(0)), "exit status after SIGTERM");
    Ok(())
}

#[test]
fn no_watchdog_pings_unless_asked() -> anyhow::Result<()> {
    let mut rig = Rig::new("sdw")?;
    let (path, sock) = notify_socket(&rig)?;
    let text = config(&rig, &Settings { http: NO_SCAN, ..Settings::default() });
    let notify = path.to_string_lossy().into_owned();
    let _gw = tests::Gateway::start_with_env(&mut rig, &text, &[("NOTIFY_SOCKET", &notify)])?;
    let got = receive_until(&sock, "never", Duration::from_secs(1));
    assert!(got.iter().any(|m| m.contains("READY=1")), "{got:?}");
    assert!(!got.iter().any(|m| m.contains("WATCHDOG=1")), "{got:?}");
    Ok(())
}

/// `systemd-analyze`, or `None` (with the reason printed) when this
/// machine has none: `cargo xtask setup` installs it (package systemd).
fn systemd_analyze() -> Option<&'static str> {
    let found = Command::new("systemd-analyze").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        eprintln!(
            "SKIPPED: systemd-analyze is not installed (run `cargo xtask setup`, which installs package systemd)"
        );
    }
    found.then_some("systemd-analyze")
}

/// `systemd-analyze verify UNIT`: whether it exited 0, and what it said.
fn verify(unit: &Path) -> anyhow::Result<(bool, String)> {
    let out = Command::new("systemd-analyze").arg("verify").arg(unit).output()?;
    Ok((out.status.success(), output_text(&out)))
}

#[test]
fn unit_and_drop_in_pass_systemd_analyze_verify() -> anyhow::Result<()> {
    let Some(_) = systemd_analyze() else { return Ok(()) };
    let rig = Rig::new("sdv")?;
    let dist = workspace_root().join("dist");
    // The unit as shipped but for ExecStart's path: the binary is not
    // installed on this host (the package test verifies the installed unit
    // with nothing changed).
    let unit = std::fs::read_to_string(dist.join("gateway.service"))?;
    assert!(unit.contains("ExecStart=/usr/bin/gateway run "), "{unit}");
    let here = unit.replace("/usr/bin/gateway", &binary()?.to_string_lossy());
    let path = rig.dir().join("gateway.service");
    std::fs::write(&path, &here)?;
    let (ok, said) = verify(&path)?;
    assert!(ok && said.trim().is_empty(), "systemd-analyze verify gateway.service: {said}");
    for directive in ["Type=notify", "WatchdogSec=", "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure"] {
        assert!(unit.lines().any(|l| l.starts_with(directive)), "the unit lacks {directive}");
    }
    // The check is not blind: a typo is reported.
    std::fs::write(&path, here.replace("ProtectSystem=strict", "ProtectSytem=strict"))?;
    let (_, said) = verify(&path)?;
    assert!(said.contains("Unknown key 'ProtectSytem'"), "{said}");

    // The clamd drop-in, next to Debian's clamav-daemon.service.
    let dir = rig.dir().join("clamd");
    std::fs::create_dir_all(dir.join("clamav-daemon.service.d"))?;
    std::fs::copy("/lib/systemd/system/clamav-daemon.service", dir.join("clamav-daemon.service"))?;
    let drop_in = dir.join("clamav-daemon.service.d/tmpfs.conf");
    std::fs::copy(dist.join("clamd-tmpfs.conf"), &drop_in)?;
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.join("clamav-daemon.service"))
        .env("SYSTEMD_LOG_LEVEL", "debug")
        .output()?;
    let said = output_text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains(&format!("DropIn Path: {}", drop_in.display())), "the drop-in was not read: {said}");
    let ours: Vec<&str> = said.lines().filter(|l| l.starts_with(&drop_in.to_string_lossy().to_string())).collect();
    assert!(ours.is_empty(), "systemd-analyze on the drop-in: {ours:?}");
    Ok(())
}

/// The capabilities the unit leaves the gateway (`CapabilityBoundingSet=`),
/// as setpriv names them (`bpf`, `net_admin`, …).
fn unit_capabilities() -> anyhow::Result<Vec<String>> {
    let unit = std::fs::read_to_string(workspace_root().join("dist/gateway.service"))?;
    let line = unit.lines().find_map(|l| l.strip_prefix("CapabilityBoundingSet="));
    let caps: Vec<String> = line
        .unwrap_or_default()
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase())
        .collect();
    anyhow::ensure!(!caps.is_empty(), "no CapabilityBoundingSet= in the unit");
    Ok(caps)
}

/// Starts the gateway as root holding only `caps`; returns its pid once
/// it answers, or its log if it exited.
fn start_with_caps(rig: &mut Rig, caps: &[String]) -> anyhow::Result<Result<u32, String>> {
    let conf = rig.dir().join("caps.toml");
    std::fs::write(&conf, config(rig, &Settings { http: NO_SCAN, ..Settings::default() }))?;
    let set: String = caps.iter().map(|c| format!(",+{c}")).collect();
    let mut cmd = rig.gateway_cmd("setpriv")?;
    cmd.arg(format!("--bounding-set=-all{set}")).arg("--inh-caps=-all").arg(binary()?);
    cmd.args(["run", "--config"]).arg(&conf);
    let log = rig.dir().join(format!("caps-{}.log", caps.join("-")));
    let pid = rig.spawn(cmd, &log)?;
    let up = wait_for("the gateway to serve or exit", Duration::from_secs(20), || {
        if !running(pid) {
            return Some(false);
        }
        let ss = rig.run(Ns::Gateway, "ss", &["-Hltn", "sport = :15080"]).ok()?;
        (!ss.stdout.is_empty()).then_some(true)
    });
    if !matches!(up, Ok(true)) {
        // SAFETY: plain kill(2) on the gateway this test started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        rig.wait(pid);
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    Ok(if matches!(up, Ok(true)) { Ok(pid) } else { Err(format!("{up:?}: {text}")) })
}

/// Whether `pid` runs (exists and is not a zombie waiting to be reaped).
fn running(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z'))
}

#[test]
fn the_units_capabilities_are_enough_and_needed() -> anyhow::Result<()> {
    let caps = unit_capabilities()?;
    let mut rig = Rig::new("sdcap")?;
    let nginx = Nginx::start(&mut rig, &[80], 0)?;
    std::fs::write(nginx.www.join("hello"), "hello")?;
    let pid = match start_with_caps(&mut rig, &caps)? {
        Ok(pid) => pid,
        Err(log) => anyhow::bail!("the gateway did not start with {caps:?}: {log}"),
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let eff = status.lines().find(|l| l.starts_with("CapEff:")).unwrap_or_default().to_string();
    // A steered request through the gateway: nginx sees the gateway's address.
    let out = rig.curl(&["-sS", "-m", "10", &format!("http://{SERVER_V4}/hello")])?;
    assert_eq!(output_text(&out), "hello", "{eff}");
    assert_eq!(nginx.last_peer("/hello")?, GW_SERVER_V4, "the request went through the gateway");
    // SAFETY: plain kill(2) on the gateway this test started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    assert_eq!(rig.wait(pid).and_then(|s| s.code()), Some(0));

    // Each capability of the set is needed: without it the gateway does
    // not come up.
    for missing in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        match start_with_caps(&mut rig, &fewer)? {
            Ok(pid) => {
                // SAFETY: as above.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                rig.wait(pid);
                anyhow::bail!("the gateway runs without CAP_{}: the unit need not grant it", missing.to_uppercase());
            }
            Err(log) => eprintln!("without CAP_{}: {log}", missing.to_uppercase()),
        }
    }
    Ok(())
}
