//! The FTP gateway (issue 5): pyftpdlib (Debian's python3-pyftpdlib) as the
//! real server, curl and Python's ftplib as real clients, real clamd.

use std::time::Duration;

use anyhow::ensure;
use tests::{
    Ns,
    clamd::eicar,
    ftpd::FtpEnv,
    rig::{SERVER_V4, SERVER_V6},
    util::{random_file, sha256_file, wait_for},
};

use tests::util::PYTHON as PY;

fn setup(tag: &str) -> anyhow::Result<FtpEnv> {
    FtpEnv::start(tag, "", "")
}

fn setup_with(tag: &str, ftp: &str) -> anyhow::Result<FtpEnv> {
    FtpEnv::start(tag, ftp, "")
}

use tests::util::output_text as text;

#[test]
fn clean_files_arrive_identical_in_passive_and_active_mode() -> anyhow::Result<()> {
    let env = setup("fclean")?;
    let files = [("0b", 0u64), ("1k", 1024), ("4096k", 4096 << 10), ("4097k", 4097 << 10), ("100m", 100 << 20)];
    for (name, len) in files {
        random_file(&env.root.join(name), len, len + 3)?;
    }
    for active in [false, true] {
        for (name, _) in files {
            let out = env.curl(&format!("ftp://u:p@{SERVER_V4}/{name}"), &format!("got-{name}-{active}"), active)?;
            ensure!(out.status.success(), "curl {name} active={active}: {}", text(&out));
            assert_eq!(
                sha256_file(&env.rig.dir().join(format!("got-{name}-{active}")))?,
                sha256_file(&env.root.join(name))?,
                "{name} active={active}"
            );
        }
    }
    let log = env.gw.log_text();
    let retr: Vec<&str> = log.lines().filter(|l| l.contains(" ftp: ") && l.contains("RETR")).collect();
    assert_eq!(retr.len(), 10, "{retr:#?}");
    assert!(retr.iter().all(|l| l.contains("verdict=clean")), "{retr:#?}");
    // 1 KiB per 4096 KiB went on before the verdict: none below 4096 KiB.
    assert!(retr.iter().any(|l| l.contains("RETR 100m") && l.contains("trickled=25600")), "{retr:#?}");
    assert!(retr.iter().any(|l| l.contains("RETR 4096k") && l.contains("trickled=1024")), "{retr:#?}");
    assert!(retr.iter().any(|l| l.contains("RETR 1k") && l.contains("trickled=0")), "{retr:#?}");
    assert_eq!(env.gw.counter("/expectations")?, 0, "expectations left behind");
    Ok(())
}

#[test]
fn infected_download_gets_505_and_only_the_trickle() -> anyhow::Result<()> {
    let env = setup("finf")?;
    std::fs::write(env.root.join("eicar.com"), eicar())?;
    let mut big = std::fs::read(random_file(&env.root.join("tmp"), 10 << 20, 5)?)?;
    big.extend_from_slice(&eicar());
    std::fs::write(env.root.join("big-eicar.bin"), &big)?;
    let out = env.ftplib(
        SERVER_V4,
        "for name in ['eicar.com','big-eicar.bin']:\n    got=[]\n    try:\n        f.retrbinary('RETR '+name, got.append)\n        print(name, 'OK')\n    except ftplib.all_errors as e:\n        print(name, len(b''.join(got)), str(e))\nf.quit()",
    )?;
    let t = text(&out);
    let lines: Vec<&str> = t.lines().collect();
    assert!(lines.contains(&"eicar.com 0 505 virus found in file: Test.EICAR.NDB.UNOFFICIAL"), "{t}");
    // Two full 4096 KiB windows of 10 MiB: 2 KiB arrive before the verdict,
    // nothing after it.
    assert!(lines.contains(&"big-eicar.bin 2048 505 virus found in file: Test.EICAR.NDB.UNOFFICIAL"), "{t}");
    let recs = env.gw.detections();
    assert!(recs.iter().any(|r| r["kind"] == "ftp-download" && r["delivered_before_verdict"] == 2048), "{recs:#?}");
    Ok(())
}

#[test]
fn infected_upload_gets_505_and_the_fragment_is_deleted() -> anyhow::Result<()> {
    let env = setup("fup")?;
    let e = env.rig.dir().join("up-eicar.com");
    std::fs::write(&e, eicar())?;
    let clean = random_file(&env.rig.dir().join("up-clean"), 5 << 20, 8)?;
    // APPE to a file that holds the user's data: that file must survive.
    let before = random_file(&env.root.join("appended"), 3000, 9)?;
    let before = std::fs::read(before)?;
    let out = env.ftplib(
        SERVER_V4,
        &format!(
            "for src,cmd in [('{e}','STOR stored-eicar.com'),('{c}','STOR stored-clean'),('{e}','STOU'),('{e}','APPE appended')]:\n    try:\n        f.storbinary(cmd, open(src,'rb'))\n        print(cmd, 'OK')\n    except ftplib.all_errors as e:\n        print(cmd, str(e))\nf.quit()",
            e = e.display(),
            c = clean.display()
        ),
    )?;
    let t = text(&out);
    for cmd in ["STOR stored-eicar.com", "STOU", "APPE appended"] {
        assert!(t.contains(&format!("{cmd} 505 virus found in file: Test.EICAR.NDB.UNOFFICIAL")), "{cmd}: {t}");
    }
    assert!(t.contains("STOR stored-clean OK"), "{t}");
    assert!(!env.root.join("stored-eicar.com").exists(), "the infected fragment is still on the server");
    assert_eq!(sha256_file(&env.root.join("stored-clean"))?, sha256_file(&clean)?);
    let log = env.gw.log_text();
    assert!(log.contains("DELE of the infected fragment stored-eicar.com: deleted"), "{log}");
    // STOU: the server chose the name (150 FILE: …) and the gateway deleted it.
    let mut left: Vec<String> = std::fs::read_dir(&env.root)?
        .map(|d| d.map(|d| d.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    left.sort();
    assert_eq!(left, ["appended", "stored-clean"], "{log}");
    assert!(
        log.lines().any(|l| l.contains("DELE of the infected fragment")
            && l.contains(": deleted")
            && !l.contains("stored-eicar")),
        "{log}"
    );
    // The 68-byte EICAR is below one trickle window: nothing was appended.
    assert_eq!(std::fs::read(env.root.join("appended"))?, before, "APPE changed the existing file");
    Ok(())
}

#[test]
fn resumed_transfers_scan_what_is_transferred() -> anyhow::Result<()> {
    let env = setup("fresume")?;
    let clean = std::fs::read(random_file(&env.root.join("clean"), 6 << 20, 11)?)?;
    let mut big = std::fs::read(random_file(&env.root.join("tmp"), 3 << 20, 12)?)?;
    big.extend_from_slice(&eicar());
    std::fs::write(env.root.join("big-eicar.bin"), &big)?;
    let got = env.rig.dir().join("resumed");
    let out = env.ftplib(
        SERVER_V4,
        &format!(
            "got=open('{}','wb')\nf.retrbinary('RETR clean', got.write, rest=1000001)\ngot.close()\nprint('clean OK')\n\
             try:\n    f.retrbinary('RETR big-eicar.bin', lambda b: None, rest=1<<20)\n    print('eicar OK')\n\
             except ftplib.all_errors as e:\n    print('eicar', str(e))\nf.quit()",
            got.display()
        ),
    )?;
    let t = text(&out);
    assert!(t.contains("clean OK"), "{t}");
    assert_eq!(std::fs::read(&got)?, clean[1_000_001..], "the resumed part differs");
    assert!(t.contains("eicar 505 virus found in file: Test.EICAR.NDB.UNOFFICIAL"), "{t}");
    Ok(())
}

#[test]
fn listings_work_and_bounces_and_ftps_are_refused() -> anyhow::Result<()> {
    let env = setup("fmisc")?;
    random_file(&env.root.join("a.txt"), 10, 1)?;
    random_file(&env.root.join("b.txt"), 10, 2)?;
    let out = env.ftplib(
        SERVER_V4,
        "print(sorted(f.nlst()))\nls=[]\nf.retrlines('LIST', ls.append)\nprint(len(ls))\n\
         for c in ['PORT 10,9,8,7,4,1', 'EPRT |1|10.9.8.7|1025|', 'AUTH TLS']:\n    try:\n        print(f.sendcmd(c))\n    except ftplib.all_errors as e:\n        print(str(e))\nf.quit()",
    )?;
    let t = text(&out);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines.first().copied(), Some("['a.txt', 'b.txt']"), "{t}");
    assert_eq!(lines.get(1).copied(), Some("2"), "{t}");
    assert!(lines.iter().any(|l| l.starts_with("504 PORT refused")), "{t}");
    assert!(lines.iter().any(|l| l.starts_with("504 EPRT refused")), "{t}");
    assert!(lines.iter().any(|l| l.starts_with("534 ")), "{t}");
    Ok(())
}

#[test]
fn ipv6_with_epsv_and_eprt() -> anyhow::Result<()> {
    let env = setup("fv6")?;
    random_file(&env.root.join("f"), 5 << 20, 4)?;
    std::fs::write(env.root.join("eicar.com"), eicar())?;
    for active in [false, true] {
        let out = env.curl(&format!("ftp://u:p@[{SERVER_V6}]/f"), &format!("v6-{active}"), active)?;
        ensure!(out.status.success(), "active={active}: {}", text(&out));
        assert_eq!(sha256_file(&env.rig.dir().join(format!("v6-{active}")))?, sha256_file(&env.root.join("f"))?);
    }
    let out = env.ftplib(
        SERVER_V6,
        "try:\n    f.retrbinary('RETR eicar.com', lambda b: None)\nexcept ftplib.all_errors as e:\n    print(str(e))",
    )?;
    assert!(text(&out).contains("505 virus found in file"), "{}", text(&out));
    Ok(())
}

#[test]
fn abort_mid_transfer_leaves_nothing_behind() -> anyhow::Result<()> {
    let env = setup("fabor")?;
    random_file(&env.root.join("big"), 100 << 20, 6)?;
    let out = env.ftplib(
        SERVER_V4,
        "f.voidcmd('TYPE I')\nc=f.transfercmd('RETR big')\nc.recv(10)\nprint(f.abort())\nc.close()\nprint(f.voidcmd('NOOP'))\nf.quit()",
    )?;
    // RFC 959: 426 for the aborted transfer, then 226 for ABOR (ftplib
    // reads one of them in abort(), the other as NOOP's answer).
    let t = text(&out);
    assert!(
        out.status.success() && t.lines().count() == 2 && t.starts_with("426"),
        "control connection still usable: {t}"
    );
    env.nothing_left()?;
    Ok(())
}

#[test]
fn resume_can_be_refused_and_a_dead_scanner_aborts_with_451() -> anyhow::Result<()> {
    let mut env = setup_with("fpol", "allow_resume = false")?;
    random_file(&env.root.join("f"), 5000, 3)?;
    env.clamd.stop();
    let out = env.ftplib(
        SERVER_V4,
        "for c in ['REST 100']:\n    try:\n        print(f.sendcmd(c))\n    except ftplib.all_errors as e:\n        print(str(e))\n\
got=[]\ntry:\n    f.retrbinary('RETR f', got.append)\n    print('RETR OK')\nexcept ftplib.all_errors as e:\n    print(len(b''.join(got)), str(e))\nf.quit()",
    )?;
    let t = text(&out);
    assert!(t.lines().any(|l| l.starts_with("504 REST")), "{t}");
    assert!(t.lines().any(|l| l.starts_with("0 451 Transfer aborted: not scanned (unavailable)")), "{t}");
    Ok(())
}

#[test]
fn refused_transfers_leave_no_listener_or_expectation() -> anyhow::Result<()> {
    let env = setup("fgone")?;
    // Passive and active RETR of a file that does not exist: the server
    // answers 550 and never sends data.
    let out = env.ftplib(
        SERVER_V4,
        "for passive in [True, False]:\n    f.set_pasv(passive)\n    try:\n        f.retrbinary('RETR missing', lambda b: None)\n    except ftplib.all_errors as e:\n        print(str(e)[:3])\nprint(f.voidcmd('NOOP')[:3])\nf.quit()",
    )?;
    assert_eq!(text(&out).split_whitespace().collect::<Vec<_>>(), ["550", "550", "200"], "{}", text(&out));
    wait_for("expectations and active-mode listeners to go", Duration::from_secs(10), || {
        let listeners = env.rig.run(Ns::Gateway, "ss", &["-Hltn"]).ok()?;
        let extra = String::from_utf8_lossy(&listeners.stdout).lines().filter(|l| l.contains("198.19.0.1:")).count();
        (env.gw.counter("/expectations").ok()? == 0 && extra == 0).then_some(())
    })?;
    Ok(())
}

#[test]
fn overlong_lines_and_idle_control_connections_are_closed_with_a_reply() -> anyhow::Result<()> {
    let env = setup_with("flimit", "idle_timeout = \"1s\"")?;
    let script = format!(
        "import socket,time\n\
         def conn():\n    s=socket.create_connection(('{SERVER_V4}',21)); s.settimeout(10); s.recv(200); return s\n\
         def rest(s):\n    d=b''\n    while True:\n        c=s.recv(200)\n        if not c: return d.decode().strip()\n        d+=c\n\
         s=conn(); s.sendall(b'NOOP '+b'x'*5000+b'\\r\\n'); print(rest(s))\n\
         s=conn(); time.sleep(2); print(rest(s))\n"
    );
    let out = env.rig.run(Ns::Client, PY, &["-c", &script])?;
    let t = text(&out);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines, ["500 Command line too long.", "421 Idle timeout, closing the control connection."], "{t}");
    Ok(())
}

#[test]
fn a_vanishing_server_gets_the_client_a_421_and_leaves_nothing_behind() -> anyhow::Result<()> {
    let env = setup("fsgone")?;
    random_file(&env.root.join("big"), 100 << 20, 14)?;
    let out = env.ftplib(
        SERVER_V4,
        &format!(
            "import os\nf.voidcmd('TYPE I')\nc=f.transfercmd('RETR big')\nc.recv(10)\nos.kill({}, 9)\n\
             try:\n    print('reply', f.voidresp())\nexcept ftplib.all_errors as e:\n    print('reply', str(e))",
            env.ftpd
        ),
    )?;
    let t = text(&out);
    assert!(t.contains("reply 421 The server closed the control connection."), "{t}");
    env.nothing_left()?;
    Ok(())
}

#[test]
fn a_vanishing_client_leaves_nothing_behind() -> anyhow::Result<()> {
    let env = setup("fgone")?;
    random_file(&env.root.join("big"), 100 << 20, 13)?;
    // The client process dies mid-download, control and data connections with it.
    let out =
        env.ftplib(SERVER_V4, "import os\nf.voidcmd('TYPE I')\nc=f.transfercmd('RETR big')\nc.recv(10)\nos._exit(0)")?;
    assert!(out.status.success(), "{}", text(&out));
    env.nothing_left()?;
    // A new session works.
    let out = env.ftplib(SERVER_V4, "print(f.nlst())\nf.quit()")?;
    assert!(text(&out).contains("big"), "{}", text(&out));
    Ok(())
}
