//! Configuration and environment errors: exit status 2 and one sentence.

use std::process::{Command, Output};

use tests::{Ns, Rig, gateway::binary};

fn check(rig: &Rig, toml: &str) -> anyhow::Result<Output> {
    let path = rig.dir().join("bad.toml");
    std::fs::write(&path, toml)?;
    Ok(rig.cmd(Ns::Gateway, binary()?).arg("check-config").arg(&path).output()?)
}

fn assert_one_sentence(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "more than one line: {err}");
    assert!(err.contains(needle), "{needle:?} not in: {err}");
}

#[test]
fn configuration_errors_exit_2_with_one_sentence() -> anyhow::Result<()> {
    let rig = Rig::new("cfg")?;
    let ok = check(&rig, "[steering]\ninterfaces = [\"cli0\"]\n")?;
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));

    assert_one_sentence(&check(&rig, "[steering\ninterfaces = [\"cli0\"]\n")?, "line 1");
    assert_one_sentence(
        &check(&rig, "[steering]\ninterfaces = [\"cli0\"]\nhttp_portz = [80]\n")?,
        "line 3, column 1: unknown field `http_portz`",
    );
    assert_one_sentence(&check(&rig, "[steering]\ninterfaces = [\"wan9\"]\n")?, "\"wan9\", which is not an interface");
    assert_one_sentence(&check(&rig, "[steering]\ninterfaces = [\"cli0\"]\nbypass = [\"10.1.2.0/40\"]\n")?, "line 3");
    assert_one_sentence(&check(&rig, "[steering]\ninterfaces = [\"cli0\"]\nblock = [\"not-a-cidr\"]\n")?, "line 3");
    assert_one_sentence(
        &check(&rig, "[steering]\ninterfaces = [\"cli0\"]\nxdp_mode = \"turbo\"\n")?,
        "unknown variant `turbo`",
    );

    // `run` with a bad file fails the same way, before touching the kernel.
    let path = rig.dir().join("bad.toml");
    let out = rig.cmd(Ns::Gateway, binary()?).arg("run").arg("--config").arg(&path).output()?;
    assert_one_sentence(&out, "unknown variant `turbo`");
    let out = Command::new(binary()?).args(["check-config", "/nonexistent/gw.toml"]).output()?;
    assert_one_sentence(&out, "cannot read configuration file /nonexistent/gw.toml");
    Ok(())
}

#[test]
fn running_without_privileges_is_one_sentence() -> anyhow::Result<()> {
    let rig = Rig::new("priv")?;
    let path = rig.dir().join("ok.toml");
    std::fs::write(
        &path,
        format!("[steering]\ninterfaces = [\"cli0\"]\n[control]\nsocket = \"{}/c.sock\"\n", rig.dir().display()),
    )?;
    // setpriv drops to nobody with no capabilities.
    let out = rig
        .cmd(Ns::Gateway, "setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
        .arg(binary()?)
        .arg("run")
        .arg("--config")
        .arg(&path)
        .output()?;
    assert_one_sentence(&out, "needs root or the capabilities CAP_BPF and CAP_NET_ADMIN");
    Ok(())
}
