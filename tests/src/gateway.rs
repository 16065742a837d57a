//! The real `gateway` binary, run in the rig's gateway namespace.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{
    rig::{CLIENT_IFACE, Ns, Rig},
    util::{wait_for, workspace_root},
};

/// Path of the gateway binary: `$GATEWAY_BIN`, else the newest of
/// `target/{release,debug}/gateway` (`cargo xtask test` builds it first).
pub fn binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("GATEWAY_BIN") {
        return Ok(PathBuf::from(p));
    }
    let root = workspace_root();
    let newest = ["release", "debug"]
        .iter()
        .map(|p| root.join("target").join(p).join("gateway"))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .max();
    match newest {
        Some((_, p)) => Ok(p),
        None => {
            bail!("no gateway binary: run `cargo build --release -p gateway` or set GATEWAY_BIN")
        }
    }
}

/// Extra TOML lines per section, on top of what every rig needs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Settings<'a> {
    /// Lines for `[steering]`.
    pub steering: &'a str,
    /// Lines for `[scan]`.
    pub scan: &'a str,
    /// Lines for `[http]`.
    pub http: &'a str,
    /// Lines for `[ftp]`.
    pub ftp: &'a str,
    /// Lines for `[proxy]`.
    pub proxy: &'a str,
}

/// `[http]` lines that turn scanning off (steering and relay tests).
pub const NO_SCAN: &str = "scan_downloads = false\nscan_uploads = false";

/// A configuration for the rig: the client-facing interface, and a control
/// socket, spool directory and detection log in the rig's directory.
pub fn config(rig: &Rig, s: &Settings<'_>) -> String {
    let d = rig.dir().display();
    format!(
        "[steering]\ninterfaces = [\"{CLIENT_IFACE}\"]\n{}\n\n[control]\nsocket = \"{d}/control.sock\"\n\n\
         [scan]\nspool_dir = \"{d}/spool\"\n{}\n\n[http]\n{}\n\n[ftp]\n{}\n\n[proxy]\n{}\n\n[log]\ndetections = \"{d}/detections.jsonl\"\n",
        s.steering, s.scan, s.http, s.ftp, s.proxy
    )
}

/// A running gateway.
pub struct Gateway {
    /// Process id (of the gateway itself: `ip netns exec` execs it).
    pub pid: u32,
    /// Its stderr/stdout log.
    pub log: PathBuf,
    /// The control socket.
    pub socket: PathBuf,
    bin: PathBuf,
    netns: String,
}

impl Gateway {
    /// Starts the gateway with [`config`]`(rig, settings)`.
    pub fn start(rig: &mut Rig, settings: &Settings<'_>) -> anyhow::Result<Gateway> {
        let text = config(rig, settings);
        Gateway::start_with(rig, &text)
    }

    /// Writes `config_text` and starts the gateway; returns once it answers
    /// on its control socket.
    pub fn start_with(rig: &mut Rig, config_text: &str) -> anyhow::Result<Gateway> {
        Gateway::start_with_env(rig, config_text, &[])
    }

    /// Like [`Gateway::start_with`], with these environment variables
    /// (`NOTIFY_SOCKET`, `WATCHDOG_USEC`, …).
    pub fn start_with_env(rig: &mut Rig, config_text: &str, env: &[(&str, &str)]) -> anyhow::Result<Gateway> {
        let conf = rig.dir().join("gateway.toml");
        std::fs::write(&conf, config_text)?;
        Gateway::launch(rig, &conf, &["run"], env, "gateway.log")
    }

    /// Starts another gateway with `config_text` that replaces this one
    /// (`gateway run --takeover`); returns once it answers. The old one
    /// drains and exits on its own ([`Gateway::wait_exit`]).
    pub fn takeover(&self, rig: &mut Rig, config_text: &str, log_name: &str) -> anyhow::Result<Gateway> {
        let conf = rig.dir().join(format!("{log_name}.toml"));
        std::fs::write(&conf, config_text)?;
        Gateway::launch(rig, &conf, &["run", "--takeover"], &[], log_name)
    }

    fn launch(
        rig: &mut Rig,
        conf: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        log_name: &str,
    ) -> anyhow::Result<Gateway> {
        let bin = binary()?;
        let log = rig.dir().join(log_name);
        let mut cmd = rig.gateway_cmd(&bin)?;
        cmd.args(args).arg("--config").arg(conf).envs(env.iter().copied());
        let pid = rig.spawn(cmd, &log)?;
        let gw =
            Gateway { pid, log, socket: rig.dir().join("control.sock"), bin, netns: rig.name(Ns::Gateway).to_string() };
        wait_for("the gateway to answer on its control socket", Duration::from_secs(20), || {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                return Some(Err(()));
            }
            gw.stats().ok().map(|_| Ok(()))
        })?
        .map_err(|()| anyhow::anyhow!("the gateway exited at start: {}", gw.log_text()))?;
        Ok(gw)
    }

    fn ctl(&self, args: &[&str]) -> anyhow::Result<Output> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .arg(&self.bin)
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()?;
        if !out.status.success() {
            bail!("gateway {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(out)
    }

    /// The counters as JSON.
    pub fn stats(&self) -> anyhow::Result<serde_json::Value> {
        let out = self.ctl(&["stats"])?;
        serde_json::from_slice(&out.stdout).context("parsing gateway stats")
    }

    /// A counter by JSON pointer, e.g. `/kernel/xdp/blocked/packets`.
    pub fn counter(&self, pointer: &str) -> anyhow::Result<u64> {
        let stats = self.stats()?;
        stats
            .pointer(pointer)
            .and_then(serde_json::Value::as_u64)
            .with_context(|| format!("no counter {pointer} in {stats}"))
    }

    /// `gateway expect add|del CLIENT SERVER PORT`.
    pub fn expect(&self, op: &str, client: &str, server: &str, port: u16) -> anyhow::Result<()> {
        self.ctl(&["expect", op, client, server, &port.to_string()]).map(|_| ())
    }

    /// Detection records written so far.
    pub fn detections(&self) -> Vec<serde_json::Value> {
        let path = self.log.with_file_name("detections.jsonl");
        std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// Spool files the gateway holds open (O_TMPFILE files in the rig's
    /// spool directory show in /proc as `…/spool/#N (deleted)`).
    pub fn open_spool_files(&self) -> usize {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{}/fd", self.pid)) else { return 0 };
        fds.flatten()
            .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().contains("/spool/")))
            .count()
    }

    /// The gateway's TCP sockets in any state but LISTEN (`ss` lines).
    pub fn tcp_connections(&self) -> anyhow::Result<Vec<String>> {
        let out = Command::new("ip").args(["netns", "exec", &self.netns, "ss", "-Htanp"]).output()?;
        let me = format!("pid={},", self.pid);
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(&me) && !l.starts_with("LISTEN"))
            .map(str::to_owned)
            .collect())
    }

    /// Everything the gateway logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Flow log lines (`kind=… client=… dst=…`).
    pub fn flow_lines(&self) -> Vec<String> {
        self.log_text().lines().filter(|l| l.contains(" flow: ")).map(str::to_owned).collect()
    }

    /// `gateway reload` through the control socket; its answer.
    pub fn reload(&self) -> anyhow::Result<String> {
        let out = self.ctl(&["reload"])?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Waits for the process to exit on its own (drained after a takeover
    /// or a signal) and reaps it.
    pub fn wait_exit(self, rig: &mut Rig, within: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let pid = self.pid;
        wait_for("the gateway to exit", within, || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
            stat.is_none_or(|s| s.contains(") Z ")).then_some(())
        })?;
        rig.wait(pid).context("the gateway was not a child of this rig")
    }

    /// Sends `signal` and waits for the process to exit.
    pub fn stop(self, rig: &mut Rig, signal: i32) -> anyhow::Result<std::process::ExitStatus> {
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(self.pid as i32, signal) };
        rig.wait(self.pid).context("the gateway was not a child of this rig")
    }
}
