//! Scanner pools (issue 15) with real clamd instances: one killed while 200
//! downloads are being scanned through the gateway fails none of them, is
//! shown down in `gateway stats`, and is taken back once it runs again.

use std::{path::PathBuf, process::Stdio, time::Duration};

use tests::{
    Gateway, Ns, Rig,
    clamd::{Clamd, eicar},
    gateway::Settings,
    nginx::Nginx,
    rig::SERVER_V4,
    util::{output_text, random_file, sha256_file, wait_for},
};

const FILES: usize = 200;

fn members(gw: &Gateway) -> anyhow::Result<Vec<serde_json::Value>> {
    let s = gw.stats()?;
    Ok(s.pointer("/scanner/members").and_then(|m| m.as_array()).cloned().unwrap_or_default())
}

fn field(m: &serde_json::Value, f: &str) -> u64 {
    m.get(f).and_then(serde_json::Value::as_u64).unwrap_or(0)
}

fn state(m: &serde_json::Value) -> String {
    m.get("state").and_then(|s| s.as_str()).unwrap_or_default().to_string()
}

#[test]
fn a_clamd_killed_during_200_scans_fails_none_is_shown_down_and_comes_back() -> anyhow::Result<()> {
    let mut rig = Rig::new("pool1")?;
    let nginx = Nginx::start(&mut rig, &[80], 1)?;
    // Distinct bodies (clamd's cache is off anyway), each under the 1 MiB
    // a scan keeps for starting over on another member.
    let originals: Vec<PathBuf> = (0..FILES)
        .map(|i| random_file(&nginx.www.join(format!("f{i:03}.bin")), 768 << 10, 1000 + i as u64))
        .collect::<Result<_, _>>()?;
    std::fs::write(nginx.www.join("eicar.com"), eicar())?;
    let mut clamds: Vec<Clamd> =
        (0..3).map(|i| Clamd::start(rig.dir().join(format!("clamd{i}")), "300M")).collect::<Result<_, _>>()?;
    let list: Vec<String> = clamds.iter().map(|c| format!("\"{}\"", c.addr())).collect();
    let scan = format!("clamd = [{}]\nhealth_interval = \"1s\"", list.join(", "));
    let gw = Gateway::start(&mut rig, &Settings { scan: &scan, ..Settings::default() })?;
    assert_eq!(members(&gw)?.len(), 3, "{}", gw.stats()?);

    let got = rig.dir().join("got");
    std::fs::create_dir_all(&got)?;
    let mut cmd = rig.cmd(Ns::Client, "curl");
    cmd.args(["-sS", "--fail", "--parallel", "--parallel-max", "8"]);
    for i in 0..FILES {
        cmd.arg("-o").arg(got.join(format!("f{i:03}.bin"))).arg(format!("http://{SERVER_V4}/f{i:03}.bin"));
    }
    let mut curl = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;

    let scanned = |gw: &Gateway| -> u64 { members(gw).map(|m| m.iter().map(|m| field(m, "scans")).sum()).unwrap_or(0) };
    wait_for("40 scans answered", Duration::from_secs(60), || (scanned(&gw) >= 40).then_some(()))?;
    clamds[1].stop();
    let at_kill = scanned(&gw);
    assert!(curl.try_wait()?.is_none(), "the downloads ended before the kill: the test proves nothing");
    let out = curl.wait_with_output()?;
    assert!(out.status.success(), "a download failed: {}", output_text(&out));
    assert!(at_kill < FILES as u64, "every scan was done before the kill ({at_kill})");
    for (i, orig) in originals.iter().enumerate() {
        assert_eq!(sha256_file(&got.join(format!("f{i:03}.bin")))?, sha256_file(orig)?, "file {i} changed");
    }
    assert!(gw.detections().is_empty(), "a clean download was blocked: {:?}", gw.detections());
    let m = members(&gw)?;
    assert_eq!(state(&m[1]), "down", "{m:?}");
    assert!(gw.log_text().contains(&format!("scanner clamd at {} is down", clamds[1].addr())), "{}", gw.log_text());
    assert!(m.iter().all(|m| field(m, "scans") > 0), "every member took scans: {m:?}");
    assert_eq!(m.iter().map(|m| field(m, "scans")).sum::<u64>(), FILES as u64, "one answered scan per download: {m:?}");

    // With one member down, EICAR is still found.
    let out = rig.curl(&["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("http://{SERVER_V4}/eicar.com")])?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403");

    // Restarted, it is found by a health check and takes scans again.
    clamds[1] = Clamd::start(rig.dir().join("clamd1"), "300M")?;
    wait_for("the restarted clamd to be up", Duration::from_secs(30), || {
        members(&gw).ok().filter(|m| state(&m[1]) == "up").map(|_| ())
    })?;
    let before = field(&members(&gw)?[1], "scans");
    let mut args: Vec<String> = ["-sS", "--fail", "--parallel", "--parallel-max", "6"].map(String::from).to_vec();
    for i in 0..30 {
        args.extend(["-o".into(), "/dev/null".into(), format!("http://{SERVER_V4}/f{i:03}.bin")]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = rig.curl(&args)?;
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(field(&members(&gw)?[1], "scans") > before, "the restarted member took no scan: {:?}", members(&gw)?);
    Ok(())
}
