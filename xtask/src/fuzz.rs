//! `cargo xtask fuzz [TARGET] [--minutes N]`: coverage-guided fuzzing of the
//! gateway's parsers and decoders with cargo-fuzz (libFuzzer, nightly).
//!
//! The targets live in `fuzz/` (its own workspace, outside the main one).
//! Each runs alone, one after the other, with the committed seeds in
//! `fuzz/seeds/<target>/` and the corpus libFuzzer grows in
//! `fuzz/corpus/<target>/` (ignored by git); crashes land in
//! `fuzz/artifacts/<target>/`. A table of executions and crashes follows;
//! the command fails if any target crashed.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};

/// Every target with the longest input it is given (`-max_len`): room for
/// the largest seed and the limit the code under test enforces.
pub const TARGETS: &[(&str, usize)] = &[
    // Heads are refused past 64 KiB; 16 KiB covers many headers and long ones.
    ("http_head", 16 * 1024),
    // Server responses (browser rules); the corpus seeds are up to 16 KiB.
    ("http_response", 16 * 1024),
    // Past the framing-line limits (8 KiB strict, 16 KiB browser rules).
    ("chunked", 24 * 1024),
    ("head_scan", 4 * 1024),
    // The seed bombs are ~64 KiB; ratio 1000 lets 128 KiB decode to the 64 MiB limit.
    ("content_decode", 128 * 1024),
    ("icap_response", 8 * 1024),
    ("ftp_command", 1024),
];

/// The outcome of one target's run.
struct Run {
    target: &'static str,
    seconds: f64,
    executions: Option<u64>,
    exec_per_sec: Option<u64>,
    crash: Option<String>,
    corpus_files: usize,
    corpus_bytes: u64,
}

fn fuzz_dir() -> PathBuf {
    tests::util::workspace_root().join("fuzz")
}

/// Installs cargo-fuzz for nightly unless `cargo +nightly fuzz` already works.
fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let present = Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz (nightly, a few minutes)");
    let status = Command::new("cargo")
        .args(["+nightly", "install", "cargo-fuzz"])
        .status()
        .context("running cargo +nightly install cargo-fuzz")?;
    if !status.success() {
        bail!("cargo +nightly install cargo-fuzz failed ({status})");
    }
    Ok(())
}

/// Files and bytes in a corpus directory.
fn corpus_size(dir: &Path) -> (usize, u64) {
    let Ok(rd) = std::fs::read_dir(dir) else { return (0, 0) };
    rd.flatten()
        .filter_map(|e| e.metadata().ok().filter(|m| m.is_file()))
        .fold((0, 0), |(n, b), m| (n + 1, b + m.len()))
}

/// `stat::name: value` from libFuzzer's final statistics.
fn stat(line: &str, name: &str) -> Option<u64> {
    line.strip_prefix(name)?.trim_start_matches(':').trim().parse().ok()
}

/// Runs one target for `minutes`, echoing libFuzzer's output to stderr and
/// keeping it in `fuzz/artifacts/<target>/last-run.log`.
fn run_one(target: &'static str, max_len: usize, minutes: u64) -> anyhow::Result<Run> {
    let dir = fuzz_dir();
    let corpus = dir.join("corpus").join(target);
    let seeds = dir.join("seeds").join(target);
    let artifacts = dir.join("artifacts").join(target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    std::fs::create_dir_all(&artifacts).with_context(|| format!("creating {}", artifacts.display()))?;
    let log_path = artifacts.join("last-run.log");
    let mut log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    eprintln!("xtask: fuzzing {target} for {minutes} min (log: {})", log_path.display());

    let mut child = Command::new("cargo")
        .args(["+nightly", "fuzz", "run", "--debug-assertions", target])
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={}", minutes * 60))
        .arg("-rss_limit_mb=2048")
        .arg(format!("-max_len={max_len}"))
        .arg("-print_final_stats=1")
        .current_dir(&dir)
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .spawn()
        .context("running cargo +nightly fuzz run")?;
    let stderr = child.stderr.take().context("libFuzzer's stderr")?;

    let mut started: Option<Instant> = None;
    let mut done_seconds = None;
    let (mut executions, mut exec_per_sec, mut artifact) = (None, None, None);
    for line in BufReader::new(stderr).lines() {
        let line = line.context("reading libFuzzer's output")?;
        eprintln!("{line}");
        let _ = writeln!(log, "{line}");
        // Fuzzing starts once the seeds are loaded (build time excluded).
        if started.is_none() && line.contains("INITED") {
            started = Some(Instant::now());
        }
        // "Done 123456 runs in 600 second(s)"
        if let Some(rest) = line.strip_prefix("Done ")
            && let Some(secs) = rest.split(" runs in ").nth(1)
        {
            done_seconds = secs.split_whitespace().next().and_then(|s| s.parse::<f64>().ok());
        }
        if let Some(n) = stat(&line, "stat::number_of_executed_units") {
            executions = Some(n);
        }
        if let Some(n) = stat(&line, "stat::average_exec_per_sec") {
            exec_per_sec = Some(n);
        }
        // "Test unit written to ./artifacts/<target>/crash-…" (crash, leak, OOM, timeout).
        if let Some((_, path)) = line.split_once("Test unit written to ") {
            artifact = Some(path.trim().to_string());
        }
    }
    let status = child.wait().context("waiting for cargo fuzz")?;
    let seconds = done_seconds.unwrap_or_else(|| started.map_or(0.0, |t| t.elapsed().as_secs_f64()));
    let crash = match (artifact, status.success()) {
        (Some(path), _) => Some(dir.join(path).display().to_string()),
        (None, true) => None,
        (None, false) if started.is_none() => bail!("cargo fuzz run {target} failed before fuzzing ({status})"),
        (None, false) => Some(format!("exit {status} without an artifact (see {})", log_path.display())),
    };
    let (corpus_files, corpus_bytes) = corpus_size(&corpus);
    Ok(Run { target, seconds, executions, exec_per_sec, crash, corpus_files, corpus_bytes })
}

/// `cargo xtask fuzz`: every target (or `only`) for `minutes` each.
pub fn run(only: Option<&str>, minutes: u64) -> anyhow::Result<()> {
    let targets: Vec<(&'static str, usize)> = match only {
        None => TARGETS.to_vec(),
        Some(name) => match TARGETS.iter().find(|(t, _)| *t == name) {
            Some(&t) => vec![t],
            None => {
                let names: Vec<&str> = TARGETS.iter().map(|(t, _)| *t).collect();
                bail!("no fuzz target {name:?}; the targets are {}", names.join(", "));
            }
        },
    };
    if minutes == 0 {
        bail!("--minutes must be at least 1");
    }
    ensure_cargo_fuzz()?;
    let mut runs = Vec::new();
    for (target, max_len) in targets {
        runs.push(run_one(target, max_len, minutes)?);
    }

    println!();
    println!("| target | minutes | executions | exec/s | crashes | corpus |");
    println!("|---|---:|---:|---:|---|---:|");
    for r in &runs {
        let execs = r.executions.map_or("?".to_string(), |n| n.to_string());
        let rate = r.exec_per_sec.map_or("?".to_string(), |n| n.to_string());
        let crash = r.crash.clone().unwrap_or_else(|| "0".to_string());
        println!(
            "| {} | {:.1} | {execs} | {rate} | {crash} | {} files, {} KiB |",
            r.target,
            r.seconds / 60.0,
            r.corpus_files,
            r.corpus_bytes.div_ceil(1024)
        );
    }
    let crashed: Vec<&str> = runs.iter().filter(|r| r.crash.is_some()).map(|r| r.target).collect();
    if !crashed.is_empty() {
        bail!("fuzz targets crashed: {} (inputs under fuzz/artifacts/)", crashed.join(", "));
    }
    Ok(())
}
