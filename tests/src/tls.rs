//! The HTTPS side of the rig (issue 14): nginx with TLS in the server
//! namespace, its certificates issued by a test upstream CA (made with
//! Debian's python3-cryptography, which can also make an expired one), real
//! clamd, and the gateway intercepting port 443 with a CA made by its own
//! `gateway ca new`. Clients are curl, openssl s_client and Chromium in the
//! client namespace.

use std::{
    path::{Path, PathBuf},
    process::Output,
};

use anyhow::{Context as _, ensure};

use crate::{
    Gateway, Rig,
    clamd::{Clamd, eicar, eicar_zip},
    gateway::{Settings, binary, config},
    nginx::Nginx,
    rig::{Ns, SERVER_V4},
    util::{PYTHON, output_text, run_ok, sha256},
};

/// Server names nginx answers, each with its own certificate.
pub const WWW: &str = "www.example.test";
/// Listed in the gateway's `bypass_sni`: spliced.
pub const BANK: &str = "bank.example.test";
/// A certificate that ended 30 days ago.
pub const EXPIRED: &str = "expired.example.test";
/// A self-signed certificate.
pub const SELF_SIGNED: &str = "selfsigned.example.test";
/// Served with www's certificate: the name does not match.
pub const WRONG_NAME: &str = "wrong.example.test";

/// Makes the test PKI in `dir`: `upstream-ca.pem` and, each with its key,
/// `www` (also valid for the server's address), `bank`, `expired`, `self`.
const PKI: &str = r#"
import datetime, ipaddress, sys
from cryptography import x509
from cryptography.x509.oid import NameOID, ExtendedKeyUsageOID
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
d, server = sys.argv[1], sys.argv[2]
now = datetime.datetime.utcnow()
day = datetime.timedelta(days=1)
def name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, 'rig')])
def save(stem, cert, key):
    open('%s/%s.pem' % (d, stem), 'wb').write(cert.public_bytes(serialization.Encoding.PEM))
    open('%s/%s.key' % (d, stem), 'wb').write(key.private_bytes(serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
ca_key = ec.generate_private_key(ec.SECP256R1())
ku = dict(content_commitment=False, key_encipherment=False, data_encipherment=False, key_agreement=False,
          encipher_only=False, decipher_only=False)
ca = (x509.CertificateBuilder().subject_name(name('Rig Upstream Root')).issuer_name(name('Rig Upstream Root'))
      .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
      .not_valid_before(now - day).not_valid_after(now + 3650 * day)
      .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
      .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, **ku), critical=True)
      .sign(ca_key, hashes.SHA256()))
save('upstream-ca', ca, ca_key)
def leaf(stem, dns, ips, start, end, self_signed=False):
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName(n) for n in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    b = (x509.CertificateBuilder().subject_name(name(dns[0]))
         .issuer_name(name(dns[0]) if self_signed else ca.subject)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(start).not_valid_after(end)
         .add_extension(x509.SubjectAlternativeName(sans), critical=False)
         .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
    save(stem, b.sign(key if self_signed else ca_key, hashes.SHA256()), key)
leaf('www', ['www.example.test'], [server], now - day, now + 365 * day)
leaf('bank', ['bank.example.test'], [], now - day, now + 365 * day)
leaf('expired', ['expired.example.test'], [], now - 400 * day, now - 30 * day)
leaf('self', ['selfsigned.example.test'], [], now - day, now + 365 * day, self_signed=True)
"#;

/// Writes the test PKI into `dir` (see [`PKI`]).
pub fn make_pki(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    run_ok(std::process::Command::new(PYTHON).args(["-c", PKI]).arg(dir).arg(SERVER_V4))
        .context("making the test PKI (python3-cryptography)")?;
    Ok(())
}

/// nginx server blocks on 443 (IPv4 and IPv6), one per name.
fn servers(pki: &Path, www: &Path) -> String {
    let block = |names: &str, stem: &str, default: bool| {
        let d = if default { " default_server" } else { "" };
        format!(
            "  server {{\n    listen 443 ssl{d};\n    listen [::]:443 ssl{d};\n    server_name {names};\n    \
             ssl_certificate {p}/{stem}.pem;\n    ssl_certificate_key {p}/{stem}.key;\n    \
             ssl_protocols TLSv1.2 TLSv1.3;\n    root {w};\n    \
             location /upload/ {{ dav_methods PUT; create_full_put_path on; }}\n    \
             location = /sink {{ return 204; }}\n    location /gz/ {{ add_header Content-Encoding gzip; }}\n  }}\n",
            p = pki.display(),
            w = www.display()
        )
    };
    [
        block(&format!("{WWW} {WRONG_NAME}"), "www", true),
        block(BANK, "bank", false),
        block(EXPIRED, "expired", false),
        block(SELF_SIGNED, "self", false),
    ]
    .concat()
}

/// A rig with TLS nginx, clamd and the gateway intercepting port 443.
pub struct TlsEnv {
    /// The rig.
    pub rig: Rig,
    /// nginx (plain on 80, TLS on 443 for every name above).
    pub nginx: Nginx,
    /// The scanner.
    pub clamd: Clamd,
    /// The gateway (`None` while it is being restarted).
    pub gw: Option<Gateway>,
    /// The test PKI's directory (`upstream-ca.pem` and the servers').
    pub pki: PathBuf,
    /// The gateway's CA certificate, which the clients trust.
    pub gw_ca: PathBuf,
    /// Extra `[steering]` lines for the next (re)start.
    pub steering: String,
}

impl TlsEnv {
    /// Builds the rig and starts the gateway; `tls` are extra `[tls]` lines.
    pub fn start(tag: &str, tls: &str) -> anyhow::Result<TlsEnv> {
        let mut env = TlsEnv::prepare(tag, 0)?;
        env.restart(tls)?;
        Ok(env)
    }

    /// Builds the rig without a gateway (nginx with `workers`, 0 for one
    /// process), for benchmarks that measure without it first.
    pub fn prepare(tag: &str, workers: u32) -> anyhow::Result<TlsEnv> {
        let mut rig = Rig::new(tag)?;
        let pki = rig.dir().join("pki");
        make_pki(&pki)?;
        let www = rig.dir().join("nginx/www");
        let nginx = Nginx::start_with(&mut rig, Ns::Server, &[80], workers, &servers(&pki, &www))?;
        std::fs::write(nginx.www.join("eicar.com"), eicar())?;
        eicar_zip(&nginx.www.join("eicar.zip"), "a/eicar.com")?;
        std::fs::create_dir_all(nginx.www.join("gz"))?;
        std::fs::write(nginx.www.join("gz/eicar.bin"), gzip(&eicar())?)?;
        let clamd = Clamd::start(rig.dir().join("clamd"), "300M")?;
        let ca_dir = rig.dir().join("gateway-ca");
        let out = run_ok(std::process::Command::new(binary()?).args(["ca", "new", "--out"]).arg(&ca_dir))?;
        ensure!(ca_dir.join("ca.key").exists(), "gateway ca new wrote no key: {}", output_text(&out));
        Ok(TlsEnv { rig, nginx, clamd, gw: None, pki, gw_ca: ca_dir.join("ca.pem"), steering: String::new() })
    }

    /// The gateway's configuration with `tls` as extra `[tls]` lines.
    pub fn config(&self, tls: &str) -> String {
        let scan = format!("clamd = \"{}\"", self.clamd.addr());
        let mut text = config(&self.rig, &Settings { scan: &scan, steering: &self.steering, ..Settings::default() });
        let ca = self.gw_ca.display();
        text.push_str(&format!(
            "\n[tls]\nintercept = true\nca_cert = \"{ca}\"\nca_key = \"{}\"\nupstream_roots = \"{}\"\n\
             bypass_sni = [\"{BANK}\"]\n{tls}\n",
            self.gw_ca.with_file_name("ca.key").display(),
            self.pki.join("upstream-ca.pem").display()
        ));
        text
    }

    /// (Re)starts the gateway with extra `[tls]` lines.
    pub fn restart(&mut self, tls: &str) -> anyhow::Result<()> {
        self.stop()?;
        let text = self.config(tls);
        self.gw = Some(Gateway::start_with(&mut self.rig, &text)?);
        Ok(())
    }

    /// Stops the gateway, if one runs.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(gw) = self.gw.take() {
            gw.stop(&mut self.rig, libc::SIGTERM)?;
        }
        Ok(())
    }

    /// The running gateway.
    pub fn gw(&self) -> &Gateway {
        self.gw.as_ref().expect("gateway running")
    }

    /// curl in the client namespace for `https://NAME/PATH` (NAME resolved
    /// to the server), trusting `ca`; returns curl's output (any status).
    pub fn curl(&self, name: &str, path: &str, ca: &Path, extra: &[&str]) -> anyhow::Result<Output> {
        let resolve = format!("{name}:443:{SERVER_V4}");
        let ca = ca.to_string_lossy().to_string();
        let url = format!("https://{name}{path}");
        let mut args = vec!["-sS", "-m", "60", "--resolve", &resolve, "--cacert", &ca];
        args.extend_from_slice(extra);
        args.push(&url);
        self.rig.curl(&args)
    }

    /// GET through the gateway trusting its CA; returns (status, body file).
    pub fn get(&self, name: &str, path: &str, extra: &[&str]) -> anyhow::Result<(u16, PathBuf)> {
        let dest = self.rig.dir().join(format!("got-{}", sha256(format!("{name}{path}").as_bytes())));
        let d = dest.to_string_lossy().to_string();
        let mut args = vec!["-o", d.as_str(), "-w", "%{http_code}"];
        args.extend_from_slice(extra);
        let out = self.curl(name, path, &self.gw_ca, &args)?;
        ensure!(out.status.success(), "curl https://{name}{path}: {}", output_text(&out));
        Ok((String::from_utf8_lossy(&out.stdout).trim().parse()?, dest))
    }

    /// The upstream CA (which nginx's certificates chain to).
    pub fn upstream_ca(&self) -> PathBuf {
        self.pki.join("upstream-ca.pem")
    }
}

fn gzip(bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("gzip")
        .arg("-c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running gzip")?;
    child.stdin.take().context("gzip stdin")?.write_all(bytes)?;
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "gzip failed");
    Ok(out.stdout)
}
