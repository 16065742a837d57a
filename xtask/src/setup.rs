//! `cargo xtask setup`: installs what a fresh machine of this kind lacks.
//! Each step checks first, so running it again costs a few seconds.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// Debian packages the demo, tests and benchmarks use.
const APT_PACKAGES: &[&str] = &[
    "iproute2",                 // ip, ss: the rig
    "iputils-ping",             // ICMP forwarding test
    "curl",                     // the HTTP client
    "nginx-light",              // the real HTTP server
    "wrk",                      // request-rate benchmarks
    "bpftool",                  // inspecting programs and maps when debugging
    "util-linux",               // setpriv: the unprivileged-start test
    "python3",                  // the UDP echo peer, archives and fault injectors in tests
    "python3-pyftpdlib",        // the real FTP server
    "python3-brotli",           // brotli-encoded test responses
    "clamav-daemon",            // clamd: the real scanner (with the project's test signatures)
    "c-icap",                   // the real ICAP server …
    "libc-icap-mod-virus-scan", // … with its virus_scan module on clamd
    "nftables",                 // the Squid comparison's interception; counters in steering tests
    "python3-scapy",            // crafted frames (fragments, VLAN tags, IPv6 extension headers)
    "openssl",                  // certificates for the API server's HTTPS test
    "prometheus",               // the real scraper of /metrics, and promtool
    "systemd",                  // systemd-analyze verify (nothing is started: no systemd runs here)
    "debootstrap",              // the Debian 12 tree the package is installed into
    "chromium",                 // the real browser of the compatibility and TLS tests
    "libnss3-tools",            // certutil: the gateway's CA in Chromium's NSS database (TLS tests)
    "python3-cryptography",     // the TLS tests' upstream CA and server certificates (one expired)
    "openssl",                  // s_client in the TLS tests
    "gzip",                     // a gzip-encoded EICAR for the TLS tests
];

/// Runs every setup step.
pub fn run() -> anyhow::Result<()> {
    apt()?;
    npm_ci("tests/compat")?;
    npm_ci("tests/api-client")?; // Cloudmersive's published client, for the API server's tests
    rust_src()?;
    bpf_linker()?;
    cargo_deb()?;
    tests::debian::bookworm_tree()?;
    squid_chroot()?; // Squid 6.13 for the ICAP server's tests (and bench --squid)
    Ok(())
}

/// The Node packages a test folder pins in its package-lock.json
/// (playwright-core drives Debian's chromium), installed once.
fn npm_ci(folder: &str) -> anyhow::Result<()> {
    let dir = tests::util::workspace_root().join(folder);
    if dir.join("node_modules/.package-lock.json").exists() {
        return Ok(());
    }
    if !have("npm") {
        install(&["nodejs", "npm"])?;
    }
    eprintln!("xtask setup: npm ci in {folder}");
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .status()
        .context("running npm ci")?;
    if !status.success() {
        bail!("npm ci in {folder} failed ({status})");
    }
    Ok(())
}

/// cargo-deb, for `cargo xtask deb` and the package test.
fn cargo_deb() -> anyhow::Result<()> {
    if have("cargo-deb") {
        return Ok(());
    }
    eprintln!("xtask setup: installing cargo-deb (a minute or two, once)");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["install", "cargo-deb", "--locked"])
        .status()
        .context("running cargo install cargo-deb")?;
    if !status.success() {
        bail!("installing cargo-deb failed ({status})");
    }
    Ok(())
}

/// Debian 13's Squid in a debootstrapped folder, for `bench http --squid`
/// (Debian 12's Squid stalls ICAP bodies over ~64 KiB: Squid bug 5352).
pub fn squid_chroot() -> anyhow::Result<()> {
    let root = Path::new(crate::bench_http::TRIXIE);
    if root.join("usr/sbin/squid").symlink_metadata().is_ok() {
        return Ok(());
    }
    install(&["debootstrap"])?;
    if !root.join("usr/bin/apt-get").exists() {
        eprintln!("xtask setup: debootstrapping Debian 13 into {} (a few minutes, once)", root.display());
        std::fs::create_dir_all(root)?;
        let status = Command::new("debootstrap")
            .args(["--variant=minbase", "trixie"])
            .arg(root)
            .arg("http://deb.debian.org/debian")
            .status()
            .context("running debootstrap")?;
        if !status.success() {
            bail!("debootstrap of Debian 13 failed ({status}); see {}/debootstrap/debootstrap.log", root.display());
        }
    }
    chroot_install(root, "squid")
}

/// `apt-get install PACKAGE` inside the debootstrapped folder `root`.
pub fn chroot_install(root: &Path, package: &str) -> anyhow::Result<()> {
    let status = Command::new("chroot")
        .arg(root)
        .args(["apt-get", "install", "-y", "-q", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get in the Debian 13 folder")?;
    if !status.success() {
        bail!("installing {package} in {} failed ({status})", root.display());
    }
    Ok(())
}

fn have(program: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {program} >/dev/null")]).status().is_ok_and(|s| s.success())
}

fn apt() -> anyhow::Result<()> {
    install(APT_PACKAGES)
}

/// Installs whichever of `packages` are missing.
fn install(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask setup: installing {}", missing.join(" "));
    let update = Command::new("apt-get").args(["update", "-q"]).status().context("running apt-get update")?;
    if !update.success() {
        bail!("apt-get update failed ({update}); check the network and that you are root");
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get install")?;
    if !status.success() {
        bail!("apt-get install {} failed ({status}); run it by hand to see why", missing.join(" "));
    }
    Ok(())
}

fn nightly_sysroot() -> anyhow::Result<PathBuf> {
    let out =
        Command::new("rustc").args(["+nightly", "--print", "sysroot"]).output().context("running rustc +nightly")?;
    if !out.status.success() {
        bail!(
            "no nightly toolchain ({}); the eBPF programs need one: `rustup toolchain install nightly`",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn rust_src() -> anyhow::Result<()> {
    let sysroot = nightly_sysroot()?;
    if sysroot.join("lib/rustlib/src/rust/library/core").exists() {
        return Ok(());
    }
    eprintln!("xtask setup: adding rust-src to nightly");
    let status = Command::new("rustup")
        .args(["component", "add", "rust-src", "--toolchain", "nightly"])
        .status()
        .context("running rustup")?;
    if !status.success() {
        bail!("`rustup component add rust-src --toolchain nightly` failed ({status})");
    }
    Ok(())
}

/// bpf-linker against nightly's own libLLVM: its default feature set does
/// not build here, so point LLVM_PREFIX at a folder whose lib/ links to the
/// libLLVM shipped with the nightly toolchain.
fn bpf_linker() -> anyhow::Result<()> {
    if have("bpf-linker") {
        return Ok(());
    }
    let sysroot = nightly_sysroot()?;
    let lib = sysroot.join("lib");
    let libllvm = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}; is the nightly toolchain complete?", lib.display()))?;
    // "libLLVM.so.22.1-rust-1.97.0-nightly" → LLVM major 22.
    let major = libllvm
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .filter(|m| m.chars().all(|c| c.is_ascii_digit()))
        .with_context(|| format!("cannot read the LLVM version from {libllvm}"))?
        .to_string();
    let prefix = tests::util::workspace_root().join("target/llvm-prefix");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for name in ["libLLVM.so", libllvm.as_str()] {
        let link = prefix_lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(lib.join(&libllvm), &link).with_context(|| format!("linking {}", link.display()))?;
    }
    eprintln!("xtask setup: installing bpf-linker against nightly's LLVM {major} (a few minutes, once)");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["install", "bpf-linker", "--no-default-features", "--features"])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &prefix)
        .env("LD_LIBRARY_PATH", join_path(&prefix_lib))
        .status()
        .context("running cargo install bpf-linker")?;
    if !status.success() {
        bail!(
            "installing bpf-linker failed ({status}); it needs LLVM {major} from {}: see DEVELOPERS notes in README.md",
            lib.display()
        );
    }
    Ok(())
}

fn join_path(p: &Path) -> std::ffi::OsString {
    let mut v = p.as_os_str().to_owned();
    if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
        v.push(":");
        v.push(old);
    }
    v
}
