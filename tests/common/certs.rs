//! Test certificates made in-process with rcgen: a self-signed CA and server certificates it
//! signs, written as PEM files (certificate, PKCS#8 key) for `serve` and `redis-server`.
//! Every certificate is valid from now for two days; its subject is `CN=<name>` only, so
//! `curl -v` prints `subject: CN=<name>`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_RSA_SHA256, SerialNumber,
};
use rsa::pkcs8::EncodePrivateKey as _;

/// How long a test certificate stays valid.
const VALIDITY: Duration = Duration::from_secs(2 * 24 * 3600);

/// The kind of key a certificate is made for.
#[derive(Clone, Copy, Debug)]
pub enum KeyKind {
    /// ECDSA on P-256, signed with SHA-256.
    P256,
    /// RSA with a 2048-bit modulus, signed with SHA-256 (PKCS#1 v1.5).
    Rsa2048,
}

impl KeyKind {
    /// A fresh key of this kind (ring cannot generate RSA keys: the `rsa` crate does).
    fn generate(self) -> KeyPair {
        match self {
            Self::P256 => KeyPair::generate().expect("P-256 key"),
            Self::Rsa2048 => {
                let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).expect("RSA key");
                let der = key.to_pkcs8_der().expect("PKCS#8");
                KeyPair::from_pkcs8_der_and_sign_algo(&der.as_bytes().into(), &PKCS_RSA_SHA256)
                    .expect("RSA key pair")
            }
        }
    }
}

/// A self-signed test certificate authority whose certificate and key are files.
pub struct Ca {
    /// The CA certificate (PEM), the trust anchor clients are given.
    pub cert: PathBuf,
    /// The CA's private key (PEM, PKCS#8).
    pub key: PathBuf,
    kind: KeyKind,
    issuer: Issuer<'static, KeyPair>,
}

/// Parameters with subject `CN=<cn>`, the SANs and the validity window every test
/// certificate shares.
fn params(cn: &str, sans: &[&str]) -> CertificateParams {
    let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .expect("subject alternative names");
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    let now = rcgen::date_time_ymd(1970, 1, 1)
        + SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970");
    params.not_before = now;
    params.not_after = now + VALIDITY;
    params
}

/// Writes `pem` to `dir/<file>` and returns the path.
fn write(dir: &Path, file: String, pem: &str) -> PathBuf {
    let path = dir.join(file);
    std::fs::write(&path, pem).expect("write PEM");
    path
}

impl Ca {
    /// A CA named `CN=<name>` (CA:TRUE, critical; keyCertSign and cRLSign), written as
    /// `dir/<name>.pem` and `dir/<name>.key`.
    pub fn new(dir: &Path, name: &str, kind: KeyKind) -> Self {
        let mut params = params(name, &[]);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = kind.generate();
        let cert = params.self_signed(&key).expect("self-signed CA");
        Self {
            cert: write(dir, format!("{name}.pem"), &cert.pem()),
            key: write(dir, format!("{name}.key"), &key.serialize_pem()),
            kind,
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate `CN=<cn>` for `sans` (IP addresses or DNS names) with serial
    /// `serial`, signed by this CA with a key of the CA's kind (CA:FALSE; digitalSignature;
    /// serverAuth); written as `dir/<cn>.pem` and `dir/<cn>.key`, returned in that order.
    pub fn leaf(&self, dir: &Path, cn: &str, sans: &[&str], serial: u64) -> (PathBuf, PathBuf) {
        let mut params = params(cn, sans);
        params.serial_number = Some(SerialNumber::from(serial));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = self.kind.generate();
        let cert = params.signed_by(&key, &self.issuer).expect("signed leaf");
        (
            write(dir, format!("{cn}.pem"), &cert.pem()),
            write(dir, format!("{cn}.key"), &key.serialize_pem()),
        )
    }
}
