//! Ways around the FTP gateway's scanner (issue 9), replayed on the rig
//! against pyftpdlib with real clients: a server behind NAT, a second data
//! connection, line-end forms, unbounded queues and replies, an intruder
//! on an active-mode listener, a STOU whose name the server does not give.

use std::time::Duration;

use tests::{
    Ns,
    clamd::eicar,
    ftpd::FtpEnv,
    rig::SERVER_V4,
    util::{PYTHON, output_text as text, random_file, sha256_file, wait_for},
};

/// The project's test signature that matches only the LF form of two lines
/// (`tests/data/clamav/gateway-test.ndb`, Test.LineEnds.LF).
const LF_LINES: &str = "gateway-lf-test-line-one\ngateway-lf-test-line-two\n";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A server behind NAT names its private address in the 227 reply; curl
/// and ftplib connect to the control connection's address instead. Before
/// the fix that connection was not expected, the kernel forwarded it, and
/// the file arrived unscanned.
#[test]
fn a_server_behind_nat_is_still_scanned() -> anyhow::Result<()> {
    // Many servers take data connections from any address (vsftpd's
    // pasv_promiscuous, ProFTPD's AllowForeignAddress); pyftpdlib does with
    // permit_foreign_addresses.
    let env = FtpEnv::start("fnat", "", "h.masquerade_address = '198.51.100.7'\nh.permit_foreign_addresses = True")?;
    std::fs::write(env.root.join("eicar.com"), eicar())?;
    random_file(&env.root.join("clean"), 3 << 20, 5)?;
    let out = env.curl(&format!("ftp://u:p@{SERVER_V4}/eicar.com"), "nat-eicar", false)?;
    let got = std::fs::read(env.rig.dir().join("nat-eicar")).unwrap_or_default();
    assert!(!got.windows(16).any(|w| w == b"EICAR-STANDARD-A"), "EICAR delivered: {}", text(&out));
    let out = env.ftplib(
        SERVER_V4,
        "try:\n    f.retrbinary('RETR eicar.com', lambda b: None)\nexcept ftplib.all_errors as e:\n    print(e)",
    )?;
    assert!(text(&out).contains("505 virus found in file"), "{}", text(&out));
    // Clean files pass through the rewritten 227, identical.
    let out = env.curl(&format!("ftp://u:p@{SERVER_V4}/clean"), "nat-clean", false)?;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(sha256_file(&env.rig.dir().join("nat-clean"))?, sha256_file(&env.root.join("clean"))?);
    let out = env.ftplib(SERVER_V4, "print(f.sendcmd('PASV'))")?;
    assert!(text(&out).contains(&SERVER_V4.replace('.', ",")), "the 227 names the control address: {}", text(&out));
    Ok(())
}

/// PASV, two data connections, STOR, EICAR written on the second: before
/// the fix the second was relayed unscanned and the server stored EICAR.
/// Now an expectation admits one connection: the TC program drops the
/// second's SYN (and the gateway would reset one that got through).
#[test]
fn a_second_data_connection_is_dropped_not_relayed() -> anyhow::Result<()> {
    let env = FtpEnv::start("f2nd", "", "")?;
    let py = format!(
        r#"
import socket, re, time
c = socket.create_connection(('{SERVER_V4}', 21)); c.settimeout(20); f = c.makefile('rb')
def reply():
    line = f.readline().decode()
    code = line[:3]
    while line[3:4] == '-' or not line.startswith(code + ' '):
        line = f.readline().decode()
    return line.strip()
reply()
for cmd in ['USER u', 'PASS p', 'TYPE I']:
    c.sendall(cmd.encode() + b'\r\n'); reply()
c.sendall(b'PASV\r\n'); r = reply()
nums = list(map(int, re.search(r'\((.*)\)', r).group(1).split(',')))
port = nums[4] * 256 + nums[5]
d1 = socket.create_connection(('{SERVER_V4}', port))
try:
    d2 = socket.create_connection(('{SERVER_V4}', port), timeout=3)
except OSError as e:
    d2 = None; print('second:', e)
time.sleep(0.3)
c.sendall(b'STOR evil.com\r\n'); print('STOR', reply())
try:
    if d2: d2.sendall(bytes.fromhex('{e}')); d2.close()
except OSError as e:
    print('second:', e)
d1.sendall(b'clean content'); d1.close()
print('final', reply())
"#,
        e = hex(&eicar())
    );
    let out = env.rig.run(Ns::Client, PYTHON, &["-c", &py])?;
    let stored = std::fs::read(env.root.join("evil.com")).unwrap_or_default();
    assert!(
        !stored.windows(16).any(|w| w == b"EICAR-STANDARD-A"),
        "EICAR stored through a second data connection: {}",
        text(&out)
    );
    let dropped = env.gw.counter("/kernel/steer/drop_second_data/packets")?;
    let reset = env.gw.log_text().contains("no transfer is waiting for it");
    assert!(dropped > 0 || reset, "the second connection was neither dropped nor reset: {}", text(&out));
    assert!(text(&out).contains("final 226"), "the first connection carried the upload: {}", text(&out));
    Ok(())
}

/// In ASCII mode the receiver stores what the wire does not carry: a
/// signature on the LF form matched neither download nor upload before.
#[test]
fn ascii_mode_transfers_are_scanned_as_stored() -> anyhow::Result<()> {
    let env = FtpEnv::start("fascii", "", "")?;
    std::fs::write(env.root.join("lines.txt"), LF_LINES)?;
    let up = env.rig.dir().join("up-lines.txt");
    std::fs::write(&up, LF_LINES)?;
    let out = env.ftplib(
        SERVER_V4,
        &format!(
            "for cmd in ['retr', 'stor']:\n    try:\n        if cmd == 'retr': f.retrlines('RETR lines.txt', lambda l: None)\n        else: f.storlines('STOR stored-lines.txt', open('{}','rb'))\n        print(cmd, 'OK')\n    except ftplib.all_errors as e:\n        print(cmd, e)\n",
            up.display()
        ),
    )?;
    let t = text(&out);
    assert!(t.contains("retr 505 virus found in file: Test.LineEnds.LF"), "{t}");
    assert!(t.contains("stor 505 virus found in file: Test.LineEnds.LF"), "{t}");
    assert!(!env.root.join("stored-lines.txt").exists(), "the upload's fragment stayed");
    // Block and compressed modes carry files the scanner cannot read.
    let out =
        env.ftplib(SERVER_V4, "try:\n    print(f.sendcmd('MODE Z'))\nexcept ftplib.all_errors as e:\n    print(e)")?;
    assert!(text(&out).contains("504 Only MODE S"), "{}", text(&out));
    Ok(())
}

/// A long multi-line reply (STAT of a big directory) is bounded as a reply,
/// not as a line: before the fix it ended the session.
#[test]
fn a_long_multi_line_reply_passes() -> anyhow::Result<()> {
    let env = FtpEnv::start("fstat", "", "")?;
    for i in 0..300 {
        std::fs::write(env.root.join(format!("a-file-with-a-longish-name-{i:04}.txt")), b"x")?;
    }
    let out =
        env.ftplib(SERVER_V4, "r=f.sendcmd('STAT .')\nprint(len(r), r.splitlines()[-1])\nprint(f.voidcmd('NOOP'))")?;
    let t = text(&out);
    let len: usize = t.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(len > 8192, "STAT reply of {len} bytes: {t}");
    assert!(t.contains("200"), "the session goes on: {t}");
    Ok(())
}

/// Commands sent while the gateway holds a transfer's final reply are
/// queued up to max_pending_commands, then the session ends with 421.
/// Before the fix the queue grew without bound (12 MB → 250 MB RSS).
#[test]
fn commands_queued_during_a_transfer_are_bounded() -> anyhow::Result<()> {
    let env = FtpEnv::start("fpend", "", "")?;
    random_file(&env.root.join("big"), 64 << 20, 3)?;
    let py = format!(
        r#"
import socket, re, time
c = socket.create_connection(('{SERVER_V4}', 21)); c.settimeout(30); f = c.makefile('rb')
def reply():
    line = f.readline().decode()
    code = line[:3]
    while line[3:4] == '-' or not line.startswith(code + ' '):
        line = f.readline().decode()
    return line.strip()
reply()
for cmd in ['USER u', 'PASS p', 'TYPE I']:
    c.sendall(cmd.encode() + b'\r\n'); reply()
c.sendall(b'PASV\r\n'); r = reply()
nums = list(map(int, re.search(r'\((.*)\)', r).group(1).split(',')))
d = socket.create_connection(('{SERVER_V4}', nums[4] * 256 + nums[5]))
c.sendall(b'RETR big\r\n'); print(reply())
# Never read the data connection; flood the control connection.
c.settimeout(0.01)
end = time.time() + 20
seen = b''
while time.time() < end and b'421' not in seen:
    try:
        c.sendall(b'NOOP\r\n' * 200)
    except OSError:
        break
    try:
        seen += c.recv(65536)
    except OSError:
        pass
    time.sleep(0.01)
c.settimeout(5)
try:
    while b'421' not in seen:
        more = c.recv(65536)
        if not more: break
        seen += more
except OSError:
    pass
print('421' if b'421 Too many commands' in seen else 'no 421')
"#
    );
    let out = env.rig.run(Ns::Client, PYTHON, &["-c", &py])?;
    let t = text(&out);
    assert!(t.contains("\n421"), "{t}");
    Ok(())
}

/// Each client may have only so many passive data connections announced:
/// the kernel map they live in is shared by everyone.
#[test]
fn expectations_are_capped_per_client() -> anyhow::Result<()> {
    let env = FtpEnv::start("fexpcap", "max_expectations_per_client = 3", "")?;
    let py = format!(
        "import ftplib\nheld=[]\nfor i in range(4):\n    f=ftplib.FTP(); f.connect('{SERVER_V4}',21,timeout=10); f.login('u','p')\n\
         \x20   try: print(f.sendcmd('PASV')[:3])\n    except ftplib.all_errors as e: print(str(e)[:3])\n    held.append(f)\n\
         g=ftplib.FTP(source_address=('198.18.0.3',0)); g.connect('{SERVER_V4}',21,timeout=10); g.login('u','p')\nprint(g.sendcmd('PASV')[:3])\n"
    );
    let out = env.rig.run(Ns::Client, PYTHON, &["-c", &py])?;
    let t = text(&out);
    assert_eq!(t.split_whitespace().collect::<Vec<_>>(), ["227", "227", "227", "425", "227"], "{t}");
    Ok(())
}

/// An active-mode listener of the gateway's takes the server's connection
/// only: anyone else who finds its port is reset, and the transfer still
/// comes from the server. FAKE (fault injector): pyftpdlib connects the
/// moment it gets PORT; it is slowed down here so that an intruder can
/// connect first, which a server that connects at RETR (vsftpd) allows.
#[test]
fn an_active_mode_listener_accepts_only_the_server() -> anyhow::Result<()> {
    let slow = "from pyftpdlib.handlers import ActiveDTP\nimport time\nclass Slow(ActiveDTP):\n    \
                def __init__(self, *a, **k):\n        time.sleep(3)\n        super().__init__(*a, **k)\nh.active_dtp = Slow";
    let env = FtpEnv::start("factive", "", slow)?;
    env.rig.ip(Ns::Server, "addr add 198.19.0.3/24 dev eth0")?;
    random_file(&env.root.join("f"), 100_000, 8)?;
    let go = env.rig.dir().join("go");
    let got = env.rig.dir().join("active-got");
    let py = format!(
        r#"
import ftplib, os, socket, time
f = ftplib.FTP(); f.connect('{SERVER_V4}', 21, timeout=30); f.login('u', 'p'); f.voidcmd('TYPE I')
l = socket.socket(); l.bind(('198.18.0.2', 0)); l.listen(1)
h, p = l.getsockname()
f.sendcmd('PORT ' + ','.join(h.split('.') + [str(p >> 8), str(p & 255)]))
while not os.path.exists('{go}'): time.sleep(0.05)
f.sendcmd('RETR f')
d, _ = l.accept(); data = b''
while True:
    c = d.recv(65536)
    if not c: break
    data += c
open('{got}', 'wb').write(data); print(f.voidresp())
"#,
        go = go.display(),
        got = got.display()
    );
    let piped = || std::process::Stdio::piped();
    let client = env.rig.cmd(Ns::Client, PYTHON).args(["-c", &py]).stdout(piped()).stderr(piped()).spawn()?;
    let port = wait_for("the gateway's active-mode listener", Duration::from_secs(10), || {
        let out = env.rig.run(Ns::Gateway, "ss", &["-Hltn", "src", "198.19.0.1"]).ok()?;
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .find_map(|w| w.strip_prefix("198.19.0.1:")?.parse::<u16>().ok())
    })?;
    let intruder = format!(
        "import socket\ns=socket.socket(); s.bind(('198.19.0.3',0)); s.settimeout(20); s.connect(('198.19.0.1',{port}))\n\
         s.sendall(b'INTRUDER'*1000); s.shutdown(socket.SHUT_WR)\n\
         try:\n    print('read', len(s.recv(100)))\nexcept OSError as e:\n    print('reset', e)\n"
    );
    let intruder = env.rig.cmd(Ns::Server, PYTHON).args(["-c", &intruder]).stdout(piped()).stderr(piped()).spawn()?;
    // The intruder is in the listener's queue before the (slowed) server.
    wait_for("the intruder's connection", Duration::from_secs(10), || {
        let out = env.rig.run(Ns::Gateway, "ss", &["-Htn", "dst", "198.19.0.3"]).ok()?;
        (!out.stdout.is_empty()).then_some(())
    })?;
    std::fs::write(&go, b"")?;
    let client = client.wait_with_output()?;
    let intruder = intruder.wait_with_output()?;
    assert!(client.status.success(), "{}", text(&client));
    assert_eq!(sha256_file(&got)?, sha256_file(&env.root.join("f"))?, "the transfer did not come from the server");
    assert!(
        text(&intruder).starts_with("reset") || text(&intruder).starts_with("read 0"),
        "intruder: {}",
        text(&intruder)
    );
    assert!(env.gw.log_text().contains("only the server"), "no log line for the intruder");
    Ok(())
}

/// FAKE (fault injector): pyftpdlib made to answer STOU with a bare `150`
/// that does not name the stored file (as some servers do). The gateway
/// must not DELE the client's STOU argument: that may be someone's file.
#[test]
fn stou_without_a_name_deletes_nothing() -> anyhow::Result<()> {
    let server = "class H(h):\n    def respond(self, resp, logfun=None):\n        \
                  if resp.startswith('150 FILE:'): resp = '150 Ok to send data.'\n        \
                  return super().respond(resp) if logfun is None else super().respond(resp, logfun)\nh = H";
    let env = FtpEnv::start("fstou", "", server)?;
    std::fs::write(env.root.join("keep.txt"), b"somebody's data")?;
    let e = env.rig.dir().join("e.com");
    std::fs::write(&e, eicar())?;
    let out = env.ftplib(
        SERVER_V4,
        &format!(
            "try:\n    f.storbinary('STOU keep.txt', open('{}','rb'))\nexcept ftplib.all_errors as e:\n    print(e)",
            e.display()
        ),
    )?;
    assert!(text(&out).contains("505 virus found in file"), "{}", text(&out));
    assert_eq!(std::fs::read(env.root.join("keep.txt"))?, b"somebody's data", "the client's argument was deleted");
    Ok(())
}
