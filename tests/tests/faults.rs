//! Faults of the parts around the gateway, caused on cue with the real
//! parts (a killed clamd, a stopped c-icap, a full disk, a server that
//! resets, the gateway itself killed): no hang, no infected byte past
//! policy, nothing leaked.

use std::{process::Command, time::Duration};

use tests::{
    Ns,
    rig::SERVER_V4,
    util::{output_text as text, random_file, run_ok, wait_for},
    web::{Web, WebSettings},
};

/// Waits until the gateway holds at least `bytes` of bodies.
fn holding(env: &Web, bytes: u64) -> anyhow::Result<()> {
    wait_for("a body to be held", Duration::from_secs(20), || {
        let (m, d) = (env.gw().counter("/spool/memory").ok()?, env.gw().counter("/spool/disk").ok()?);
        (m + d >= bytes).then_some(())
    })
}

/// Waits until the gateway holds no body and no connection.
fn nothing_held(env: &Web) -> anyhow::Result<()> {
    wait_for("the gateway to let go", Duration::from_secs(30), || {
        (env.gw().open_spool_files() == 0 && env.gw().counter("/proxy/flows_active").ok()? == 0).then_some(())
    })
}

/// clamd dies while a 100 MiB download is being scanned: fail closed (503),
/// nothing of the body delivered, and the next scan works again once
/// clamd is back.
#[test]
fn clamd_killed_mid_scan_fails_closed() -> anyhow::Result<()> {
    let mut env = Web::start("xclamd", "")?;
    random_file(&env.nginx.www.join("100m"), 100 << 20, 9)?;
    let dest = env.rig.dir().join("got-100m");
    let url = format!("http://{SERVER_V4}/100m");
    let d = dest.to_string_lossy().to_string();
    let (out, ()) = std::thread::scope(|s| -> anyhow::Result<_> {
        let get = s.spawn(|| env.rig.curl(&["-sS", "-m", "120", "-o", &d, "-w", "%{http_code}", &url]));
        holding(&env, 8 << 20)?;
        let pid = env.clamd.pid().ok_or_else(|| anyhow::anyhow!("clamd not running"))?;
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        Ok((get.join().map_err(|_| anyhow::anyhow!("curl thread"))??, ()))
    })?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "503", "{}", text(&out));
    let got = std::fs::metadata(&dest).map(|m| m.len()).unwrap_or(0);
    assert!(got < 64 * 1024, "{got} bytes of an unscanned body were delivered");
    nothing_held(&env)?;
    env.clamd.stop();
    env.clamd = tests::clamd::Clamd::start(env.rig.dir().join("clamd"), "300M")?;
    let (status, _) = env.get(&format!("http://{SERVER_V4}/eicar.com"), &[])?;
    assert_eq!(status, 403, "scanning works again with clamd back");
    Ok(())
}

/// An ICAP service that stops answering mid-scan: the scan times out and
/// fails closed; the service, once it answers again, is used again.
#[test]
fn a_stalled_icap_service_times_out_and_fails_closed() -> anyhow::Result<()> {
    let env = Web::with(
        "xicap",
        &WebSettings { icap: true, scan: "io_timeout = \"2s\"\nicap_deadline = \"4s\"", ..WebSettings::default() },
    )?;
    random_file(&env.nginx.www.join("20m"), 20 << 20, 10)?;
    let ns = run_ok(Command::new("ip").args(["netns", "pids", env.rig.name(Ns::Gateway)]))?;
    let pids: Vec<i32> = String::from_utf8_lossy(&ns.stdout)
        .split_whitespace()
        .filter(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "c-icap"))
        .filter_map(|p| p.parse().ok())
        .collect();
    assert!(!pids.is_empty(), "no c-icap process in the rig");
    for p in &pids {
        // SAFETY: plain kill(2) on processes of this rig.
        unsafe { libc::kill(*p, libc::SIGSTOP) };
    }
    let started = std::time::Instant::now();
    let (status, _) = env.get(&format!("http://{SERVER_V4}/20m"), &[])?;
    let waited = started.elapsed();
    for p in &pids {
        // SAFETY: as above.
        unsafe { libc::kill(*p, libc::SIGCONT) };
    }
    assert_eq!(status, 503, "a stalled scanner must fail closed");
    assert!(waited < Duration::from_secs(60), "the gateway hung for {waited:?}");
    nothing_held(&env)?;
    Ok(())
}

/// A spool directory whose disk is full: the body cannot be held, so it is
/// refused (503) with a log line, never delivered unheld; smaller bodies
/// still pass.
#[test]
fn a_full_spool_disk_refuses_instead_of_truncating() -> anyhow::Result<()> {
    let env = Web::start("xfull", "spool_memory = \"64KiB\"\nspool_memory_total = \"64KiB\"")?;
    // A 2 MiB disk under the spool directory, in the gateway's own mount
    // namespace (`ip netns exec` gave it one): gone with the gateway.
    let spool = env.rig.dir().join("spool");
    let target = format!("--target={}", env.gw().pid);
    run_ok(
        Command::new("nsenter")
            .args([target.as_str(), "--mount", "mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs"])
            .arg(&spool),
    )?;
    let (status, _) = env.get(&format!("http://{SERVER_V4}/tail-10m.bin"), &[])?;
    assert_eq!(status, 503);
    assert!(env.gw().log_text().contains("cannot hold the body"), "no log line says why");
    let (status, _) = env.get(&format!("http://{SERVER_V4}/eicar.com"), &[])?;
    assert_eq!(status, 403, "small bodies are still scanned");
    nothing_held(&env)?;
    Ok(())
}

/// A server that resets mid-body: 502, never a short body passed as whole,
/// nothing held afterwards.
#[test]
fn a_server_reset_mid_body_is_a_502() -> anyhow::Result<()> {
    let env = Web::start("xreset", "")?;
    let (status, page) = env.get(&format!("http://{SERVER_V4}:8081/reset-mid"), &[])?;
    assert_eq!(status, 502, "{}", std::fs::read_to_string(page)?);
    nothing_held(&env)?;
    Ok(())
}

/// The gateway killed while it holds infected bodies: those clients get a
/// broken connection, never the body.
#[test]
fn the_gateway_killed_under_load_delivers_nothing_it_held() -> anyhow::Result<()> {
    let mut env = Web::start("xkill", "")?;
    let url = format!("http://{SERVER_V4}/tail-10m.bin");
    let outs = std::thread::scope(|s| -> anyhow::Result<Vec<_>> {
        let gets: Vec<_> = (0..8)
            .map(|i| {
                let d = env.rig.dir().join(format!("held-{i}")).to_string_lossy().to_string();
                let url = url.clone();
                let rig = &env.rig;
                s.spawn(move || rig.curl(&["-sS", "-m", "30", "-o", &d, &url]))
            })
            .collect();
        holding(&env, 40 << 20)?;
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(env.gw().pid as i32, libc::SIGKILL) };
        gets.into_iter().map(|g| g.join().map_err(|_| anyhow::anyhow!("curl thread"))?).collect()
    })?;
    if let Some(gw) = env.gw.take() {
        env.rig.wait(gw.pid);
    }
    for (i, out) in outs.iter().enumerate() {
        let got = std::fs::read(env.rig.dir().join(format!("held-{i}"))).unwrap_or_default();
        assert!(!got.windows(16).any(|w| w == b"EICAR-STANDARD-A"), "client {i} got the infected body: {}", text(out));
    }
    Ok(())
}
