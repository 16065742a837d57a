//! The HTTP side of the rig: real nginx for plain files, a hand-framing
//! origin server for what nginx will not produce (encoded, malformed,
//! endless, decompression bombs), real clamd (or c-icap), and the gateway
//! steering ports 80 and 8081. The origin is a peer for framing cases, not a
//! fake of anything the gateway talks to.

use std::{path::PathBuf, time::Duration};

use anyhow::ensure;

use crate::{
    Gateway, Ns, Rig,
    clamd::{Clamd, eicar},
    gateway::Settings,
    nginx::Nginx,
    rig::SERVER_V4,
    util::{output_text as text, sha256, wait_for},
};

/// The origin server (Python, port 8081); `sys.argv[1]` may add routes.
pub const ORIGIN: &str = r#"
import brotli, gzip, socket, struct, threading, time, zlib
E = b'X5O!P%@AP[4\\PZX54(P^)7CC)7}$' + b'EICAR-STANDARD-' + b'ANTIVIRUS-TEST-FILE!$H+H*'
def resp(head, body=b''):
    return head.replace('\n', '\r\n').encode() + b'\r\n' + body
def clen(extra, body):
    return resp('HTTP/1.1 200 OK\nContent-Length: %d\n%s' % (len(body), extra), body)
R = {
 '/gz-eicar': clen('Content-Encoding: gzip\n', gzip.compress(E)),
 '/gz2-eicar': clen('Content-Encoding: gzip, gzip\n', gzip.compress(gzip.compress(E))),
 '/gz-clean': clen('Content-Encoding: gzip\n', gzip.compress(b'just text ' * 1000)),
 '/br-eicar': clen('Content-Encoding: br\n', brotli.compress(E)),
 '/gz-br-eicar': clen('Content-Encoding: gzip, br\n', brotli.compress(gzip.compress(E))),
 '/br-clean': clen('Content-Encoding: br\n', brotli.compress(b'just text ' * 1000)),
 '/deflate-eicar': clen('Content-Encoding: deflate\n', zlib.compress(E)),
 '/rawdeflate-eicar': clen('Content-Encoding: deflate\n', zlib.compress(E, wbits=-15)),
 '/bad-gzip': clen('Content-Encoding: gzip\n', b'this is not gzip at all'),
 '/compress': clen('Content-Encoding: compress\n', b'whatever'),
 '/foo-eicar': clen('Content-Encoding: foo\n', E),
 '/identity-gz-eicar': clen('Content-Encoding: identity, gzip\n', gzip.compress(E)),
 '/chunked1-eicar': resp('HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n', b''.join(b'1\r\n' + bytes([c]) + b'\r\n' for c in E) + b'0\r\n\r\n'),
 '/close-eicar': resp('HTTP/1.0 200 OK\n', E),
 '/close-clean': resp('HTTP/1.0 200 OK\n', b'clean body until close'),
 '/close-cut': resp('HTTP/1.1 200 OK\nContent-Length: 100000\n', b'only this much'),
 '/204': resp('HTTP/1.1 204 No Content\n'),
 '/304': resp('HTTP/1.1 304 Not Modified\nETag: "x"\n'),
 '/te-cl': resp('HTTP/1.1 200 OK\nContent-Length: 5\nTransfer-Encoding: chunked\n', b'5\r\nhello\r\n0\r\n\r\n'),
 '/bad-chunk': resp('HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n', b'zz\r\nhello\r\n0\r\n\r\n'),
}
def bomb(gib, layers):
    # zeros, gzipped `layers` times: a few KiB on the wire
    z = zlib.compressobj(1, zlib.DEFLATED, 31)
    block = bytes(1 << 20)
    data = b''.join(z.compress(block) for _ in range(gib * 1024)) + z.flush()
    for _ in range(layers - 1):
        data = gzip.compress(data, 9)
    return clen('Content-Encoding: %s\n' % ', '.join(['gzip'] * layers), data)
def endless(c):
    # a chunked body that never ends: internet radio, MJPEG
    c.sendall(resp('HTTP/1.1 200 OK\nTransfer-Encoding: chunked\nContent-Type: audio/mpeg\n'))
    block = PATTERN
    try:
        while True:
            c.sendall(b'%x\r\n' % len(block) + block + b'\r\n')
    except OSError:
        pass
def stall(c):
    # 12 MiB of a declared 13 MiB, then silence: the body stays held
    c.sendall(resp('HTTP/1.1 200 OK\nContent-Length: %d\n' % (13 << 20)))
    try:
        for _ in range(12 * 16):
            c.sendall(PATTERN)
        time.sleep(60)
    except OSError:
        pass
def reset_mid(c):
    # 2 MiB of a declared 4 MiB, then a reset
    c.sendall(resp('HTTP/1.1 200 OK\nContent-Length: %d\n' % (4 << 20)) + PATTERN * 32)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
    c.close()
PATTERN = bytes((i * 7 + 3) % 251 for i in range(65536))
LAZY = {
 '/bomb': lambda: bomb(1, 2),
 '/gz3-eicar': lambda: clen('Content-Encoding: gzip, gzip, gzip\n', gzip.compress(gzip.compress(gzip.compress(E)))),
 '/zeros-gz-20m': lambda: clen('Content-Encoding: gzip\n', gzip.compress(bytes(20 << 20), 1)),
}
STREAM = {'/endless': endless, '/stall': stall, '/reset-mid': reset_mid}
def serve(c):
    buf = b''
    while True:
        while b'\r\n\r\n' not in buf:
            d = c.recv(65536)
            if not d:
                return
            buf += d
        head, buf = buf.split(b'\r\n\r\n', 1)
        path = head.split(b' ')[1].decode()
        if path == '/ws':
            c.sendall(resp('HTTP/1.1 101 Switching Protocols\nUpgrade: websocket\nConnection: Upgrade\n'))
            while True:
                if buf:
                    c.sendall(b'echo:' + buf)
                    buf = b''
                d = c.recv(65536)
                if not d:
                    return
                buf = d
        if path in STREAM:
            STREAM[path](c)
            return
        if path in LAZY and path not in R:
            R[path] = LAZY[path]()
        out = R.get(path, resp('HTTP/1.1 404 Not Found\nContent-Length: 0\n'))
        c.sendall(out)
        if path.startswith('/close'):
            c.close()
            return
import sys
exec(sys.argv[1] if len(sys.argv) > 1 else '')
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('::', 8081)); s.listen(256)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// A rig with nginx (port 80), the origin (8081), clamd and the gateway.
pub struct Web {
    /// The rig.
    pub rig: Rig,
    /// nginx, serving `eicar.com`, `eicar.zip` and `tail-10m.bin` (10 MiB
    /// with EICAR at its end).
    pub nginx: Nginx,
    /// The scanner.
    pub clamd: Clamd,
    /// The gateway (`None` while it is being restarted).
    pub gw: Option<Gateway>,
}

/// How to build a [`Web`] rig.
#[derive(Default)]
pub struct WebSettings<'a> {
    /// Extra `[scan]` lines.
    pub scan: &'a str,
    /// Extra `[http]` lines.
    pub http: &'a str,
    /// Extra `[proxy]` lines.
    pub proxy: &'a str,
    /// Extra `[steering]` lines.
    pub steering: &'a str,
    /// Scan through c-icap (in the gateway namespace) instead of clamd.
    pub icap: bool,
    /// Python run by the origin before it serves (to add routes).
    pub origin_extra: &'a str,
    /// Extra clamd.conf lines.
    pub clamd_conf: &'a str,
}

impl Web {
    /// A rig named after `tag` with default settings but `scan` lines.
    pub fn start(tag: &str, scan: &str) -> anyhow::Result<Web> {
        Web::with(tag, &WebSettings { scan, ..WebSettings::default() })
    }

    /// A rig named after `tag`.
    pub fn with(tag: &str, s: &WebSettings<'_>) -> anyhow::Result<Web> {
        let mut rig = Rig::new(tag)?;
        let nginx = Nginx::start(&mut rig, &[80], 0)?;
        std::fs::write(nginx.www.join("eicar.com"), eicar())?;
        let mut big = random_bytes(10 << 20);
        big.extend_from_slice(&eicar());
        std::fs::write(nginx.www.join("tail-10m.bin"), &big)?;
        crate::clamd::eicar_zip(&nginx.www.join("eicar.zip"), "a/eicar.com")?;
        let mut cmd = rig.cmd(Ns::Server, crate::util::PYTHON);
        cmd.args(["-c", ORIGIN, s.origin_extra]);
        let log = rig.dir().join("origin.log");
        rig.spawn(cmd, &log)?;
        wait_for("the origin server", Duration::from_secs(10), || {
            let out = rig.run(Ns::Server, "ss", &["-Hltn", "sport = :8081"]).ok()?;
            (!out.stdout.is_empty()).then_some(())
        })?;
        let clamd = Clamd::start_with(rig.dir().join("clamd"), "300M", s.clamd_conf)?;
        let scan = if s.icap {
            let c = crate::cicap::CIcap::start(&mut rig, Ns::Gateway, 1344, &clamd.socket)?;
            format!("backend = \"icap\"\nicap = [\"{}\"]\n{}", c.url, s.scan)
        } else {
            format!("clamd = \"{}\"\n{}", clamd.addr(), s.scan)
        };
        let steering = format!("http_ports = [80, 8081]\n{}", s.steering);
        let settings =
            Settings { steering: &steering, scan: &scan, http: s.http, proxy: s.proxy, ..Settings::default() };
        let gw = Gateway::start(&mut rig, &settings)?;
        Ok(Web { rig, nginx, clamd, gw: Some(gw) })
    }

    /// The running gateway.
    pub fn gw(&self) -> &Gateway {
        self.gw.as_ref().expect("gateway running")
    }

    /// curl GET; returns (status, body file).
    pub fn get(&self, url: &str, extra: &[&str]) -> anyhow::Result<(u16, PathBuf)> {
        let dest = self.rig.dir().join(format!("got-{}", sha256(url.as_bytes())));
        let d = dest.to_string_lossy().to_string();
        let mut args = vec!["-sS", "-m", "60", "-o", &d, "-w", "%{http_code}"];
        args.extend_from_slice(extra);
        args.push(url);
        let out = self.rig.curl(&args)?;
        ensure!(out.status.success(), "curl {url}: {}", text(&out));
        Ok((String::from_utf8_lossy(&out.stdout).trim().parse()?, dest))
    }

    /// Raw bytes to the server's port through a client socket; returns all
    /// bytes received until the gateway closes or 3 s of silence.
    pub fn raw(&self, port: u16, request: &[u8]) -> anyhow::Result<Vec<u8>> {
        let hex: String = request.iter().map(|b| format!("{b:02x}")).collect();
        let py = format!(
            "import socket,sys\ns=socket.create_connection(('{SERVER_V4}',{port}))\ns.settimeout(3)\ns.sendall(bytes.fromhex('{hex}'))\nd=b''\n\
             try:\n    while True:\n        c=s.recv(65536)\n        if not c: break\n        d+=c\nexcept OSError: pass\nsys.stdout.buffer.write(d)\n"
        );
        let out = self.rig.run(Ns::Client, crate::util::PYTHON, &["-c", &py])?;
        Ok(out.stdout)
    }
}

/// The status lines in a raw response stream.
pub fn status_lines(raw: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(raw).lines().filter(|l| l.starts_with("HTTP/1.")).map(str::to_string).collect()
}

/// Deterministic bytes (xorshift) for bodies whose content does not matter.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e3779b97f4a7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
