//! pyftpdlib (Debian's python3-pyftpdlib) as the real FTP server in the
//! server namespace: user `u`, password `p`, full rights on its root.

use std::{path::Path, process::Output, time::Duration};

use crate::{
    Gateway,
    clamd::Clamd,
    gateway::Settings,
    rig::{Ns, Rig},
    util::{PYTHON, wait_for},
};

/// Starts the server on port 21 (IPv4 and IPv6), serving `root`; returns
/// its process id.
pub fn start(rig: &mut Rig, root: &Path) -> anyhow::Result<u32> {
    start_with(rig, root, "")
}

/// Like [`start`], with Python lines run before serving, with the handler
/// class as `h` (e.g. `h.masquerade_address = '198.51.100.7'` for a server
/// behind NAT).
pub fn start_with(rig: &mut Rig, root: &Path, setup: &str) -> anyhow::Result<u32> {
    std::fs::create_dir_all(root)?;
    let server = format!(
        "from pyftpdlib.authorizers import DummyAuthorizer\nfrom pyftpdlib.handlers import FTPHandler\n\
         from pyftpdlib.servers import FTPServer\nimport logging\nlogging.basicConfig(level=logging.WARNING)\n\
         a=DummyAuthorizer(); a.add_user('u','p','{}',perm='elradfmwMT')\n\
         h=FTPHandler; h.authorizer=a; h.passive_ports=range(30000,30200)\n{setup}\n\
         FTPServer(('::',21),h).serve_forever()\n",
        root.display()
    );
    let mut cmd = rig.cmd(Ns::Server, PYTHON);
    cmd.args(["-c", &server]);
    let log = rig.dir().join("ftpd.log");
    let pid = rig.spawn(cmd, &log)?;
    wait_for("pyftpdlib to listen", Duration::from_secs(10), || {
        let out = rig.run(Ns::Server, "ss", &["-Hltn", "sport = :21"]).ok()?;
        (!out.stdout.is_empty()).then_some(())
    })?;
    Ok(pid)
}

/// A rig with pyftpdlib, clamd and the gateway.
pub struct FtpEnv {
    /// The rig.
    pub rig: Rig,
    /// The server's root.
    pub root: std::path::PathBuf,
    /// The server's process id.
    pub ftpd: u32,
    /// The scanner.
    pub clamd: Clamd,
    /// The gateway.
    pub gw: Gateway,
}

impl FtpEnv {
    /// A rig named after `tag`; `ftp` are extra `[ftp]` lines, `server`
    /// Python lines for the server (see [`start_with`]).
    pub fn start(tag: &str, ftp: &str, server: &str) -> anyhow::Result<FtpEnv> {
        let mut rig = Rig::new(tag)?;
        let root = rig.dir().join("ftproot");
        let ftpd = start_with(&mut rig, &root, server)?;
        let clamd = Clamd::start(rig.dir().join("clamd"), "300M")?;
        let scan = format!("clamd = \"{}\"", clamd.addr());
        let gw = Gateway::start(&mut rig, &Settings { scan: &scan, ftp, ..Settings::default() })?;
        Ok(FtpEnv { rig, root, ftpd, clamd, gw })
    }

    /// Runs an ftplib script in the client namespace with `f` logged in.
    pub fn ftplib(&self, host: &str, body: &str) -> anyhow::Result<Output> {
        let script =
            format!("import ftplib,sys\nf=ftplib.FTP()\nf.connect('{host}',21,timeout=30)\nf.login('u','p')\n{body}\n");
        self.rig.run(Ns::Client, PYTHON, &["-c", &script])
    }

    /// Waits until the gateway holds no TCP connection, spool file or
    /// expectation entry: what every ended session must leave.
    pub fn nothing_left(&self) -> anyhow::Result<()> {
        wait_for("the gateway to let go of every session", Duration::from_secs(30), || {
            let tcp = self.gw.tcp_connections().ok()?;
            (tcp.is_empty() && self.gw.open_spool_files() == 0 && self.gw.counter("/expectations").ok()? == 0)
                .then_some(())
        })
        .map_err(|e| {
            anyhow::anyhow!("{e}: {:?}, spool files {}", self.gw.tcp_connections(), self.gw.open_spool_files())
        })
    }

    /// curl for `url` into `dest` in the rig's directory, passive or active.
    pub fn curl(&self, url: &str, dest: &str, active: bool) -> anyhow::Result<Output> {
        let d = self.rig.dir().join(dest).to_string_lossy().to_string();
        let mut args = vec!["-sS", "-m", "120", "-o", &d];
        if active {
            args.extend_from_slice(&["-P", "-"]);
        }
        args.push(url);
        self.rig.curl(&args)
    }
}
