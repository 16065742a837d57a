//! Holding a body until its verdict, with bounded memory and disk.
//!
//! A body stays in memory up to `spool_memory`, and only while the memory
//! all spools hold together stays under a global budget; past either, it
//! goes to an unnamed temporary file (O_TMPFILE) in `spool_dir`, which the
//! kernel removes when the last descriptor closes: on every path, including
//! a panic or the process being killed. What all spools hold on disk
//! together is bounded by `spool_max_total`; past it, a body cannot be held
//! (a spool error: the body is refused, never passed unheld).
//! [`send::send_held`] delivers a held body.

pub mod send;

pub use send::send_held;

use std::{
    fs::File,
    io::Write,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

/// Why a body could not be held.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Creating or writing the temporary file failed (disk full, no such
    /// directory, no permission).
    #[error("cannot hold the body in {dir}: {source}")]
    Io {
        /// The spool directory.
        dir: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// All spools together hold `spool_max_total` on disk.
    #[error("the spool quota ({limit} bytes on disk, scan.spool_max_total) is used up")]
    Quota {
        /// The quota.
        limit: u64,
    },
}

/// Bytes shared by all spools (memory, or disk).
#[derive(Debug)]
pub struct Budget {
    limit: u64,
    used: AtomicU64,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Arc<Budget> {
        Arc::new(Budget { limit, used: AtomicU64::new(0) })
    }

    /// Bytes taken now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The limit.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    fn try_take(&self, n: u64) -> bool {
        self.used.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |u| (u + n <= self.limit).then_some(u + n)).is_ok()
    }

    fn give_back(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// Where and how much to spool.
#[derive(Clone, Debug)]
pub struct SpoolConfig {
    /// Directory for temporary files.
    pub dir: PathBuf,
    /// Bytes one body may keep in memory.
    pub memory: u64,
    /// The memory shared by all bodies.
    pub budget: Arc<Budget>,
    /// The disk space shared by all bodies.
    pub disk: Arc<Budget>,
}

/// One body being held.
#[derive(Debug)]
pub struct Spool {
    config: SpoolConfig,
    memory: Vec<u8>,
    file: Option<File>,
    len: u64,
    /// Bytes counted against the disk quota.
    on_disk: u64,
}

impl Spool {
    /// An empty spool.
    pub fn new(config: SpoolConfig) -> Spool {
        Spool { config, memory: Vec::new(), file: None, len: 0, on_disk: 0 }
    }

    /// Bytes held.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the body went to disk.
    pub fn on_disk(&self) -> bool {
        self.file.is_some()
    }

    /// Appends `data`.
    pub fn write(&mut self, data: &[u8]) -> Result<(), SpoolError> {
        if self.file.is_none() {
            let n = data.len() as u64;
            if self.memory.len() as u64 + n <= self.config.memory && self.config.budget.try_take(n) {
                self.memory.extend_from_slice(data);
                self.len += n;
                return Ok(());
            }
            self.spill()?;
        }
        self.take_disk(data.len() as u64)?;
        let result = match self.file.as_mut() {
            Some(file) => file.write_all(data),
            None => Err(std::io::Error::other("no spool file after spilling")),
        };
        result.map_err(|source| self.err(source))?;
        self.len += data.len() as u64;
        Ok(())
    }

    fn spill(&mut self) -> Result<(), SpoolError> {
        self.take_disk(self.memory.len() as u64)?;
        let mut file = tempfile::tempfile_in(&self.config.dir).map_err(|source| self.err(source))?;
        file.write_all(&self.memory).map_err(|source| self.err(source))?;
        self.config.budget.give_back(self.memory.len() as u64);
        self.memory = Vec::new();
        self.file = Some(file);
        Ok(())
    }

    /// Counts `n` more bytes on disk against the shared quota.
    fn take_disk(&mut self, n: u64) -> Result<(), SpoolError> {
        if !self.config.disk.try_take(n) {
            return Err(SpoolError::Quota { limit: self.config.disk.limit() });
        }
        self.on_disk += n;
        Ok(())
    }

    fn err(&self, source: std::io::Error) -> SpoolError {
        SpoolError::Io { dir: self.config.dir.clone(), source }
    }

    /// The body, when it is held in memory.
    pub fn memory(&self) -> Option<&[u8]> {
        self.file.is_none().then_some(self.memory.as_slice())
    }

    /// The file holding the body, when it went to disk.
    pub fn file(&self) -> Option<&File> {
        self.file.as_ref()
    }

    /// Copies held bytes from `offset` into `buf`; returns how many.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt as _;
        match &self.file {
            Some(f) => f.read_at(buf, offset),
            None => {
                let rest = self.memory.get(offset as usize..).unwrap_or_default();
                let n = rest.len().min(buf.len());
                buf[..n].copy_from_slice(&rest[..n]);
                Ok(n)
            }
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.config.budget.give_back(self.memory.len() as u64);
        self.config.disk.give_back(self.on_disk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(memory: u64, budget: u64) -> SpoolConfig {
        SpoolConfig { dir: std::env::temp_dir(), memory, budget: Budget::new(budget), disk: Budget::new(1 << 30) }
    }

    fn read_all(s: &mut Spool) -> Vec<u8> {
        let mut v = vec![0; s.len() as usize];
        assert_eq!(s.read_at(0, &mut v).unwrap(), v.len());
        v
    }

    #[test]
    fn small_body_stays_in_memory() {
        let mut s = Spool::new(config(100, 1000));
        s.write(b"hello ").unwrap();
        s.write(b"world").unwrap();
        assert!(!s.on_disk());
        assert_eq!(read_all(&mut s), b"hello world");
    }

    #[test]
    fn large_body_spills_and_reads_back_identical() {
        let c = config(10, 1000);
        let budget = c.budget.clone();
        let mut s = Spool::new(c);
        s.write(b"0123456789").unwrap();
        assert_eq!(budget.used(), 10);
        s.write(b"abc").unwrap();
        assert!(s.on_disk());
        assert_eq!(budget.used(), 0, "memory given back after spilling");
        assert_eq!(read_all(&mut s), b"0123456789abc");
    }

    #[test]
    fn global_budget_forces_spill() {
        let c = config(100, 15);
        let mut a = Spool::new(c.clone());
        let mut b = Spool::new(c.clone());
        a.write(&[1; 10]).unwrap();
        b.write(&[2; 10]).unwrap();
        assert!(!a.on_disk());
        assert!(b.on_disk(), "second body exceeded the shared budget");
        drop(a);
        assert_eq!(c.budget.used(), 0);
    }

    #[test]
    fn unwritable_dir_is_an_error() {
        let c = SpoolConfig {
            dir: "/nonexistent/spool".into(),
            memory: 0,
            budget: Budget::new(0),
            disk: Budget::new(1 << 30),
        };
        let mut s = Spool::new(c);
        let e = s.write(b"x").unwrap_err().to_string();
        assert!(e.contains("/nonexistent/spool"), "{e}");
    }

    #[test]
    fn the_disk_quota_is_shared_and_given_back() {
        let c = SpoolConfig { disk: Budget::new(25), ..config(0, 0) };
        let mut a = Spool::new(c.clone());
        a.write(&[1; 20]).unwrap();
        let mut b = Spool::new(c.clone());
        let e = b.write(&[2; 10]).unwrap_err();
        assert!(matches!(e, SpoolError::Quota { limit: 25 }), "{e}");
        drop(a);
        assert_eq!(c.disk.used(), 0);
        b.write(&[2; 10]).unwrap();
        assert_eq!(c.disk.used(), 10);
    }
}
