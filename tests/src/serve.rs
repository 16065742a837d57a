//! `gateway serve`: the gateway's ICAP and antivirus-API servers without
//! steering, in a rig namespace or in the test's own (loopback only).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::Context as _;

use crate::{
    gateway::binary,
    rig::{Ns, Rig},
    util::wait_for,
};

/// A running `gateway serve`.
pub struct Served {
    /// Its log (stderr).
    pub log: PathBuf,
    /// Its control socket (`stats`).
    pub socket: PathBuf,
    netns: Option<String>,
    child: Option<Child>,
    pid: u32,
}

/// `[scan]`, `[control]` and `[log]` lines for a server whose files live in
/// `dir`, scanning with the clamd at `clamd`; `extra` adds sections.
pub fn config(dir: &Path, clamd: &str, extra: &str) -> String {
    let d = dir.display();
    format!(
        "[scan]\nclamd = \"{clamd}\"\nspool_dir = \"{d}/spool\"\nhealth_interval = \"1s\"\n\n\
         [control]\nsocket = \"{d}/serve.sock\"\n\n[log]\ndetections = \"{d}/detections.jsonl\"\n\n{extra}\n"
    )
}

impl Served {
    /// Starts `gateway serve` with `config_text` (written to `dir`), in
    /// `ns` of `rig` or, without a rig, here; returns once it answers on
    /// its control socket.
    pub fn start(rig: Option<(&mut Rig, Ns)>, dir: &Path, config_text: &str) -> anyhow::Result<Served> {
        Served::start_binary(&binary()?, rig, dir, config_text)
    }

    /// Like [`Served::start`] with another gateway binary (benchmarks
    /// comparing two builds).
    pub fn start_binary(
        binary: &Path,
        rig: Option<(&mut Rig, Ns)>,
        dir: &Path,
        config_text: &str,
    ) -> anyhow::Result<Served> {
        std::fs::create_dir_all(dir)?;
        let conf = dir.join("serve.toml");
        std::fs::write(&conf, config_text)?;
        let log = dir.join("serve.log");
        let socket = dir.join("serve.sock");
        let served = match rig {
            Some((rig, ns)) => {
                let mut cmd = rig.cmd(ns, binary);
                cmd.arg("serve").arg("--config").arg(&conf);
                let pid = rig.spawn(cmd, &log)?;
                Served { log, socket, netns: Some(rig.name(ns).to_string()), child: None, pid }
            }
            None => {
                let out = std::fs::File::create(&log)?;
                let child = Command::new(binary)
                    .arg("serve")
                    .arg("--config")
                    .arg(&conf)
                    .stdin(Stdio::null())
                    .stdout(out.try_clone()?)
                    .stderr(out)
                    .spawn()
                    .context("starting gateway serve")?;
                Served { log, socket, netns: None, pid: child.id(), child: Some(child) }
            }
        };
        let pid = served.pid;
        wait_for("gateway serve to answer on its control socket", Duration::from_secs(20), || {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                return Some(Err(()));
            }
            served.stats().ok().map(|_| Ok(()))
        })?
        .map_err(|()| anyhow::anyhow!("gateway serve exited at start: {}", served.log_text()))?;
        Ok(served)
    }

    /// `gateway stats` as JSON.
    pub fn stats(&self) -> anyhow::Result<serde_json::Value> {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(binary()?);
                c
            }
            None => Command::new(binary()?),
        };
        let out = cmd.arg("stats").arg("--socket").arg(&self.socket).output()?;
        anyhow::ensure!(out.status.success(), "gateway stats: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).context("parsing gateway stats")
    }

    /// A counter by JSON pointer, e.g. `/servers/icap/errors`.
    pub fn counter(&self, pointer: &str) -> anyhow::Result<u64> {
        let s = self.stats()?;
        s.pointer(pointer).and_then(serde_json::Value::as_u64).with_context(|| format!("no counter {pointer} in {s}"))
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the process still runs.
    pub fn alive(&self) -> bool {
        Path::new(&format!("/proc/{}", self.pid)).exists()
            && !std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).is_ok_and(|s| s.contains(") Z "))
    }

    /// Everything it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
