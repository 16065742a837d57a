//! A point-to-point link between two namespaces over tun devices (bare IP,
//! no Ethernet header), for steering on interfaces that are not Ethernet:
//! a tun device in each namespace, joined by a thread that copies packets
//! between them. The devices go away when the link is dropped.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use anyhow::{Context as _, bail};

/// Two tun devices and the thread between them.
pub struct TunLink {
    stop: Arc<AtomicBool>,
    pump: Option<JoinHandle<()>>,
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

/// Opens tun device `name` inside network namespace `ns` (a thread of its
/// own enters the namespace, so this process's other threads stay put).
fn open_in(ns: &str, name: &str) -> anyhow::Result<File> {
    let ns_path = format!("/var/run/netns/{ns}");
    let name = name.to_string();
    let handle = std::thread::spawn(move || -> anyhow::Result<File> {
        let netns = File::open(&ns_path).with_context(|| format!("opening {ns_path}"))?;
        // SAFETY: plain syscalls on descriptors we own; setns affects only this thread.
        unsafe {
            if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                bail!("setns into {ns_path}: {}", std::io::Error::last_os_error());
            }
            let fd = libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK);
            if fd < 0 {
                bail!("opening /dev/net/tun: {}", std::io::Error::last_os_error());
            }
            let tun = File::from(OwnedFd::from_raw_fd(fd));
            let mut ifr = [0u8; 40];
            ifr[..name.len().min(15)].copy_from_slice(&name.as_bytes()[..name.len().min(15)]);
            ifr[16..18].copy_from_slice(&(IFF_TUN | IFF_NO_PI).to_ne_bytes());
            if libc::ioctl(tun.as_raw_fd(), TUNSETIFF, ifr.as_mut_ptr()) != 0 {
                bail!("TUNSETIFF {name}: {}", std::io::Error::last_os_error());
            }
            Ok(tun)
        }
    });
    handle.join().map_err(|_| anyhow::anyhow!("the tun thread panicked"))?
}

impl TunLink {
    /// Device `a_name` in namespace `a` joined to `b_name` in `b`.
    pub fn new(a: &str, a_name: &str, b: &str, b_name: &str) -> anyhow::Result<TunLink> {
        let mut ta = open_in(a, a_name)?;
        let mut tb = open_in(b, b_name)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let pump = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !flag.load(Ordering::Relaxed) {
                let mut fds = [
                    libc::pollfd { fd: ta.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                    libc::pollfd { fd: tb.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                ];
                // SAFETY: two valid pollfd entries.
                if unsafe { libc::poll(fds.as_mut_ptr(), 2, 100) } <= 0 {
                    continue;
                }
                if fds[0].revents & libc::POLLIN != 0
                    && let Ok(n) = ta.read(&mut buf)
                {
                    let _ = tb.write(&buf[..n]);
                }
                if fds[1].revents & libc::POLLIN != 0
                    && let Ok(n) = tb.read(&mut buf)
                {
                    let _ = ta.write(&buf[..n]);
                }
            }
        });
        Ok(TunLink { stop, pump: Some(pump) })
    }
}

impl Drop for TunLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(p) = self.pump.take() {
            let _ = p.join();
        }
    }
}
