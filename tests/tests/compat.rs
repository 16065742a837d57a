//! Browser compatibility (issue 11): the http-oddities corpus
//! (tests/data/http-oddities, 262 odd-but-real responses, each checked
//! against real Chromium 156) served behind the gateway.
//!
//! Each case is served twice: with a clean body, which must render as
//! Chromium renders it without the gateway (or be refused where Chromium
//! refuses), and with EICAR, which must never arrive in any form. A sample
//! is also loaded in real headless Chromium, once past the gateway and once
//! through it, and the two renderings compared.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, ensure};
use tests::{
    Gateway, Ns, Rig,
    clamd::Clamd,
    gateway::Settings,
    rig::SERVER_V4,
    util::{PYTHON, output_text as text, wait_for, workspace_root},
};

/// Share of the cases Chromium accepts that must arrive as Chromium
/// renders them.
const TARGET: f64 = 0.95;

fn compat_dir() -> PathBuf {
    workspace_root().join("tests/compat")
}

/// Clamd, the gateway steering ports 80 and 8081, and the corpus server
/// (tests/compat/server.py) behind it.
fn corpus_rig(tag: &str) -> anyhow::Result<(Rig, Clamd, Gateway)> {
    let mut rig = Rig::new(tag)?;
    let corpus = workspace_root().join("tests/data/http-oddities");
    let mut cmd = rig.cmd(Ns::Server, PYTHON);
    cmd.arg(compat_dir().join("server.py")).arg("--bind").arg(SERVER_V4).arg("--dir").arg(&corpus);
    let log = rig.dir().join("corpus-server.log");
    rig.spawn(cmd, &log)?;
    wait_for("the corpus server", Duration::from_secs(10), || {
        let out = rig.run(Ns::Server, "ss", &["-Hltn", "sport = :8081"]).ok()?;
        (!out.stdout.is_empty()).then_some(())
    })?;
    let clamd = Clamd::start(rig.dir().join("clamd"), "100M")?;
    let scan = format!("clamd = \"{}\"", clamd.addr());
    let settings = Settings { steering: "http_ports = [80, 8081]", scan: &scan, ..Settings::default() };
    let gw = Gateway::start(&mut rig, &settings)?;
    Ok((rig, clamd, gw))
}

/// through.py's summary for one payload; prints its per-case lines that
/// differ from Chromium.
fn through(rig: &Rig, payload: &str) -> anyhow::Result<serde_json::Value> {
    let out = rig.run(
        Ns::Client,
        PYTHON,
        &[&compat_dir().join("through.py").to_string_lossy(), "--server", SERVER_V4, "--payload", payload],
    )?;
    ensure!(out.status.success(), "through.py: {}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut summary = None;
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("through.py said {line:?}"))?;
        if let Some(s) = v.get("summary") {
            summary = Some(s.clone());
        } else if payload == "clean" && v["expected"] != "reject" && v["expected"] != v["outcome"] {
            println!(
                "compat: {payload}: {} [{}]: expected {} got {}",
                v["id"], v["family"], v["expected"], v["outcome"]
            );
        }
        let refused = v["outcome"] == "reject" || v["outcome"] == "refused";
        if payload == "clean" && v["expected"] == "reject" && !refused {
            println!(
                "compat: {payload}: {} [{}]: Chromium rejects it, through the gateway {}",
                v["id"], v["family"], v["outcome"]
            );
        }
        if v["eicar_seen"] == true {
            println!("compat: {payload}: {} delivered the test file", v["id"]);
        }
    }
    summary.context("through.py printed no summary")
}

#[test]
fn the_corpus_renders_as_chromium_renders_it_and_eicar_never_arrives() -> anyhow::Result<()> {
    let (rig, _clamd, _gw) = corpus_rig("compat")?;
    let clean = through(&rig, "clean")?;
    let eicar = through(&rig, "eicar")?;
    let n = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or(0);
    let (accepted, identical) = (n(&clean, "accepted_direct"), n(&clean, "identical"));
    let share = identical as f64 / accepted.max(1) as f64;
    println!(
        "compat: {} cases; Chromium accepts {accepted} directly; through the gateway {identical} identical ({:.1} %), {} refused, {} different",
        n(&clean, "cases"),
        share * 100.0,
        n(&clean, "refused"),
        n(&clean, "other"),
    );
    println!(
        "compat: Chromium rejects {} directly; through the gateway {} of them render something; EICAR delivered in {} of {} cases",
        n(&clean, "rejected_direct"),
        n(&clean, "rejected_but_delivered"),
        n(&eicar, "eicar_delivered"),
        n(&eicar, "cases"),
    );
    assert_eq!(n(&clean, "cases"), 262, "the corpus is incomplete");
    assert_eq!(n(&eicar, "eicar_delivered"), 0, "the test file got through");
    assert_eq!(n(&clean, "eicar_delivered"), 0);
    assert!(share >= TARGET, "only {identical} of {accepted} cases render as in Chromium");
    Ok(())
}

/// Every eighth case of the corpus (33 of them, all families), loaded in
/// Debian's headless Chromium from the gateway's own namespace (past the
/// steering: the direct rendering) and from the client namespace (through
/// the gateway), with the clean body and then with EICAR.
#[test]
fn headless_chromium_renders_a_sample_the_same_through_the_gateway() -> anyhow::Result<()> {
    let (rig, _clamd, _gw) = corpus_rig("chrome")?;
    let expected = std::fs::read_to_string(workspace_root().join("tests/data/http-oddities/expected.toml"))?;
    let ids: Vec<&str> =
        expected.lines().filter_map(|l| l.strip_prefix('[').and_then(|l| l.strip_suffix(']'))).step_by(8).collect();
    ensure!(ids.len() >= 30, "sample of {} cases", ids.len());
    let cases = ids.join(",");
    let oracle = compat_dir().join("oracle.mjs");
    let run = |ns: Ns, payload: &str, out: &str| -> anyhow::Result<PathBuf> {
        let path = rig.dir().join(out);
        let o = rig.run(
            ns,
            "node",
            &[&oracle.to_string_lossy(), "--server", SERVER_V4, "--payload", payload, "--cases", &cases],
        )?;
        ensure!(o.status.success(), "oracle.mjs: {}", text(&o));
        std::fs::write(&path, &o.stdout)?;
        Ok(path)
    };
    // The two clean runs side by side (each browser mostly waits on its
    // cases' servers).
    let (direct, through) = std::thread::scope(|s| {
        let d = s.spawn(|| run(Ns::Gateway, "clean", "direct.jsonl"));
        let t = run(Ns::Client, "clean", "through.jsonl");
        (d.join().map_err(|_| anyhow::anyhow!("oracle thread")).and_then(|r| r), t)
    });
    let (direct, through) = (results(&direct?)?, results(&through?)?);
    ensure!(direct.len() == ids.len() && through.len() == ids.len(), "the oracle skipped cases");
    let (mut accepted, mut same, mut still_rejected) = (0u32, 0u32, 0u32);
    for id in &ids {
        let (d, t) = (&direct[*id], &through[*id]);
        if d.get("error").is_none() {
            accepted += 1;
            if t.get("error").is_none() && t["body_b64"] == d["body_b64"] {
                same += 1;
            } else {
                println!("compat: chromium: {id}: direct {d} through the gateway {t}");
            }
        } else if t.get("error").is_some() || matches!(t["status"].as_u64(), Some(403 | 502 | 503)) {
            // Chromium's own error page, or the gateway's refusal.
            still_rejected += 1;
        } else {
            println!("compat: chromium: {id}: rejected directly, rendered through the gateway: {t}");
        }
    }
    println!(
        "compat: chromium sample of {}: {accepted} accepted directly, {same} of them identical through the gateway; {still_rejected} of {} rejected stay refused",
        ids.len(),
        ids.len() as u32 - accepted
    );
    assert!(f64::from(same) >= TARGET * f64::from(accepted), "{} of {accepted} render differently", accepted - same);
    // With EICAR: nothing Chromium got through the gateway holds it.
    let o = rig.run(
        Ns::Client,
        "node",
        &[&oracle.to_string_lossy(), "--server", SERVER_V4, "--payload", "eicar", "--cases", &cases],
    )?;
    ensure!(o.status.success(), "oracle.mjs: {}", text(&o));
    let mark = ["EICAR-STANDARD-", "ANTIVIRUS-TEST-FILE"].concat();
    for line in String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value = serde_json::from_str(line)?;
        for field in ["body_b64", "partial_b64"] {
            if let Some(b) = v[field].as_str() {
                let bytes = base64_decode(b);
                assert!(!String::from_utf8_lossy(&bytes).contains(&mark), "{}: Chromium got the test file", v["id"]);
            }
        }
        if let Some(t) = v["partial_text"].as_str() {
            assert!(!t.contains(&mark), "{}: Chromium showed the test file", v["id"]);
        }
    }
    Ok(())
}

/// The oracle's JSON lines by case id.
fn results(path: &std::path::Path) -> anyhow::Result<std::collections::HashMap<String, serde_json::Value>> {
    let mut out = std::collections::HashMap::new();
    for line in std::fs::read_to_string(path)?.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value = serde_json::from_str(line)?;
        out.insert(v["id"].as_str().unwrap_or_default().to_string(), v);
    }
    Ok(out)
}

/// Standard base64 (the oracle's bodies); invalid input decodes to nothing.
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|&c| c != b'=') {
        let Some(v) = val(c) else { return Vec::new() };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
