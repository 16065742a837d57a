//! The scanning core as the proxies use it (sessions fed chunk by chunk),
//! against a real clamd and a real c-icap.

use std::{path::Path, process::Command, sync::Arc, time::Duration};

use gateway::{
    config::{Scan, ScanBackend},
    decide::{Decision, Subject, TransferKind},
    policy::Action,
    scan::{ScanMeta, Scanner},
    units::Size,
    verdict::{ErrorKind, Outcome, Verdict},
};
use tests::{
    cicap::CIcap,
    clamd::{Clamd, eicar},
};

/// A scratch directory removed when dropped (declare it before the clamd
/// and c-icap that live in it, so they stop first).
struct Scratch(std::path::PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(tag: &str) -> Scratch {
    let d = std::env::temp_dir().join(format!("gwcore-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Scratch(d)
}

fn clamd_config(clamd: &Clamd, spool: &Path) -> Scan {
    Scan { clamd: vec![clamd.addr()], spool_dir: spool.to_path_buf(), ..Scan::default() }
}

/// What the proxies would decide for `outcome`.
fn decide(scanner: &Scanner, outcome: &Outcome) -> Decision {
    let addr = "198.18.0.2:1".parse().unwrap();
    let subject = Subject::new(TransferKind::HttpDownload, addr, addr, "http://origin.test/file.bin".into());
    scanner.decider().decide(&subject, outcome, 0)
}

async fn scan_in_chunks(scanner: &Arc<Scanner>, body: &[u8], chunk: usize, hold: bool) -> gateway::scan::Finished {
    let mut s = scanner.start(ScanMeta::file("http://origin.test/file.bin"), hold);
    for c in body.chunks(chunk.max(1)) {
        s.feed(c).await;
    }
    s.finish().await
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn one_byte_chunks_and_empty_bodies_on_both_backends() {
    let dir = scratch("bytes");
    let clamd = Clamd::start(dir.join("clamd"), "300M").unwrap();
    let port = 20000 + (std::process::id() % 20000) as u16;
    let (icap, _guard) = CIcap::start_here(&dir.join("icap"), port, &clamd.socket).unwrap();
    let rt = runtime();
    let mut with_eicar = b"some text before ".to_vec();
    with_eicar.extend_from_slice(&eicar());
    with_eicar.extend_from_slice(b" and after");
    for backend in [ScanBackend::Clamd, ScanBackend::Icap] {
        let cfg = Scan { backend, icap: vec![icap.url.clone()], ..clamd_config(&clamd, &dir) };
        let scanner = Arc::new(Scanner::standalone(&cfg).unwrap());
        rt.block_on(async {
            let done = scan_in_chunks(&scanner, &with_eicar, 1, true).await;
            assert!(done.outcome.verdict.is_infected(), "{backend:?}: {:?}", done.outcome.verdict);
            assert_eq!(done.outcome.bytes, with_eicar.len() as u64);
            let done = scan_in_chunks(&scanner, b"", 1, true).await;
            assert_eq!(done.outcome.verdict, Verdict::Clean, "{backend:?} empty body");
            // Clean, larger than c-icap's preview, in odd chunk sizes.
            let clean: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
            let done = scan_in_chunks(&scanner, &clean, 4093, true).await;
            assert_eq!(done.outcome.verdict, Verdict::Clean, "{backend:?} clean");
            let held = done.body.as_ref().unwrap();
            let mut back = vec![0; held.len() as usize];
            assert_eq!(held.read_at(0, &mut back).unwrap(), back.len());
            assert!(back == clean, "{backend:?}: held body differs");
        });
    }
}

#[test]
fn infected_body_is_remembered_by_hash() {
    let dir = scratch("cache");
    let clamd = Clamd::start(dir.join("clamd"), "300M").unwrap();
    let scanner = Arc::new(Scanner::standalone(&clamd_config(&clamd, &dir)).unwrap());
    let rt = runtime();
    rt.block_on(async {
        // Bodies past 64 KiB are hashed and remembered.
        let mut big = eicar();
        big.resize(100 << 10, b'.');
        let first = scan_in_chunks(&scanner, &big, 4096, false).await;
        assert!(first.outcome.verdict.is_infected() && !first.outcome.cached);
        assert!(matches!(decide(&scanner, &first.outcome), Decision::Block { .. }));
        let again = scan_in_chunks(&scanner, &big, 4096, false).await;
        assert!(again.outcome.verdict.is_infected() && again.outcome.cached);
        // A small one is scanned again: hashing every small body costs
        // more than re-scanning the rare known infection.
        let small = scan_in_chunks(&scanner, &eicar(), 10, false).await;
        assert!(matches!(decide(&scanner, &small.outcome), Decision::Block { .. }));
        let small_again = scan_in_chunks(&scanner, &eicar(), 10, false).await;
        assert!(small_again.outcome.verdict.is_infected() && !small_again.outcome.cached);
    });
}

#[test]
fn clamd_sessions_are_reused_and_survive_a_clamd_restart() {
    let dir = scratch("restart");
    let mut clamd = Clamd::start(dir.join("clamd"), "300M").unwrap();
    let scanner = Arc::new(Scanner::standalone(&clamd_config(&clamd, &dir)).unwrap());
    let rt = runtime();
    let connections = |clamd: &Clamd| {
        let out = Command::new("ss").args(["-Hx", "src", &clamd.socket.to_string_lossy()]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains("ESTAB")).count()
    };
    rt.block_on(async {
        for _ in 0..20 {
            let done = scan_in_chunks(&scanner, b"clean text", 4, false).await;
            assert_eq!(done.outcome.verdict, Verdict::Clean);
        }
    });
    // Twenty sequential scans, one session.
    assert_eq!(connections(&clamd), 1, "sessions are not reused");
    // clamd restarts: the pooled session is dead; the next scans must not see it.
    clamd.stop();
    let mut clamd = Clamd::start(dir.join("clamd"), "300M").unwrap();
    rt.block_on(async {
        let done = scan_in_chunks(&scanner, &eicar(), 7, false).await;
        assert!(done.outcome.verdict.is_infected(), "{:?}", done.outcome.verdict);
        let done = scan_in_chunks(&scanner, b"clean again", 4, false).await;
        assert_eq!(done.outcome.verdict, Verdict::Clean);
    });
    clamd.stop();
}

#[test]
fn dead_clamd_blocks_by_default_and_passes_with_on_error_allow() {
    let dir = scratch("dead");
    let mut clamd = Clamd::start(dir.join("clamd"), "300M").unwrap();
    clamd.stop();
    let rt = runtime();
    for (action, want_pass) in [(Action::Block, false), (Action::Allow, true)] {
        let cfg = Scan { on_error: action, ..clamd_config(&clamd, &dir) };
        let scanner = Arc::new(Scanner::standalone(&cfg).unwrap());
        let done = rt.block_on(scan_in_chunks(&scanner, b"hello", 5, true));
        assert!(
            matches!(done.outcome.verdict, Verdict::Error { kind: ErrorKind::Unavailable, .. }),
            "{:?}",
            done.outcome.verdict
        );
        assert_eq!(matches!(decide(&scanner, &done.outcome), Decision::Pass { .. }), want_pass);
    }
    assert_eq!(Scan::default().on_error, Action::Block, "fail closed by default");
}

#[test]
fn a_full_spool_is_an_error_verdict_not_a_truncated_body() {
    let dir = scratch("full");
    let clamd = Clamd::start(dir.join("clamd"), "300M").unwrap();
    let spool = dir.join("tiny");
    std::fs::create_dir_all(&spool).unwrap();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"]).arg(&spool).status().unwrap();
    assert!(mounted.success(), "mounting a 1 MiB tmpfs");
    let cfg = Scan { spool_memory: Size(64 << 10), spool_memory_total: Size(64 << 10), ..clamd_config(&clamd, &spool) };
    let scanner = Arc::new(Scanner::standalone(&cfg).unwrap());
    let body: Vec<u8> = (0..(4u32 << 20)).map(|i| (i % 253) as u8).collect();
    let done = runtime().block_on(scan_in_chunks(&scanner, &body, 65536, true));
    let _ = Command::new("umount").arg(&spool).status();
    assert!(
        matches!(done.outcome.verdict, Verdict::Error { kind: ErrorKind::Spool, .. }),
        "{:?}",
        done.outcome.verdict
    );
    assert!(done.body.is_none(), "no partial body is handed out for delivery");
    assert!(matches!(decide(&scanner, &done.outcome), Decision::Block { .. }));
}

/// Runs in a child process so that its peak RSS (VmHWM) is its own.
#[test]
fn a_held_200_mib_body_keeps_memory_near_spool_memory() {
    if std::env::var_os("GW_MEMORY_CHILD").is_some() {
        let dir = scratch("mem");
        let clamd = Clamd::start(dir.join("clamd"), "300M").unwrap();
        let port = 20000 + (std::process::id() % 20000) as u16;
        let (icap, _guard) = CIcap::start_here(&dir.join("icap"), port, &clamd.socket).unwrap();
        let chunk: Vec<u8> = (0..65536u32).map(|i| (i * 31 % 255) as u8).collect();
        for backend in [ScanBackend::Clamd, ScanBackend::Icap] {
            let cfg = Scan { backend, icap: vec![icap.url.clone()], ..clamd_config(&clamd, &dir) };
            let scanner = Arc::new(Scanner::standalone(&cfg).unwrap());
            let done = runtime().block_on(async {
                let mut s = scanner.start(ScanMeta::file("big.bin"), true);
                for i in 0..3200u32 {
                    let mut c = chunk.clone();
                    c[..4].copy_from_slice(&i.to_le_bytes());
                    s.feed(&c).await;
                }
                s.finish().await
            });
            assert_eq!(done.outcome.verdict, Verdict::Clean, "{backend:?}");
            assert_eq!(done.outcome.bytes, 200 << 20);
            assert!(done.body.as_ref().is_some_and(|b| b.on_disk()));
        }
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let hwm = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        println!("CHILD {hwm}");
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["a_held_200_mib_body_keeps_memory_near_spool_memory", "--exact", "--nocapture", "--test-threads=1"])
        .env("GW_MEMORY_CHILD", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let kb: u64 = text
        .lines()
        .find_map(|l| l.split("CHILD VmHWM:").nth(1))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("child reported no VmHWM: {text}"));
    // spool_memory is 1 MiB; the process itself (runtime, test harness)
    // needs some tens of MiB. Holding the body in memory would be > 200 MiB.
    assert!(kb < 48 * 1024, "peak RSS {kb} kB while holding 200 MiB");
    eprintln!("peak RSS while holding 200 MiB: {kb} kB");
    let _ = Duration::ZERO;
}

/// Bodies that end within 64 KiB reach a real clamd as passed descriptors,
/// longer ones as streams; both are found infected where they are, and
/// each clean one is scanned whole (clamd's own log names the path).
#[test]
fn small_bodies_go_as_descriptors_and_long_ones_as_streams() {
    let dir = scratch("fildes");
    let clamd = Clamd::start_with(dir.join("clamd"), "300M", "LogClean yes").unwrap();
    let scanner = Arc::new(Scanner::standalone(&clamd_config(&clamd, &dir)).unwrap());
    let rt = runtime();
    let mut eicar_at_the_end = vec![b'.'; (64 << 10) - eicar().len()];
    eicar_at_the_end.extend_from_slice(&eicar());
    let mut long = eicar_at_the_end.clone();
    long.insert(0, b'.');
    rt.block_on(async {
        for (body, infected) in [
            (&b"small and clean"[..], false),
            (&eicar_at_the_end[..], true),
            (&long[..], true),
            (&vec![b'x'; 100 << 10][..], false),
        ] {
            let done = scan_in_chunks(&scanner, body, 1000, false).await;
            assert_eq!(
                done.outcome.verdict.is_infected(),
                infected,
                "{} bytes: {:?}",
                body.len(),
                done.outcome.verdict
            );
        }
    });
    // clamd writes its log line after its answer: wait for the fourth.
    let verdicts = |log: &str| log.lines().filter(|l| l.contains(": OK") || l.contains(" FOUND")).count();
    let read = || std::fs::read_to_string(dir.join("clamd/clamd.log")).unwrap_or_default();
    let _ = tests::util::wait_for("clamd's log of four scans", Duration::from_secs(10), || {
        (verdicts(&read()) >= 4).then_some(())
    });
    let log = read();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(": OK") || l.contains(" FOUND")).collect();
    assert_eq!(lines.len(), 4, "{log}");
    // clamd names a descriptor's file (`/memfd:gateway-scan (deleted)`), a
    // stream by its client (`instream(…)`).
    let memfd = |l: &str| l.contains("/memfd:gateway-scan");
    assert!(memfd(lines[0]) && lines[0].ends_with(": OK"), "{}", lines[0]);
    assert!(memfd(lines[1]) && lines[1].ends_with(" FOUND"), "{}", lines[1]);
    assert!(!memfd(lines[2]) && lines[2].ends_with(" FOUND"), "{}", lines[2]);
    assert!(!memfd(lines[3]) && lines[3].ends_with(": OK"), "{}", lines[3]);
}
