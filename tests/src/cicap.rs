//! Debian's c-icap with its virus_scan module on a clamd, as the real ICAP
//! server: inside a rig namespace (so tests can use the same port in
//! parallel), or in the caller's own namespace on a chosen loopback port.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::Context as _;

use crate::{
    rig::{Ns, Rig},
    util::wait_for,
};

/// A running c-icap.
pub struct CIcap {
    /// `icap://127.0.0.1:PORT/avscan` (reachable inside its namespace).
    pub url: String,
    /// Its process id.
    pub pid: u32,
}

/// Kills a child process when dropped.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl CIcap {
    /// Starts c-icap in `ns` on 127.0.0.1:`port`, scanning with the clamd at
    /// `clamd_socket`.
    pub fn start(rig: &mut Rig, ns: Ns, port: u16, clamd_socket: &Path) -> anyhow::Result<CIcap> {
        let dir = rig.dir().join(format!("c-icap-{port}"));
        let conf = write_config(&dir, port, clamd_socket)?;
        let mut cmd = rig.cmd(ns, "c-icap");
        cmd.arg("-N").arg("-f").arg(&conf);
        let pid = rig.spawn(cmd, &dir.join("stdout.log")).context("starting c-icap (package c-icap)")?;
        let p = port.to_string();
        wait_for("c-icap to listen", Duration::from_secs(20), || {
            let out = rig.run(ns, "ss", &["-Hltn", &format!("sport = :{p}")]).ok()?;
            (!out.stdout.is_empty()).then_some(())
        })
        .with_context(|| std::fs::read_to_string(dir.join("server.log")).unwrap_or_default())?;
        Ok(CIcap { url: format!("icap://127.0.0.1:{port}/avscan"), pid })
    }

    /// Starts c-icap in this process's own namespace on loopback `port`
    /// (library tests); it is killed when the guard drops.
    pub fn start_here(dir: &Path, port: u16, clamd_socket: &Path) -> anyhow::Result<(CIcap, ChildGuard)> {
        let conf = write_config(dir, port, clamd_socket)?;
        let child = Command::new("c-icap")
            .arg("-N")
            .arg("-f")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting c-icap (package c-icap)")?;
        let guard = ChildGuard(child);
        wait_for("c-icap to listen", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
        })?;
        let pid = guard.0.id();
        Ok((CIcap { url: format!("icap://127.0.0.1:{port}/avscan"), pid }, guard))
    }
}

fn write_config(dir: &Path, port: u16, clamd_socket: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir.join("tmp"))?;
    let conf = dir.join("c-icap.conf");
    std::fs::write(
        &conf,
        format!(
            "PidFile {d}/c-icap.pid\nCommandsSocket {d}/c-icap.ctl\nTimeout 300\nMaxKeepAliveRequests 1000\n\
             KeepAliveTimeout 600\nStartServers 1\nMaxServers 2\nMinSpareThreads 4\nMaxSpareThreads 20\n\
             ThreadsPerChild 16\nMaxRequestsPerChild 0\nPort 127.0.0.1:{port}\nTmpDir {d}/tmp\n\
             MaxMemObject 1048576\nDebugLevel 1\nServerLog {d}/server.log\nAccessLog {d}/access.log\n\
             Module common clamd_mod.so\nclamd_mod.ClamdSocket {sock}\n\
             Service antivirus_module virus_scan.so\n\
             ServiceAlias avscan virus_scan?allow204=on&sizelimit=off&mode=simple\n\
             virus_scan.DefaultEngine clamd\nvirus_scan.MaxObjectSize 2000M\n\
             virus_scan.ScanFileTypes TEXT DATA EXECUTABLE ARCHIVE DOCUMENT GIF JPEG MSOFFICE\n\
             virus_scan.SendPercentData 0\n",
            d = dir.display(),
            sock = clamd_socket.display(),
        ),
    )?;
    Ok(conf)
}
