//! `gateway scan` against a real clamd and a real c-icap (issue 3), plus two
//! fault injectors that no real server produces on demand: an ICAP port that
//! accepts and never answers, and one that answers garbage. They are small
//! Python listeners started here and named as fakes.

use std::{path::PathBuf, process::Output};

use tests::{
    Ns, Rig,
    cicap::CIcap,
    clamd::{Clamd, eicar},
    gateway::binary,
    util::random_file,
};

struct Env {
    rig: Rig,
    clamd: Clamd,
    icap: CIcap,
    files: PathBuf,
}

fn setup(tag: &str) -> anyhow::Result<Env> {
    let mut rig = Rig::new(tag)?;
    let clamd = Clamd::start(rig.dir().join("clamd"), "300M")?;
    let icap = CIcap::start(&mut rig, Ns::Server, 1344, &clamd.socket)?;
    let files = rig.dir().join("files");
    std::fs::create_dir_all(&files)?;
    let e = eicar();
    std::fs::write(files.join("eicar.com"), &e)?;
    std::fs::write(files.join("empty"), b"")?;
    random_file(&files.join("clean-1m"), 1 << 20, 5)?;
    // EICAR at the very end of a 10 MiB file.
    let big = files.join("tail-10m");
    random_file(&big, 10 << 20, 6)?;
    std::fs::OpenOptions::new().append(true).open(&big).and_then(|mut f| std::io::Write::write_all(&mut f, &e))?;
    // Archives made by Python's own zipfile and gzip.
    tests::clamd::eicar_zip(&files.join("eicar.zip"), "x/eicar.com")?;
    let py = format!(
        "import gzip\nopen('{f}/eicar.gz','wb').write(gzip.compress(open('{f}/eicar.com','rb').read()))\n",
        f = files.display()
    );
    let out = std::process::Command::new(tests::util::PYTHON).args(["-c", &py]).output()?;
    anyhow::ensure!(out.status.success(), "making eicar.gz: {}", String::from_utf8_lossy(&out.stderr));
    Ok(Env { rig, clamd, icap, files })
}

impl Env {
    fn scan(&self, backend: &[&str], names: &[&str]) -> anyhow::Result<Output> {
        let mut cmd = self.rig.cmd(Ns::Server, binary()?);
        cmd.arg("scan").args(backend);
        for n in names {
            cmd.arg(self.files.join(n));
        }
        Ok(cmd.output()?)
    }
}

/// Output lines with the files directory cut from the front of each.
fn lines(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| match l.split_once(": ") {
            Some((path, rest)) => format!("{}: {rest}", path.rsplit('/').next().unwrap_or(path)),
            None => l.to_string(),
        })
        .collect()
}

fn both(env: &Env) -> [(&'static str, Vec<String>); 2] {
    [("clamd", vec!["--clamd".into(), env.clamd.addr()]), ("icap", vec!["--icap".into(), env.icap.url.clone()])]
}

#[test]
fn finds_eicar_alone_zipped_gzipped_and_at_the_end_of_10_mib() -> anyhow::Result<()> {
    let env = setup("scan1")?;
    for (name, args) in both(&env) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = env.scan(&args, &["eicar.com", "eicar.zip", "eicar.gz", "tail-10m", "clean-1m", "empty"])?;
        let l = lines(&out);
        assert_eq!(out.status.code(), Some(1), "{name}: {l:?} {}", String::from_utf8_lossy(&out.stderr));
        for (i, f) in ["eicar.com", "eicar.zip", "eicar.gz", "tail-10m"].iter().enumerate() {
            assert!(
                l[i].starts_with(&format!("{f}: ")) && l[i].ends_with(" FOUND") && l[i].contains("Test.EICAR"),
                "{name}: {}",
                l[i]
            );
        }
        assert_eq!(l[4], "clean-1m: OK", "{name}");
        assert_eq!(l[5], "empty: OK", "{name}");
    }
    Ok(())
}

#[test]
fn exit_status_follows_clamdscan() -> anyhow::Result<()> {
    let env = setup("scan2")?;
    for (name, args) in both(&env) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(env.scan(&args, &["clean-1m", "empty"])?.status.code(), Some(0), "{name}: all clean");
        assert_eq!(env.scan(&args, &["clean-1m", "eicar.com"])?.status.code(), Some(1), "{name}: infected");
        let out = env.scan(&args, &["eicar.com", "missing"])?;
        assert_eq!(out.status.code(), Some(2), "{name}: an error outranks an infection");
        assert!(lines(&out)[1].starts_with("missing: ERROR cannot open"), "{:?}", lines(&out));
    }
    Ok(())
}

#[test]
fn a_dead_clamd_is_an_error_not_clean() -> anyhow::Result<()> {
    let mut env = setup("scan3")?;
    env.clamd.stop();
    let out = env.scan(&["--clamd", &env.clamd.addr()], &["clean-1m"])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(lines(&out)[0].starts_with("clean-1m: ERROR unavailable"), "{:?}", lines(&out));
    // c-icap in front of the dead clamd must not turn into "clean" either.
    let out = env.scan(&["--icap", &env.icap.url], &["eicar.com"])?;
    assert_ne!(out.status.code(), Some(0), "{:?}", lines(&out));
    Ok(())
}

#[test]
fn oversize_bodies_are_reported_as_oversize() -> anyhow::Result<()> {
    let env = setup("scan4")?;
    // clamd's own StreamMaxLength.
    let small = Clamd::start(env.rig.dir().join("clamd-small"), "1M")?;
    let out = env.scan(&["--clamd", &small.addr()], &["tail-10m"])?;
    assert_eq!(out.status.code(), Some(2), "{:?}", lines(&out));
    assert!(lines(&out)[0].starts_with("tail-10m: ERROR oversize"), "{:?}", lines(&out));
    // The gateway's own max_scan_size.
    let conf = env.rig.dir().join("small.toml");
    std::fs::write(&conf, format!("[scan]\nclamd = \"{}\"\nmax_scan_size = \"1MiB\"\n", env.clamd.addr()))?;
    let out = env.scan(&["--config", &conf.to_string_lossy()], &["tail-10m", "eicar.com"])?;
    assert!(
        lines(&out)[0].starts_with("tail-10m: ERROR oversize (body larger than scan.max_scan_size"),
        "{:?}",
        lines(&out)
    );
    assert!(lines(&out)[1].ends_with("FOUND"), "{:?}", lines(&out));
    Ok(())
}

/// FAKE (fault injector): an ICAP port that accepts connections and never
/// answers, or answers `reply` to anything.
fn fake_icap(rig: &mut Rig, port: u16, reply: Option<&str>) -> anyhow::Result<()> {
    let body = match reply {
        None => "    time.sleep(3600)\n".to_string(),
        Some(r) => format!("    c.recv(65536); c.sendall({r:?}.encode()); time.sleep(3600)\n"),
    };
    let py = format!(
        "import socket,threading,time\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         s.bind(('127.0.0.1',{port})); s.listen(64)\ndef h(c):\n{body}\nwhile True:\n    c,_=s.accept(); threading.Thread(target=h,args=(c,),daemon=True).start()\n"
    );
    let mut cmd = rig.cmd(Ns::Server, tests::util::PYTHON);
    cmd.args(["-c", &py]);
    let log = rig.dir().join(format!("fake-icap-{port}.log"));
    rig.spawn(cmd, &log)?;
    tests::util::wait_for("the fake ICAP port", std::time::Duration::from_secs(10), || {
        let out = rig.run(Ns::Server, "ss", &["-Hltn", &format!("sport = :{port}")]).ok()?;
        (!out.stdout.is_empty()).then_some(())
    })
}

#[test]
fn a_silent_icap_service_times_out_and_fails_over() -> anyhow::Result<()> {
    let mut env = setup("scan5")?;
    fake_icap(&mut env.rig, 1345, None)?;
    let conf = env.rig.dir().join("failover.toml");
    std::fs::write(
        &conf,
        format!(
            "[scan]\nbackend = \"icap\"\nicap = [\"icap://127.0.0.1:1345/hang\", \"{}\"]\nio_timeout = \"2s\"\n",
            env.icap.url
        ),
    )?;
    let out = env.scan(&["--config", &conf.to_string_lossy()], &["eicar.com", "clean-1m"])?;
    assert_eq!(
        lines(&out),
        ["eicar.com: Test.EICAR.NDB.UNOFFICIAL FOUND", "clean-1m: OK"],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let only = env.rig.dir().join("only.toml");
    std::fs::write(
        &only,
        "[scan]\nbackend = \"icap\"\nicap = [\"icap://127.0.0.1:1345/hang\"]\nio_timeout = \"2s\"\n",
    )?;
    let out = env.scan(&["--config", &only.to_string_lossy()], &["clean-1m"])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(lines(&out)[0].starts_with("clean-1m: ERROR timeout"), "{:?}", lines(&out));
    Ok(())
}

#[test]
fn malformed_icap_answers_are_clear_errors() -> anyhow::Result<()> {
    let mut env = setup("scan6")?;
    fake_icap(&mut env.rig, 1346, Some("HTTP/1.1 200 OK\r\n\r\n"))?;
    fake_icap(&mut env.rig, 1347, Some("ICAP/1.0 200 OK\r\nMethods: RESPMOD\r\nbroken header line\r\n\r\n"))?;
    for (port, want) in [(1346, "status line \"HTTP/1.1 200 OK\""), (1347, "header line \"broken header line\"")] {
        let out = env.scan(&["--icap", &format!("icap://127.0.0.1:{port}/x")], &["clean-1m"])?;
        assert_eq!(out.status.code(), Some(2));
        let l = &lines(&out)[0];
        assert!(
            l.starts_with("clean-1m: ERROR protocol") && l.contains("malformed ICAP response") && l.contains(want),
            "{l}"
        );
    }
    Ok(())
}
