//! Debian's Prometheus server and promtool (package `prometheus`, 2.42):
//! the real scraper of the gateway's `/metrics`, run in a rig namespace
//! with a storage folder of its own in the rig's directory.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{
    rig::{Ns, Rig},
    util::{output_text, wait_for},
};

/// Where the server answers, inside its namespace.
pub const LISTEN: &str = "127.0.0.1:9090";

/// A running Prometheus server.
pub struct Prometheus {
    ns: Ns,
    /// Process id (killed with the rig).
    pub pid: u32,
}

impl Prometheus {
    /// Starts a server in `ns` that scrapes `target` (`host:port`, path
    /// `/metrics`) as job `gateway` every 500 ms; returns once it is ready.
    pub fn start(rig: &mut Rig, ns: Ns, target: &str) -> anyhow::Result<Prometheus> {
        let dir = rig.dir().join("prometheus");
        std::fs::create_dir_all(dir.join("data"))?;
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 500ms\n  scrape_timeout: 500ms\n\
                 scrape_configs:\n  - job_name: gateway\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )?;
        let mut cmd = rig.cmd(ns, "prometheus");
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={LISTEN}"));
        let pid = rig.spawn(cmd, &dir.join("prometheus.log")).context("starting prometheus (package prometheus)")?;
        let p = Prometheus { ns, pid };
        wait_for("prometheus to be ready", Duration::from_secs(30), || {
            let out = rig.run(ns, "curl", &["-sf", &format!("http://{LISTEN}/-/ready")]).ok()?;
            out.status.success().then_some(())
        })
        .with_context(|| log(&dir))?;
        Ok(p)
    }

    /// An instant query: each sample's labels and value.
    pub fn query(&self, rig: &Rig, promql: &str) -> anyhow::Result<Vec<(Value, f64)>> {
        let url = format!("http://{LISTEN}/api/v1/query");
        let q = format!("query={promql}");
        let out = rig.run(self.ns, "curl", &["-sS", "--get", "--data-urlencode", &q, &url])?;
        let body: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("prometheus answered {promql:?} with {}", output_text(&out)))?;
        if body["status"] != "success" {
            bail!("prometheus query {promql:?} failed: {body}");
        }
        let samples = body["data"]["result"].as_array().cloned().unwrap_or_default();
        samples
            .into_iter()
            .map(|s| {
                let v = s["value"][1].as_str().and_then(|v| v.parse::<f64>().ok());
                let v = v.with_context(|| format!("no value in {s}"))?;
                Ok((s["metric"].clone(), v))
            })
            .collect()
    }

    /// The value of a query that yields one sample.
    pub fn value(&self, rig: &Rig, promql: &str) -> anyhow::Result<f64> {
        match self.query(rig, promql)?.as_slice() {
            [(_, v)] => Ok(*v),
            other => bail!("{promql:?}: expected one sample, got {other:?}"),
        }
    }

    /// Waits until `promql` yields one sample equal to `want` (the server
    /// scrapes every 500 ms); fails with the last value seen.
    pub fn wait_value(&self, rig: &Rig, promql: &str, want: f64) -> anyhow::Result<()> {
        let mut last = None;
        let found = wait_for(&format!("{promql} = {want} in prometheus"), Duration::from_secs(20), || {
            last = Some(self.value(rig, promql).map_err(|e| e.to_string()));
            matches!(last, Some(Ok(v)) if v == want).then_some(())
        });
        found.map_err(|e| anyhow::anyhow!("{e}; last: {last:?}"))
    }
}

/// `promtool check metrics` on an exposition: its exit status and what it
/// printed (lint findings).
pub fn promtool_check(exposition: &[u8]) -> anyhow::Result<(bool, String)> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running promtool (package prometheus)")?;
    child.stdin.take().context("promtool stdin")?.write_all(exposition)?;
    let out = child.wait_with_output()?;
    Ok((out.status.success(), output_text(&out)))
}

fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
}

/// The gateway's default metrics address, inside the gateway namespace.
pub const GATEWAY_METRICS: &str = "127.0.0.1:9447";

/// `GET /metrics` from the gateway namespace with curl (its `Accept: */*`
/// unless `accept` is given): the Content-Type and the body.
pub fn scrape(rig: &Rig, accept: Option<&str>) -> anyhow::Result<(String, String)> {
    let url = format!("http://{GATEWAY_METRICS}/metrics");
    let header = accept.map(|a| format!("Accept: {a}"));
    let mut args = vec!["-sS", "-f", "-m", "10", "-w", "\n%{content_type}", &url];
    if let Some(h) = &header {
        args.extend_from_slice(&["-H", h]);
    }
    let out = rig.run(Ns::Gateway, "curl", &args)?;
    if !out.status.success() {
        bail!("scraping {url}: {}", output_text(&out));
    }
    let text = String::from_utf8(out.stdout)?;
    let (body, kind) = text.rsplit_once('\n').context("no content type after the body")?;
    Ok((kind.to_string(), body.to_string()))
}

/// The value of the sample `series` (name and labels exactly as exposed,
/// e.g. `gateway_flows_total{protocol="http"}`) in a classic text exposition.
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}
