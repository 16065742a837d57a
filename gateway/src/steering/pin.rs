//! Where steering outlives the process: maps and links pinned on a bpffs.
//!
//! Layout: `<pin_dir>/net-<netns inode>/v<PIN_LAYOUT>/` holds one file per
//! map (by its name) and one per link (`link-tc-<interface>`,
//! `link-xdp-<interface>`, `link-sk_lookup`). The network namespace is part
//! of the path because steering belongs to one; the layout version because
//! a gateway may adopt only maps whose keys and values it understands.
//!
//! A pinned link keeps its program attached after the process that made it
//! exits; a starting gateway adopts the links (replacing their programs in
//! place, atomically) and the maps (so that the running programs and the
//! new process see the same listeners and expectations).

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use gateway_common::PIN_LAYOUT;

/// bpffs's magic number (`statfs` `f_type`).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The pinned-state directory could not be set up or read.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The directory is not on a bpffs and cannot be put on one.
    #[error("{0} is not on a BPF filesystem (mount one: mount -t bpf bpf /sys/fs/bpf)")]
    NotBpffs(PathBuf),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PinError {
    let path = path.to_path_buf();
    move |source| PinError::Io { what, path, source }
}

/// This network namespace's pinned-state directory.
#[derive(Clone, Debug)]
pub struct Pins {
    dir: PathBuf,
}

impl Pins {
    /// The directory under `root` for this network namespace and layout,
    /// created if missing (and the BPF filesystem mounted at
    /// `/sys/fs/bpf` if `root` is below it and nothing is mounted there).
    pub fn open(root: &Path) -> Result<Pins, PinError> {
        ensure_bpffs(root)?;
        let dir = Self::netns_dir(root)?.join(format!("v{PIN_LAYOUT}"));
        fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        Ok(Pins { dir })
    }

    /// `<root>/net-<inode of this network namespace>`.
    pub fn netns_dir(root: &Path) -> Result<PathBuf, PinError> {
        let ns = Path::new("/proc/self/ns/net");
        let ino = fs::metadata(ns).map_err(io("reading", ns))?.ino();
        Ok(root.join(format!("net-{ino}")))
    }

    /// The pin of map `name`.
    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The pin of the link of program `what` (`tc`, `xdp`, `sk_lookup`) on
    /// `interface` (empty for the namespace-wide one).
    pub fn link(&self, what: &str, interface: &str) -> PathBuf {
        if interface.is_empty() {
            self.dir.join(format!("link-{what}"))
        } else {
            self.dir.join(format!("link-{what}-{interface}"))
        }
    }

    /// Interfaces that have a pinned link of program `what`.
    pub fn linked_interfaces(&self, what: &str) -> Result<Vec<String>, PinError> {
        let prefix = format!("link-{what}-");
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io("listing", &self.dir))? {
            let entry = entry.map_err(io("listing", &self.dir))?;
            if let Some(iface) = entry.file_name().to_str().and_then(|n| n.strip_prefix(&prefix)) {
                out.push(iface.to_string());
            }
        }
        Ok(out)
    }
}

/// Removes every pinned object of this network namespace under `root` (all
/// layouts): the links' programs detach as their last pin goes. Returns
/// how many pins were removed.
pub fn remove_all(root: &Path) -> Result<usize, PinError> {
    let dir = Pins::netns_dir(root)?;
    if !dir.exists() {
        return Ok(0);
    }
    let mut removed = 0;
    for layout in fs::read_dir(&dir).map_err(io("listing", &dir))? {
        let layout = layout.map_err(io("listing", &dir))?.path();
        for pin in fs::read_dir(&layout).map_err(io("listing", &layout))? {
            let pin = pin.map_err(io("listing", &layout))?.path();
            fs::remove_file(&pin).map_err(io("removing", &pin))?;
            removed += 1;
        }
        fs::remove_dir(&layout).map_err(io("removing", &layout))?;
    }
    fs::remove_dir(&dir).map_err(io("removing", &dir))?;
    Ok(removed)
}

/// Makes sure `root` is on a bpffs: below `/sys/fs/bpf` one is mounted
/// there if nothing is (as systemd does at boot; this host may not have).
fn ensure_bpffs(root: &Path) -> Result<(), PinError> {
    let mount_point = Path::new("/sys/fs/bpf");
    if on_bpffs(root) || (root.starts_with(mount_point) && on_bpffs(mount_point)) {
        return Ok(());
    }
    if !root.starts_with(mount_point) {
        return Err(PinError::NotBpffs(root.to_path_buf()));
    }
    fs::create_dir_all(mount_point).map_err(io("creating", mount_point))?;
    nix::mount::mount(Some("bpf"), mount_point, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
        .map_err(|e| io("mounting a BPF filesystem on", mount_point)(e.into()))?;
    Ok(())
}

fn on_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}
