//! nginx (Debian's package) as the real HTTP server in the server namespace.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;

use crate::{
    rig::{Ns, Rig},
    util::wait_for,
};

/// A running nginx serving `www`, storing PUT uploads under `/upload/` and
/// discarding request bodies sent to `/sink` (for upload benchmarks).
pub struct Nginx {
    /// Files served at `/`.
    pub www: PathBuf,
    /// Where PUT uploads land (`/upload/NAME`).
    pub uploads: PathBuf,
    /// Access log: `remote_addr method uri status bytes_sent request_length`.
    pub access_log: PathBuf,
    /// Process id.
    pub pid: u32,
}

impl Nginx {
    /// Starts nginx in the server namespace on `ports` (IPv4 and IPv6).
    /// `workers` = 0 runs a single process (tests); more for benchmarks.
    pub fn start(rig: &mut Rig, ports: &[u16], workers: u32) -> anyhow::Result<Nginx> {
        Nginx::start_in(rig, Ns::Server, ports, workers)
    }

    /// Starts nginx in `ns` (the gateway's own namespace: a service of the
    /// firewall host itself).
    pub fn start_in(rig: &mut Rig, ns: Ns, ports: &[u16], workers: u32) -> anyhow::Result<Nginx> {
        Nginx::start_with(rig, ns, ports, workers, "")
    }

    /// Starts nginx in `ns` with more `server` blocks (TLS servers).
    pub fn start_with(rig: &mut Rig, ns: Ns, ports: &[u16], workers: u32, servers: &str) -> anyhow::Result<Nginx> {
        let dir = rig.dir().join(if ns == Ns::Server { "nginx".to_string() } else { format!("nginx-{ns:?}") });
        let www = dir.join("www");
        let uploads = www.join("upload");
        std::fs::create_dir_all(&uploads)?;
        std::fs::create_dir_all(dir.join("tmp"))?;
        let access_log = dir.join("access.log");
        let listen: String =
            ports.iter().map(|p| format!("    listen {p} reuseport;\n    listen [::]:{p} reuseport;\n")).collect();
        let process =
            if workers == 0 { "master_process off;\n".to_string() } else { format!("worker_processes {workers};\n") };
        let conf = format!(
            r#"daemon off;
{process}user root;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  log_format plain '$remote_addr $request_method $request_uri $status $body_bytes_sent $request_length';
  access_log {log} plain;
  client_body_temp_path {dir}/tmp;
  proxy_temp_path {dir}/tmp;
  fastcgi_temp_path {dir}/tmp;
  uwsgi_temp_path {dir}/tmp;
  scgi_temp_path {dir}/tmp;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  client_max_body_size 0;
  types {{ application/octet-stream bin; text/plain txt; text/html html; }}
  default_type application/octet-stream;
  server {{
{listen}    root {www};
    location /upload/ {{ dav_methods PUT; create_full_put_path on; }}
    location = /sink {{ return 204; }}
  }}
{servers}}}
"#,
            dir = dir.display(),
            log = access_log.display(),
            www = www.display(),
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let mut cmd = rig.cmd(ns, "nginx");
        cmd.arg("-c").arg(&conf_path).arg("-e").arg(dir.join("error.log"));
        let pid = rig.spawn(cmd, &dir.join("stdout.log"))?;
        let port = ports.first().copied().unwrap_or(80).to_string();
        wait_for("nginx to listen", Duration::from_secs(10), || {
            let out = rig.run(ns, "ss", &["-Hltn", &format!("sport = :{port}")]).ok()?;
            (!out.stdout.is_empty()).then_some(())
        })
        .with_context(|| std::fs::read_to_string(dir.join("error.log")).unwrap_or_default())?;
        Ok(Nginx { www, uploads, access_log, pid })
    }

    /// The access log's lines.
    pub fn log_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.access_log).unwrap_or_default().lines().map(str::to_owned).collect()
    }

    /// The remote address nginx saw for the last request of `uri`.
    /// nginx writes the log line when the response is done, so wait a little.
    pub fn last_peer(&self, uri: &str) -> anyhow::Result<String> {
        wait_for(&format!("an access log line for {uri}"), Duration::from_secs(5), || {
            self.log_lines().iter().rev().find_map(|l| {
                let mut f = l.split(' ');
                let peer = f.next()?;
                let _method = f.next()?;
                (f.next()? == uri).then(|| peer.to_string())
            })
        })
    }
}
