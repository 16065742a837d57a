//! The antivirus API (issue 15): Cloudmersive's published npm client
//! against the gateway's API server, and the gateway's API client backend
//! against that server over HTTPS, end to end on the rig.

use std::{path::Path, process::Command};

use tests::{
    Gateway, Ns, Rig,
    clamd::{Clamd, eicar},
    gateway::{Settings, binary},
    nginx::Nginx,
    rig::SERVER_V4,
    serve::{Served, config},
    util::{output_text, random_file, run_ok, sha256_file, workspace_root},
};

/// Cloudmersive's client (tests/api-client, installed by `cargo xtask
/// setup`) scanning `file` against `base`; its printed result.
fn npm_client(rig: &Rig, base: &str, key: &str, file: &Path, advanced: bool) -> anyhow::Result<serde_json::Value> {
    let dir = workspace_root().join("tests/api-client");
    anyhow::ensure!(
        dir.join("node_modules/cloudmersive-virus-api-client").is_dir(),
        "Cloudmersive's client is not installed: run `cargo xtask setup` (npm ci in tests/api-client)"
    );
    let mut cmd = rig.cmd(Ns::Server, "node");
    cmd.current_dir(&dir).arg("scan.js").arg(base).arg(key).arg(file);
    if advanced {
        cmd.arg("advanced");
    }
    let out = cmd.output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).map_err(|e| anyhow::anyhow!("node printed {text:?} ({e}): {}", output_text(&out)))
}

#[test]
fn cloudmersives_client_gets_the_virus_name_for_eicar_and_clean_for_the_rest() -> anyhow::Result<()> {
    let mut rig = Rig::new("api1")?;
    let clamd = Clamd::start(rig.dir().join("clamd"), "300M")?;
    let dir = rig.dir().join("serve");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("key"), "secret-key\n")?;
    let extra = format!("[api_server]\nlisten = \"127.0.0.1:8080\"\nkey_file = \"{}/key\"\n", dir.display());
    let served = Served::start(Some((&mut rig, Ns::Server)), &dir, &config(&dir, &clamd.addr(), &extra))?;
    let files = rig.dir().join("files");
    std::fs::create_dir_all(&files)?;
    std::fs::write(files.join("eicar.com"), eicar())?;
    let clean = random_file(&files.join("clean-1m"), 1 << 20, 31)?;
    let mut exe = b"MZ\x90\x00".to_vec();
    exe.extend_from_slice(&[7u8; 4000]);
    std::fs::write(files.join("prog.exe"), exe)?;
    let base = "http://127.0.0.1:8080";

    for advanced in [false, true] {
        let r = npm_client(&rig, base, "secret-key", &files.join("eicar.com"), advanced)?;
        assert_eq!(r["CleanResult"], false, "{r}");
        let name = r["FoundViruses"][0]["VirusName"].as_str().unwrap_or_default();
        assert!(name.starts_with("Test.EICAR"), "{r}");
        let r = npm_client(&rig, base, "secret-key", &clean, advanced)?;
        assert_eq!(r["CleanResult"], true, "{r}");
    }
    // The advanced call tells executables apart (the script allows them).
    let r = npm_client(&rig, base, "secret-key", &files.join("prog.exe"), true)?;
    assert_eq!((&r["ContainsExecutable"], &r["CleanResult"]), (&true.into(), &true.into()), "{r}");
    // A wrong key is refused.
    let r = npm_client(&rig, base, "wrong", &clean, false)?;
    assert_eq!(r["status"], 401, "{r}");
    assert_eq!(served.counter("/servers/api/infected")?, 2);
    assert_eq!(served.counter("/servers/api/clean")?, 3);
    Ok(())
}

/// A CA and a certificate for `ip`, made with openssl in `dir`.
fn certificates(dir: &Path, ip: &str) -> anyhow::Result<()> {
    let sh = format!(
        "set -e; cd {d}; \
         openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=gwtest-ca 2>/dev/null; \
         openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout srv.key -out srv.csr -subj /CN={ip} 2>/dev/null; \
         printf 'subjectAltName=IP:{ip}\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > ext; \
         openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 2 -extfile ext 2>/dev/null; \
         openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout other.key -out other.pem -days 2 -subj /CN=other-ca 2>/dev/null",
        d = dir.display()
    );
    run_ok(Command::new("sh").args(["-c", &sh])).map(|_| ())
}

#[test]
fn the_api_backend_scans_through_the_api_server_over_https_on_the_rig() -> anyhow::Result<()> {
    let mut rig = Rig::new("api2")?;
    let nginx = Nginx::start(&mut rig, &[80], 1)?;
    std::fs::write(nginx.www.join("eicar.com"), eicar())?;
    let clean = random_file(&nginx.www.join("clean-3m.bin"), 3 << 20, 32)?;
    let clamd = Clamd::start(rig.dir().join("clamd"), "300M")?;
    let pki = rig.dir().join("pki");
    std::fs::create_dir_all(&pki)?;
    certificates(&pki, SERVER_V4)?;
    std::fs::write(pki.join("key"), "farm-key")?;
    let p = pki.display();
    let dir = rig.dir().join("serve");
    let extra = format!(
        "[api_server]\nlisten = \"{SERVER_V4}:8443\"\nkey_file = \"{p}/key\"\ntls_cert = \"{p}/srv.pem\"\ntls_key = \"{p}/srv.key\"\n"
    );
    let served = Served::start(Some((&mut rig, Ns::Server)), &dir, &config(&dir, &clamd.addr(), &extra))?;

    // The edge gateway scans with the API backend only.
    let api = |ca: &str, key: &str| {
        format!(
            "backend = \"api\"\n[scan.api]\nurl = \"https://{SERVER_V4}:8443\"\nkey_file = \"{p}/{key}\"\nca_file = \"{p}/{ca}\"\ntimeout = \"20s\""
        )
    };
    let scan = api("ca.pem", "key");
    let gw = Gateway::start(&mut rig, &Settings { scan: &scan, ..Settings::default() })?;
    let out = rig.curl(&["-s", "-o", "-", "-w", "\n%{http_code}", &format!("http://{SERVER_V4}/eicar.com")])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("\n403") && text.contains("Test.EICAR"), "{text}\n{}", gw.log_text());
    let got = rig.dir().join("clean.got");
    let out =
        rig.curl(&["-sS", "--fail", "-o", &got.to_string_lossy(), &format!("http://{SERVER_V4}/clean-3m.bin")])?;
    assert!(out.status.success(), "{}\n{}", output_text(&out), gw.log_text());
    assert_eq!(sha256_file(&got)?, sha256_file(&clean)?);
    let up = rig.dir().join("up.com");
    std::fs::write(&up, eicar())?;
    let out = rig.curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-T",
        &up.to_string_lossy(),
        &format!("http://{SERVER_V4}/upload/e.com"),
    ])?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403", "an infected upload");
    assert!(!nginx.www.join("upload/e.com").exists(), "the infected upload reached the server");
    // The upload's body was known infected already (the verdict cache).
    assert!(served.counter("/servers/api/infected")? >= 1);
    assert_eq!(gw.stats()?["scanner"]["members"][0]["state"], "up", "{}", gw.stats()?);

    // Certificates are checked, and so is the key: both are scan errors
    // (on_error), never clean.
    let cases = [("other.pem", "key", "certificate"), ("ca.pem", "no-such-key", "key_file")];
    std::fs::write(pki.join("wrong"), "wrong-key")?;
    for (ca, key, want) in cases {
        let conf = rig.dir().join(format!("scan-{ca}.toml"));
        std::fs::write(&conf, format!("[scan]\nspool_dir = \"{}/spool2\"\n{}", rig.dir().display(), api(ca, key)))?;
        let out = rig.cmd(Ns::Gateway, binary()?).arg("scan").arg("--config").arg(&conf).arg(&got).output()?;
        let text = output_text(&out);
        assert_eq!(out.status.code(), Some(2), "{ca}/{key}: {text}");
        assert!(text.contains(want), "{ca}/{key}: {text}");
    }
    let conf = rig.dir().join("scan-wrong-key.toml");
    std::fs::write(
        &conf,
        format!("[scan]\nspool_dir = \"{}/spool2\"\n{}", rig.dir().display(), api("ca.pem", "wrong")),
    )?;
    let out = rig.cmd(Ns::Gateway, binary()?).arg("scan").arg("--config").arg(&conf).arg(&got).output()?;
    let text = output_text(&out);
    assert!(out.status.code() == Some(2) && text.contains("ERROR protocol") && text.contains("401"), "{text}");
    Ok(())
}
