//! Debian's clamd, started privately with the project's test signatures
//! (`tests/data/clamav`: an `.ndb` body pattern for the EICAR string and an
//! `.hdb` hash of the exact EICAR file). freshclam cannot download here, and
//! tests must not depend on the real signature set anyway.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::Context as _;

use crate::util::{wait_for, workspace_root};

/// The EICAR test file (68 bytes), built at run time so that no file in the
/// repository trips a scanner on the developer's machine.
pub fn eicar() -> Vec<u8> {
    let mut v = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$".to_vec();
    v.extend_from_slice(b"EICAR-STANDARD-");
    v.extend_from_slice(b"ANTIVIRUS-TEST-FILE!$H+H*");
    v
}

/// Writes a zip archive (made by Python's zipfile, deflated) holding the
/// EICAR file as `member` to `dest`.
pub fn eicar_zip(dest: &Path, member: &str) -> anyhow::Result<()> {
    let hex: String = eicar().iter().map(|b| format!("{b:02x}")).collect();
    let py = format!(
        "import zipfile\nz=zipfile.ZipFile({:?},'w',zipfile.ZIP_DEFLATED)\nz.writestr({member:?},bytes.fromhex('{hex}'))\nz.close()",
        dest.display().to_string()
    );
    let out = Command::new(crate::util::PYTHON).args(["-c", &py]).output().context("running python3 for the zip")?;
    anyhow::ensure!(out.status.success(), "making {}: {}", dest.display(), String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// A running clamd on a Unix socket in its own directory.
pub struct Clamd {
    /// The socket.
    pub socket: PathBuf,
    /// Its directory (config, db, log).
    pub dir: PathBuf,
    /// Its TemporaryDirectory, on tmpfs (removed on drop).
    tmp: PathBuf,
    child: Option<Child>,
}

/// Where clamd's TemporaryDirectory goes for `dir`. clamd makes a directory
/// and a file per scan there and removes them; on ext4 that inode churn cost
/// more than half of clamd's CPU for small files (perf: `ext4_mkdir`,
/// `recently_deleted`), on tmpfs almost nothing. Deployments should do the
/// same (README).
fn tmpfs_dir(dir: &Path) -> PathBuf {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        return dir.join("tmp");
    }
    // One per instance: a clamd started again in the same place must not
    // lose its directory when the old one's guard removes its own.
    static SERIAL: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name: String = dir.to_string_lossy().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    shm.join(format!("gateway-clamd{name}-{n}"))
}

impl Clamd {
    /// Starts clamd in `dir` with `stream_max` as StreamMaxLength, and as
    /// MaxFileSize and MaxScanSize (e.g. "300M"): past those clamd would
    /// stop scanning and answer OK.
    pub fn start(dir: PathBuf, stream_max: &str) -> anyhow::Result<Clamd> {
        Clamd::start_with(dir, stream_max, "")
    }

    /// Like [`Clamd::start`], with more clamd.conf lines.
    pub fn start_with(dir: PathBuf, stream_max: &str, extra_conf: &str) -> anyhow::Result<Clamd> {
        let db = dir.join("db");
        std::fs::create_dir_all(&db)?;
        let tmp = tmpfs_dir(&dir);
        std::fs::create_dir_all(&tmp)?;
        // From here on, a failure drops this and removes the tmpfs directory.
        let mut clamd = Clamd { socket: dir.join("clamd.sock"), dir, tmp, child: None };
        let (dir, tmp, socket) = (&clamd.dir, &clamd.tmp, &clamd.socket);
        for f in ["gateway-test.ndb", "gateway-test.hdb"] {
            std::fs::copy(workspace_root().join("tests/data/clamav").join(f), db.join(f))?;
        }
        let conf = dir.join("clamd.conf");
        std::fs::write(
            &conf,
            format!(
                "LocalSocket {sock}\nForeground yes\nDatabaseDirectory {db}\nTemporaryDirectory {tmp}\n\
                 LogFile {dir}/clamd.log\nPidFile {dir}/clamd.pid\nStreamMaxLength {m}\nMaxFileSize {m}\n\
                 MaxScanSize {m}\nDisableCache yes\nMaxThreads 4\n{extra_conf}\n",
                sock = socket.display(),
                db = db.display(),
                tmp = tmp.display(),
                dir = dir.display(),
                m = stream_max
            ),
        )?;
        let child = Command::new("clamd")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr.log"))?)
            .spawn()
            .context("starting clamd (package clamav-daemon)")?;
        clamd.child = Some(child);
        wait_for("clamd to listen", Duration::from_secs(60), || {
            std::os::unix::net::UnixStream::connect(&clamd.socket).ok().map(|_| ())
        })
        .with_context(|| std::fs::read_to_string(clamd.dir.join("clamd.log")).unwrap_or_default())?;
        Ok(clamd)
    }

    /// The clamd process id, if running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `unix:SOCKET`, for configs and `--clamd`.
    pub fn addr(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    /// Stops clamd (to test a dead scanner).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            // Only a socket this clamd made: a clamd started in the same
            // place since keeps its own.
            let _ = std::fs::remove_file(&self.socket);
        }
    }
}

impl Drop for Clamd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}
