//! Holding a body until its verdict, with bounded memory.
//!
//! A body stays in memory up to `spool_memory`, and only while the memory
//! all spools hold together stays under a global budget; past either, it
//! goes to an unnamed temporary file (O_TMPFILE) in `spool_dir`, which the
//! kernel removes when the last descriptor closes: on every path, including
//! a panic or the process being killed.

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
#[error("cannot hold the body in {dir}: {source}")]
pub struct SpoolError {
    dir: PathBuf,
    #[source]
    source: std::io::Error,
}

/// Memory shared by all spools.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: u64,
    used: AtomicU64,
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget { limit, used: AtomicU64::new(0) })
    }

    /// Bytes held in memory by all spools now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
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
    /// The budget shared by all bodies.
    pub budget: Arc<MemoryBudget>,
}

/// One body being held.
#[derive(Debug)]
pub struct Spool {
    config: SpoolConfig,
    memory: Vec<u8>,
    file: Option<File>,
    len: u64,
}

impl Spool {
    /// An empty spool.
    pub fn new(config: SpoolConfig) -> Spool {
        Spool { config, memory: Vec::new(), file: None, len: 0 }
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
        let dir = &self.config.dir;
        let Some(file) = self.file.as_mut() else {
            return Err(SpoolError { dir: dir.clone(), source: std::io::Error::other("no spool file after spilling") });
        };
        file.write_all(data).map_err(|source| SpoolError { dir: dir.clone(), source })?;
        self.len += data.len() as u64;
        Ok(())
    }

    fn spill(&mut self) -> Result<(), SpoolError> {
        let mut file = tempfile::tempfile_in(&self.config.dir).map_err(|source| self.err(source))?;
        file.write_all(&self.memory).map_err(|source| self.err(source))?;
        self.config.budget.give_back(self.memory.len() as u64);
        self.memory = Vec::new();
        self.file = Some(file);
        Ok(())
    }

    fn err(&self, source: std::io::Error) -> SpoolError {
        SpoolError { dir: self.config.dir.clone(), source }
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(memory: u64, budget: u64) -> SpoolConfig {
        SpoolConfig { dir: std::env::temp_dir(), memory, budget: MemoryBudget::new(budget) }
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
        let c = SpoolConfig { dir: "/nonexistent/spool".into(), memory: 0, budget: MemoryBudget::new(0) };
        let mut s = Spool::new(c);
        let e = s.write(b"x").unwrap_err().to_string();
        assert!(e.contains("/nonexistent/spool"), "{e}");
    }
}
