//! The gateway's CA and the leaf certificates it mints for intercepted
//! server names: one key pair per process for every leaf (ECDSA P-256),
//! each leaf valid within the CA's validity and no longer than the real
//! server's certificate, kept in a bounded cache with a TTL.

use std::{
    collections::{HashMap, VecDeque},
    fs,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PublicKeyData as _, SerialNumber,
};
use rustls::{
    crypto::ring::sign::any_supported_type,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    sign::{CertifiedKey, SigningKey},
};
use time::OffsetDateTime;

/// Why the CA could not be used or made. One sentence each, for the admin.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The certificate file holds no parseable certificate.
    #[error("{0} holds no PEM X.509 certificate")]
    BadCert(PathBuf),
    /// The certificate is not allowed to sign certificates.
    #[error("{0} is not a CA certificate (basicConstraints CA:TRUE and keyCertSign are needed)")]
    NotCa(PathBuf),
    /// The certificate's validity has ended.
    #[error("the CA certificate {0} has expired")]
    Expired(PathBuf),
    /// The key does not parse.
    #[error("{0} is not a PKCS#8 PEM private key (convert one with `openssl pkcs8 -topk8 -nocrypt`)")]
    BadKey(PathBuf),
    /// Key and certificate do not belong together.
    #[error("the CA key {key} does not belong to the CA certificate {cert}")]
    Mismatch {
        /// The certificate.
        cert: PathBuf,
        /// The key.
        key: PathBuf,
    },
    /// `gateway ca new` would overwrite a file.
    #[error("{0} already exists; not overwriting it")]
    Exists(PathBuf),
    /// Writing a file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// rcgen could not make a key or certificate.
    #[error("making a key or certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Why a leaf could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// rcgen refused (a name it cannot put in a certificate).
    #[error("minting a certificate for {name}: {source}")]
    Generate {
        /// The server name.
        name: String,
        /// Why.
        source: rcgen::Error,
    },
    /// The CA's validity has ended (or the server's ended before now).
    #[error("no validity left to mint a certificate for {0} (the CA or the server's certificate has expired)")]
    NoValidity(String),
    /// The CA (for [`bench`]).
    #[error(transparent)]
    Ca(#[from] CaError),
}

/// The gateway's CA, loaded and checked.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ca {{ not_before: {}, not_after: {} }}", self.not_before, self.not_after)
    }
}

impl Ca {
    /// Loads the CA certificate and key and checks that the certificate is
    /// a CA, current, and that the key is its own.
    pub fn load(cert: &Path, key: &Path) -> Result<Ca, CaError> {
        let read = |p: &Path| fs::read_to_string(p).map_err(|source| CaError::Read { path: p.to_owned(), source });
        let (cert_pem, key_pem) = (read(cert)?, read(key)?);
        let der = pem_der(&cert_pem).ok_or_else(|| CaError::BadCert(cert.to_owned()))?;
        let (_, x509) = x509_parser::parse_x509_certificate(&der).map_err(|_| CaError::BadCert(cert.to_owned()))?;
        let signs = x509.key_usage().ok().flatten().is_none_or(|ku| ku.value.key_cert_sign());
        if !x509.is_ca() || !signs {
            return Err(CaError::NotCa(cert.to_owned()));
        }
        let (not_before, not_after) =
            (x509.validity().not_before.to_datetime(), x509.validity().not_after.to_datetime());
        if not_after <= OffsetDateTime::now_utc() {
            return Err(CaError::Expired(cert.to_owned()));
        }
        let pair = KeyPair::from_pem(&key_pem).map_err(|_| CaError::BadKey(key.to_owned()))?;
        if pair.subject_public_key_info() != x509.tbs_certificate.subject_pki.raw {
            return Err(CaError::Mismatch { cert: cert.to_owned(), key: key.to_owned() });
        }
        let issuer =
            Issuer::from_ca_cert_der(&CertificateDer::from(der.as_slice()), pair).map_err(CaError::Generate)?;
        Ok(Ca { issuer, not_before, not_after })
    }

    /// Writes a fresh CA (`ca.pem`, and `ca.key` readable by its owner
    /// only) into `dir`; never overwrites. Returns the two paths.
    pub fn create(dir: &Path) -> Result<(PathBuf, PathBuf), CaError> {
        let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
        for p in [&cert_path, &key_path] {
            if p.exists() {
                return Err(CaError::Exists(p.clone()));
            }
        }
        fs::create_dir_all(dir).map_err(|source| CaError::Write { path: dir.to_owned(), source })?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "gateway TLS interception CA");
        dn.push(DnType::OrganizationName, "gateway");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::from_secs(3600);
        params.not_after = now + Duration::from_secs(10 * 365 * 86400);
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_new(&cert_path, cert.pem().as_bytes(), 0o644)?;
        Ok((cert_path, key_path))
    }
}

/// The first PEM CERTIFICATE block's DER.
fn pem_der(pem: &str) -> Option<Vec<u8>> {
    use rustls::pki_types::pem::PemObject as _;
    CertificateDer::from_pem_slice(pem.as_bytes()).ok().map(|c| c.to_vec())
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CaError> {
    let err = |source| CaError::Write { path: path.to_owned(), source };
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(err)?;
    f.write_all(bytes).map_err(err)
}

/// 16 random bytes, positive: leaves that share a key must not share a
/// serial (NSS refuses a reused issuer and serial).
fn random_serial() -> SerialNumber {
    let mut b = [0u8; 16];
    // ring's system RNG does not fail on Linux; a zero serial would still
    // be unique enough with the time mixed in below.
    let _ = rustls::crypto::ring::default_provider().secure_random.fill(&mut b);
    let t = OffsetDateTime::now_utc().unix_timestamp_nanos().to_be_bytes();
    for (x, y) in b.iter_mut().zip(t.iter().rev()) {
        *x ^= *y;
    }
    b[0] &= 0x7f;
    b[0] |= 0x01;
    SerialNumber::from_slice(&b)
}

/// A minted leaf and when it stops being reused.
struct Entry {
    key: Arc<CertifiedKey>,
    made: Instant,
    not_after: OffsetDateTime,
}

/// The bounded cache: a map and the order entries were made in (oldest
/// first), for eviction.
#[derive(Default)]
struct Cache {
    map: HashMap<String, Entry>,
    order: VecDeque<(String, Instant)>,
}

/// Mints leaves for server names, signed by the CA.
pub struct Mint {
    ca: Ca,
    key: KeyPair,
    signer: Arc<dyn SigningKey>,
    cache: Mutex<Cache>,
    capacity: usize,
    ttl: Duration,
}

/// Longest validity of a minted leaf (browsers refuse more than 398 days).
const MAX_LEAF_DAYS: u64 = 397;

impl Mint {
    /// A mint for `ca` keeping up to `capacity` leaves for `ttl` each.
    pub fn new(ca: Ca, capacity: usize, ttl: Duration) -> Result<Mint, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signer = any_supported_type(&der).map_err(|_| CaError::Generate(rcgen::Error::CouldNotParseKeyPair))?;
        Ok(Mint { ca, key, signer, cache: Mutex::new(Cache::default()), capacity: capacity.max(1), ttl })
    }

    /// The leaf for `name`: from the cache if one made within the TTL
    /// expires no later than the server's certificate (`server_not_after`),
    /// else a new one.
    pub fn leaf(&self, name: &str, server_not_after: Option<OffsetDateTime>) -> Result<Arc<CertifiedKey>, MintError> {
        let now = OffsetDateTime::now_utc();
        if let Some(key) = self.cached(name, server_not_after, now) {
            return Ok(key);
        }
        let (key, not_after) = self.mint(name, server_not_after, now)?;
        self.remember(name, key.clone(), not_after);
        Ok(key)
    }

    fn cached(&self, name: &str, bound: Option<OffsetDateTime>, now: OffsetDateTime) -> Option<Arc<CertifiedKey>> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let e = cache.map.get(name)?;
        let fresh = e.made.elapsed() < self.ttl && e.not_after > now + Duration::from_secs(60);
        (fresh && bound.is_none_or(|b| e.not_after <= b)).then(|| e.key.clone())
    }

    fn remember(&self, name: &str, key: Arc<CertifiedKey>, not_after: OffsetDateTime) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let made = Instant::now();
        // A name minted again replaces its own entry: nothing else goes.
        while !cache.map.contains_key(name) && cache.map.len() >= self.capacity {
            let Some((old, stamp)) = cache.order.pop_front() else { break };
            // Only if the queued stamp is still that name's entry (a name
            // minted again since has a newer stamp further back).
            if cache.map.get(&old).is_some_and(|e| e.made == stamp) {
                cache.map.remove(&old);
            }
        }
        cache.order.push_back((name.to_string(), made));
        cache.map.insert(name.to_string(), Entry { key, made, not_after });
        // Stale queue entries (names re-minted) are bounded by the map.
        if cache.order.len() > 2 * self.capacity {
            let Cache { map, order } = &mut *cache;
            order.retain(|(n, s)| map.get(n).is_some_and(|e| e.made == *s));
        }
    }

    /// Leaves kept now.
    pub fn cached_leaves(&self) -> usize {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).map.len()
    }

    fn mint(
        &self,
        name: &str,
        bound: Option<OffsetDateTime>,
        now: OffsetDateTime,
    ) -> Result<(Arc<CertifiedKey>, OffsetDateTime), MintError> {
        let generate = |source| MintError::Generate { name: name.to_string(), source };
        let not_before = (now - Duration::from_secs(86400)).max(self.ca.not_before);
        let mut not_after = (now + Duration::from_secs(MAX_LEAF_DAYS * 86400)).min(self.ca.not_after);
        if let Some(b) = bound {
            not_after = not_after.min(b);
        }
        if not_after <= now {
            return Err(MintError::NoValidity(name.to_string()));
        }
        let mut params = CertificateParams::new(vec![name.to_string()]).map_err(generate)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&self.key, &self.ca.issuer).map_err(generate)?;
        let key = CertifiedKey::new(vec![cert.der().clone()], self.signer.clone());
        Ok((Arc::new(key), not_after))
    }
}

/// Times minting `names` leaves (each a new name: cold) and fetching each
/// again (from the cache), with the code the gateway serves with; one JSON
/// line of medians and 99th percentiles in microseconds, for `cargo xtask
/// bench tls`.
pub fn bench(cert: &Path, key: &Path, names: usize) -> Result<String, MintError> {
    let names = names.max(1);
    let mint = Mint::new(Ca::load(cert, key)?, names, Duration::from_secs(3600))?;
    let mut cold = Vec::with_capacity(names);
    let mut cached = Vec::with_capacity(names);
    for pass in [&mut cold, &mut cached] {
        for i in 0..names {
            let start = Instant::now();
            mint.leaf(&format!("host{i}.bench.example"), None)?;
            pass.push(start.elapsed().as_secs_f64() * 1e6);
        }
    }
    let pct = |v: &mut Vec<f64>, p: usize| {
        v.sort_by(f64::total_cmp);
        v[(v.len() - 1) * p / 100]
    };
    Ok(format!(
        "{{\"names\":{names},\"cold_us_p50\":{:.1},\"cold_us_p99\":{:.1},\"cached_us_p50\":{:.2},\"cached_us_p99\":{:.2}}}",
        pct(&mut cold, 50),
        pct(&mut cold, 99),
        pct(&mut cached, 50),
        pct(&mut cached, 99)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mint(capacity: usize, ttl: Duration) -> (tempfile::TempDir, Mint) {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = Ca::create(dir.path()).unwrap();
        let ca = Ca::load(&c, &k).unwrap();
        (dir, Mint::new(ca, capacity, ttl).unwrap())
    }

    #[test]
    fn new_ca_loads_and_its_key_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = Ca::create(dir.path()).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(fs::metadata(&k).unwrap().permissions().mode() & 0o777, 0o600);
        Ca::load(&c, &k).unwrap();
        assert!(matches!(Ca::create(dir.path()), Err(CaError::Exists(_))));
        // Another CA's key does not belong to this certificate.
        let other = tempfile::tempdir().unwrap();
        let (_, k2) = Ca::create(other.path()).unwrap();
        assert!(matches!(Ca::load(&c, &k2), Err(CaError::Mismatch { .. })));
        // A key is not a certificate, and a certificate not a key.
        assert!(matches!(Ca::load(&k, &k), Err(CaError::BadCert(_))));
        assert!(matches!(Ca::load(&c, &c), Err(CaError::BadKey(_))));
    }

    #[test]
    fn a_leaf_is_not_a_ca() {
        let (dir, m) = mint(4, Duration::from_secs(60));
        let leaf = m.leaf("www.example.test", None).unwrap();
        let pem =
            format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", base64(leaf.cert[0].as_ref()));
        let p = dir.path().join("leaf.pem");
        fs::write(&p, pem).unwrap();
        assert!(matches!(Ca::load(&p, &dir.path().join("ca.key")), Err(CaError::NotCa(_))));
    }

    #[test]
    fn leaves_are_cached_bounded_and_within_the_servers_validity() {
        let (_dir, m) = mint(2, Duration::from_secs(60));
        let a = m.leaf("a.example", None).unwrap();
        assert!(Arc::ptr_eq(&a, &m.leaf("a.example", None).unwrap()), "cached");
        m.leaf("b.example", None).unwrap();
        m.leaf("c.example", None).unwrap();
        assert_eq!(m.cached_leaves(), 2, "bounded");
        assert!(!Arc::ptr_eq(&a, &m.leaf("a.example", None).unwrap()), "the oldest was evicted");
        // A server whose certificate ends sooner gets a leaf that ends then.
        let soon = OffsetDateTime::now_utc() + Duration::from_secs(3 * 86400);
        let short = m.leaf("a.example", Some(soon)).unwrap();
        let (_, x) = x509_parser::parse_x509_certificate(short.cert[0].as_ref()).unwrap();
        assert!(x.validity().not_after.to_datetime() <= soon);
        let past = OffsetDateTime::now_utc() - Duration::from_secs(60);
        assert!(matches!(m.leaf("d.example", Some(past)), Err(MintError::NoValidity(_))));
    }

    #[test]
    fn the_ttl_ends_reuse() {
        let (_dir, m) = mint(4, Duration::ZERO);
        let a = m.leaf("a.example", None).unwrap();
        assert!(!Arc::ptr_eq(&a, &m.leaf("a.example", None).unwrap()));
    }

    fn base64(b: &[u8]) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut s = String::new();
        for c in b.chunks(3) {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for i in 0..4 {
                if i <= c.len() {
                    s.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
                } else {
                    s.push('=');
                }
            }
        }
        s
    }
}
