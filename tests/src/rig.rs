//! Namespaces, veths, addresses and routes.
//!
//! ```text
//!  client ns                gateway ns                   server ns
//!  eth0 198.18.0.2/24 ── cli0 198.18.0.1/24
//!       fd00:18::2/64        fd00:18::1/64
//!                            srv0 198.19.0.1/24 ── eth0 198.19.0.2/24
//!                                 fd00:19::1/64         fd00:19::2/64
//! ```
//! The client also holds 198.18.0.3 … 198.18.0.9 for tests that need
//! several client addresses (bypass, block).

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::Context as _;

use crate::util::run_ok;

/// Client address.
pub const CLIENT_V4: &str = "198.18.0.2";
/// Extra client addresses, `198.18.0.{3..=9}`.
pub const CLIENT_V4_EXTRA: std::ops::RangeInclusive<u8> = 3..=9;
/// Gateway address on the client side.
pub const GW_CLIENT_V4: &str = "198.18.0.1";
/// Gateway address on the server side (the source of upstream connections).
pub const GW_SERVER_V4: &str = "198.19.0.1";
/// Server address.
pub const SERVER_V4: &str = "198.19.0.2";
/// Client IPv6 address.
pub const CLIENT_V6: &str = "fd00:18::2";
/// Gateway IPv6 address on the server side.
pub const GW_SERVER_V6: &str = "fd00:19::1";
/// Server IPv6 address.
pub const SERVER_V6: &str = "fd00:19::2";
/// The gateway's client-facing interface.
pub const CLIENT_IFACE: &str = "cli0";

/// Which namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ns {
    /// Where clients run.
    Client,
    /// The firewall host, where the gateway runs.
    Gateway,
    /// Where servers run.
    Server,
}

/// A three-namespace rig; dropping it removes everything.
pub struct Rig {
    names: [String; 3],
    /// Namespaces a test added ([`Rig::add_ns`]), removed with the rig.
    extra: Vec<String>,
    dir: PathBuf,
    children: Vec<Child>,
    /// A process holding the gateway namespace's mounts (with a bpffs):
    /// gateways started through [`Rig::gateway_cmd`] share it, as the
    /// processes of a real host share /sys/fs/bpf.
    mounts: Option<u32>,
}

static SERIAL: AtomicU32 = AtomicU32::new(0);

impl Rig {
    /// Builds a rig whose names start with `tag` (unique per test).
    pub fn new(tag: &str) -> anyhow::Result<Rig> {
        let id = format!("gw{}-{}-{}", tag, std::process::id(), SERIAL.fetch_add(1, Ordering::Relaxed));
        let names = [format!("{id}-c"), format!("{id}-g"), format!("{id}-s")];
        let dir = std::env::temp_dir().join(&id);
        // Construct first so that Drop cleans up whatever part was made.
        let rig = Rig { names, extra: Vec::new(), dir, children: Vec::new(), mounts: None };
        std::fs::create_dir_all(&rig.dir)?;
        rig.build().with_context(|| format!("building rig {id}"))?;
        Ok(rig)
    }

    fn build(&self) -> anyhow::Result<()> {
        for n in &self.names {
            run_ok(Command::new("ip").args(["netns", "add", n]))?;
        }
        let [c, g, s] = [Ns::Client, Ns::Gateway, Ns::Server];
        for ns in [c, g, s] {
            self.ip(ns, "link set lo up")?;
        }
        // Create the veths directly in their namespaces: no name is ever
        // taken in the root namespace, so rigs can be built in parallel.
        self.ip(g, &format!("link add cli0 type veth peer name eth0 netns {}", self.name(c)))?;
        self.ip(g, &format!("link add srv0 type veth peer name eth0 netns {}", self.name(s)))?;

        self.ip(c, "addr add 198.18.0.2/24 dev eth0")?;
        for i in CLIENT_V4_EXTRA {
            self.ip(c, &format!("addr add 198.18.0.{i}/24 dev eth0"))?;
        }
        self.ip(c, "-6 addr add fd00:18::2/64 dev eth0 nodad")?;
        self.ip(g, "addr add 198.18.0.1/24 dev cli0")?;
        self.ip(g, "-6 addr add fd00:18::1/64 dev cli0 nodad")?;
        self.ip(g, "addr add 198.19.0.1/24 dev srv0")?;
        self.ip(g, "-6 addr add fd00:19::1/64 dev srv0 nodad")?;
        self.ip(s, "addr add 198.19.0.2/24 dev eth0")?;
        self.ip(s, "-6 addr add fd00:19::2/64 dev eth0 nodad")?;
        for (ns, dev) in [(c, "eth0"), (g, "cli0"), (g, "srv0"), (s, "eth0")] {
            self.ip(ns, &format!("link set {dev} up"))?;
        }
        self.ip(c, "route add default via 198.18.0.1")?;
        self.ip(c, "-6 route add default via fd00:18::1")?;
        self.ip(s, "route add default via 198.19.0.1")?;
        self.ip(s, "-6 route add default via fd00:19::1")?;
        run_ok(self.cmd(g, "sysctl").args(["-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]))?;
        Ok(())
    }

    /// Adds a namespace of the test's own (named after the rig), removed
    /// with the rig; returns its name.
    pub fn add_ns(&mut self, suffix: &str) -> anyhow::Result<String> {
        let name = format!("{}-{suffix}", self.names[0].trim_end_matches("-c"));
        run_ok(Command::new("ip").args(["netns", "add", &name]))?;
        self.extra.push(name.clone());
        run_ok(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]))?;
        Ok(name)
    }

    /// The namespace's name.
    pub fn name(&self, ns: Ns) -> &str {
        &self.names[ns as usize]
    }

    /// The rig's scratch directory (removed on drop).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `ip -n NS <args>`.
    pub fn ip(&self, ns: Ns, args: &str) -> anyhow::Result<Output> {
        run_ok(Command::new("ip").arg("-n").arg(self.name(ns)).args(args.split_whitespace()))
    }

    /// A command that runs `program` inside `ns`.
    pub fn cmd(&self, ns: Ns, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.name(ns)]).arg(program);
        cmd
    }

    /// `program` in the gateway namespace and in the rig's shared mount
    /// namespace (made on first use, with a BPF filesystem on /sys/fs/bpf):
    /// every gateway of the rig sees the state its predecessors pinned.
    /// (`ip netns exec` alone gives each process mounts of its own.)
    pub fn gateway_cmd(&mut self, program: impl AsRef<std::ffi::OsStr>) -> anyhow::Result<Command> {
        let holder = match self.mounts {
            Some(pid) => pid,
            None => {
                let mut cmd = self.cmd(Ns::Gateway, "sh");
                cmd.args(["-c", "mount -t bpf bpf /sys/fs/bpf && exec sleep infinity"]);
                let pid = self.spawn(cmd, &self.dir.join("mounts.log"))?;
                crate::util::wait_for("the rig's bpffs", std::time::Duration::from_secs(5), || {
                    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
                    mounts.lines().any(|l| l.contains(" /sys/fs/bpf ") && l.contains(" - bpf ")).then_some(())
                })?;
                self.mounts = Some(pid);
                pid
            }
        };
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--target={holder}")).args(["--mount", "--net", "--"]).arg(program);
        Ok(cmd)
    }

    /// Runs `program args…` in `ns` and returns its output (any status).
    pub fn run(&self, ns: Ns, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        self.cmd(ns, program).args(args).output().with_context(|| format!("running {program} in {ns:?}"))
    }

    /// Starts a long-running process in `ns`; it is killed when the rig drops.
    /// Returns its pid.
    pub fn spawn(&mut self, mut cmd: Command, log: &Path) -> anyhow::Result<u32> {
        let out = std::fs::File::create(log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("spawning {cmd:?}"))?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// Reaps a spawned child that was stopped by other means.
    pub fn wait(&mut self, pid: u32) -> Option<std::process::ExitStatus> {
        let i = self.children.iter().position(|c| c.id() == pid)?;
        let mut child = self.children.remove(i);
        child.wait().ok()
    }

    /// curl in the client namespace; returns curl's output.
    pub fn curl(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.run(Ns::Client, "curl", args)
    }

    /// Starts counting, in `ns`, every packet that arrives from the client
    /// subnets (IPv4 198.18.0.0/16, IPv6 fd00:18::/64), before
    /// defragmentation: in the server namespace, anything counted got
    /// past the gateway unsteered.
    pub fn watch_clients(&self, ns: Ns) -> anyhow::Result<()> {
        let rules = "table inet watch {\n chain pre {\n  type filter hook prerouting priority -500;\n  \
                     ip saddr 198.18.0.0/16 counter\n  ip6 saddr fd00:18::/64 counter\n }\n}\n";
        let path = self.dir.join(format!("watch-{ns:?}.nft"));
        std::fs::write(&path, rules)?;
        run_ok(self.cmd(ns, "nft").arg("-f").arg(&path)).map(|_| ())
    }

    /// Packets counted by [`Rig::watch_clients`] in `ns` so far.
    pub fn packets_from_clients(&self, ns: Ns) -> anyhow::Result<u64> {
        let out = run_ok(self.cmd(ns, "nft").args(["list", "table", "inet", "watch"]))?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .split("packets ")
            .skip(1)
            .filter_map(|p| p.split_whitespace().next()?.parse::<u64>().ok())
            .sum())
    }

    /// The MAC address of the gateway's client-facing interface.
    pub fn gateway_mac(&self) -> anyhow::Result<String> {
        let out = run_ok(self.cmd(Ns::Gateway, "cat").arg(format!("/sys/class/net/{CLIENT_IFACE}/address")))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// A URL on the server.
    pub fn url(&self, ip: IpAddr, port: u16, path: &str) -> String {
        match ip {
            IpAddr::V4(a) => format!("http://{a}:{port}{path}"),
            IpAddr::V6(a) => format!("http://[{a}]:{port}{path}"),
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // Kill everything inside our namespaces (also what our children
        // started), then delete them; the veths go with them.
        for n in self.names.iter().chain(&self.extra) {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", n]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        // SAFETY: plain kill(2).
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in self.names.iter().chain(&self.extra) {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
        if std::env::var_os("RIG_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
