//! A tenant's signing keys: the keyring file format, key generation, and token minting.
//!
//! One JSON keyring per tenant. The embedded default keeps it at `<data-dir>/keys/<tenant>.json`
//! (mode 0600), generated on first start; in Kubernetes the operator renders the same format
//! into the tenant's Secret. A keyring holds the current key and the previous ones, each with an
//! optional end of validity, so tokens signed before a rotation stay valid for one period.
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
use jsonwebtoken::{DecodingKey, EncodingKey, Header};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::domain::{Algorithm, TenantId};

/// Errors reading, writing or using a keyring.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The keyring file could not be read or written.
    #[error("keyring {path}: {source}")]
    Io {
        /// Keyring file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The keyring file is not valid.
    #[error("keyring {path} is invalid: {reason}")]
    Invalid {
        /// Keyring file.
        path: PathBuf,
        /// What is wrong (never key material).
        reason: String,
    },
    /// The current key cannot sign (no private part, or a bad key).
    #[error("cannot sign with key {kid}: {reason}")]
    Sign {
        /// Key id.
        kid: String,
        /// What failed.
        reason: String,
    },
}

/// One signing key. Private material is never printed by `Debug`.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StoredKey {
    /// Key id, carried in each token's `kid` header.
    pub kid: String,
    /// Algorithm this key is for.
    pub algorithm: Algorithm,
    /// Creation time (Unix seconds).
    pub created_at: i64,
    /// Tokens signed by this key are refused after this time (Unix seconds); unset: no end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// EdDSA: PKCS#8 PEM private key. HS256: base64url secret. Absent in verify-only keyrings
    /// of EdDSA tenants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// EdDSA: SPKI PEM public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl StoredKey {
    /// Generates a new key for `algorithm`.
    pub fn generate(algorithm: Algorithm) -> Self {
        let now = unix_now();
        let mut rng = rand::rngs::OsRng;
        let mut id = [0u8; 9];
        rng.fill_bytes(&mut id);
        let kid = format!("{}-{}", now, URL_SAFE_NO_PAD.encode(id));
        let (private_key, public_key) = match algorithm {
            Algorithm::EdDSA => {
                let sk = ed25519_dalek::SigningKey::generate(&mut rng);
                // Encoding a freshly generated key into PEM cannot fail.
                let private = sk
                    .to_pkcs8_pem(LineEnding::LF)
                    .map(|p| p.to_string())
                    .unwrap_or_default();
                let public = sk
                    .verifying_key()
                    .to_public_key_pem(LineEnding::LF)
                    .unwrap_or_default();
                (private, Some(public))
            }
            Algorithm::HS256 => {
                let mut secret = [0u8; 32];
                rng.fill_bytes(&mut secret);
                (URL_SAFE_NO_PAD.encode(secret), None)
            }
        };
        Self {
            kid,
            algorithm,
            created_at: now,
            expires_at: None,
            private_key: Some(private_key),
            public_key,
        }
    }

    /// The key that verifies this key's signatures.
    pub fn decoding_key(&self) -> Option<DecodingKey> {
        match self.algorithm {
            Algorithm::EdDSA => {
                DecodingKey::from_ed_pem(self.public_key.as_deref()?.as_bytes()).ok()
            }
            Algorithm::HS256 => {
                let secret = URL_SAFE_NO_PAD.decode(self.private_key.as_deref()?).ok()?;
                Some(DecodingKey::from_secret(&secret))
            }
        }
    }

    fn encoding_key(&self) -> Result<EncodingKey, KeyError> {
        let err = |reason: &str| KeyError::Sign {
            kid: self.kid.clone(),
            reason: reason.to_string(),
        };
        let private = self.private_key.as_deref().ok_or_else(|| {
            err("the keyring holds no private key (a verify-only keyring cannot mint tokens)")
        })?;
        match self.algorithm {
            Algorithm::EdDSA => {
                EncodingKey::from_ed_pem(private.as_bytes()).map_err(|_| err("invalid Ed25519 key"))
            }
            Algorithm::HS256 => URL_SAFE_NO_PAD
                .decode(private)
                .map(|s| EncodingKey::from_secret(&s))
                .map_err(|_| err("invalid HS256 secret")),
        }
    }
}

/// A tenant's keys: the current one signs, all unexpired ones of the tenant's algorithm verify.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Keyring {
    /// `kid` of the key new tokens are signed with.
    pub current: String,
    /// All keys, current and previous.
    pub keys: Vec<StoredKey>,
}

/// Claims of a tenantry token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The user the token was minted for.
    pub sub: String,
    /// Tenant the token is for.
    pub tenant_id: String,
    /// Expiry (Unix seconds).
    pub exp: u64,
    /// Issued at (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Token id, for revocation (`<issuer id>.<serial>` for the operator's credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

impl Keyring {
    /// A keyring with one new key.
    pub fn generate(algorithm: Algorithm) -> Self {
        let key = StoredKey::generate(algorithm);
        Self {
            current: key.kid.clone(),
            keys: vec![key],
        }
    }

    /// The current key.
    pub fn current_key(&self) -> Option<&StoredKey> {
        self.keys.iter().find(|k| k.kid == self.current)
    }

    /// Makes a new key of `algorithm` current; the previous current key stays valid for
    /// `overlap_secs` more seconds (`None`: until removed).
    pub fn rotate(&mut self, algorithm: Algorithm, overlap_secs: Option<i64>) {
        self.rotate_at(algorithm, overlap_secs, unix_now());
    }

    /// [`Keyring::rotate`] at a given time (Unix seconds); also drops keys expired by then.
    pub fn rotate_at(&mut self, algorithm: Algorithm, overlap_secs: Option<i64>, now: i64) {
        if let Some(old) = self.keys.iter_mut().find(|k| k.kid == self.current) {
            old.expires_at = overlap_secs.map(|s| now + s);
        }
        self.keys.retain(|k| k.expires_at.is_none_or(|e| e > now));
        let key = StoredKey::generate(algorithm);
        self.current = key.kid.clone();
        self.keys.push(key);
    }

    /// The keyring without what only signing needs: the verify-only keyring the chat API
    /// pods mount. EdDSA keys lose their private key (the public key verifies); an HS256 key
    /// keeps its secret, which verifying a symmetric signature needs.
    pub fn public_only(&self) -> Self {
        let keys = self
            .keys
            .iter()
            .cloned()
            .map(|mut k| {
                if k.algorithm == Algorithm::EdDSA {
                    k.private_key = None;
                }
                k
            })
            .collect();
        Self {
            current: self.current.clone(),
            keys,
        }
    }

    /// Whether the current key can sign (the keyring holds its private part).
    pub fn can_sign(&self) -> bool {
        self.current_key().is_some_and(|k| k.private_key.is_some())
    }

    /// Signs a token for `sub` in `tenant`, valid for `ttl_secs`.
    pub fn mint(&self, tenant: &TenantId, sub: &str, ttl_secs: u64) -> Result<String, KeyError> {
        self.mint_with_id(tenant, sub, ttl_secs, None)
            .map(|(token, _)| token)
    }

    /// [`Keyring::mint`] with a token id (`jti`); also returns the claims signed.
    pub fn mint_with_id(
        &self,
        tenant: &TenantId,
        sub: &str,
        ttl_secs: u64,
        jti: Option<String>,
    ) -> Result<(String, Claims), KeyError> {
        let key = self.current_key().ok_or_else(|| KeyError::Sign {
            kid: self.current.clone(),
            reason: "the current key is missing from the keyring".to_string(),
        })?;
        let now = unix_now().max(0) as u64;
        let claims = Claims {
            sub: sub.to_string(),
            tenant_id: tenant.as_str().to_string(),
            exp: now + ttl_secs,
            iat: Some(now),
            jti,
        };
        let mut header = Header::new(match key.algorithm {
            Algorithm::EdDSA => jsonwebtoken::Algorithm::EdDSA,
            Algorithm::HS256 => jsonwebtoken::Algorithm::HS256,
        });
        header.kid = Some(key.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &key.encoding_key()?).map_err(|e| {
            KeyError::Sign {
                kid: key.kid.clone(),
                reason: e.to_string(),
            }
        })?;
        Ok((token, claims))
    }

    /// Reads a keyring file.
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        let bytes = std::fs::read(path).map_err(|source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let ring: Keyring = serde_json::from_slice(&bytes).map_err(|e| KeyError::Invalid {
            path: path.to_path_buf(),
            // Only the position: serde_json's message may quote file content (key material).
            reason: format!("not a keyring (line {}, column {})", e.line(), e.column()),
        })?;
        if ring.current_key().is_none() {
            return Err(KeyError::Invalid {
                path: path.to_path_buf(),
                reason: format!("current key {:?} is not in the keyring", ring.current),
            });
        }
        Ok(ring)
    }

    /// Writes the keyring atomically (temp file + rename), readable only by its owner.
    pub fn write(&self, path: &Path) -> Result<(), KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| KeyError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        {
            use std::io::Write as _;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt as _;
                opts.mode(0o600);
            }
            let mut f = opts.open(&tmp).map_err(io)?;
            f.write_all(&bytes).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Loads the keyring at `path`, creating it with a new key of `algorithm` when missing, and
    /// rotating to a new key when the tenant's algorithm changed. Returns the keyring and
    /// whether it was written.
    pub fn load_or_create(path: &Path, algorithm: Algorithm) -> Result<(Self, bool), KeyError> {
        match Self::read(path) {
            Ok(mut ring) => {
                let alg_matches = ring.current_key().is_some_and(|k| k.algorithm == algorithm);
                if alg_matches {
                    return Ok((ring, false));
                }
                // Tokens of the old algorithm are refused anyway (one algorithm per tenant).
                ring.rotate(algorithm, Some(0));
                ring.write(path)?;
                Ok((ring, true))
            }
            Err(KeyError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                let ring = Self::generate(algorithm);
                ring.write(path)?;
                Ok((ring, true))
            }
            Err(e) => Err(e),
        }
    }
}

/// Tokens of a tenant refused before they expire, as the file next to its keyring
/// (`<tenant>.revoked.json`) holds them. An entry names a token id (`jti`) or an issuer of
/// ids: it matches a `jti` equal to it or starting with it and a `.` (every token a deleted
/// `TenantCredential` issued), until `until`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Revocations {
    /// The entries.
    #[serde(default)]
    pub revoked: Vec<Revoked>,
}

/// One revoked token id or issuer of ids.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Revoked {
    /// A `jti`, or the part of it before the first `.`.
    pub id: String,
    /// Unix seconds after which no token it matches can verify anyway (the entry can go).
    pub until: i64,
}

impl Revocations {
    /// Whether a token with `jti` is revoked at `now`.
    pub fn revokes(&self, jti: &str, now: i64) -> bool {
        let issuer = jti.split_once('.').map_or(jti, |(i, _)| i);
        self.revoked
            .iter()
            .any(|r| r.until >= now && (r.id == jti || r.id == issuer))
    }

    /// Adds (or extends) an entry and drops those past `now`. Returns whether anything changed.
    pub fn revoke(&mut self, id: &str, until: i64, now: i64) -> bool {
        let before = self.revoked.clone();
        self.revoked.retain(|r| r.until >= now);
        match self.revoked.iter_mut().find(|r| r.id == id) {
            Some(r) => r.until = r.until.max(until),
            None => self.revoked.push(Revoked {
                id: id.to_string(),
                until,
            }),
        }
        self.revoked != before
    }

    /// Reads `path`; a missing file is no revocations.
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| KeyError::Invalid {
                path: path.to_path_buf(),
                reason: format!("not a revocation list: {e}"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(KeyError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }
}

/// Path of `tenant`'s revocation list in a keys folder.
pub fn revocations_path(keys_dir: &Path, tenant: &TenantId) -> PathBuf {
    keys_dir.join(format!("{}.revoked.json", tenant.as_str()))
}

/// Signs a token for `sub` in `tenant` valid for `ttl` with the keyring's current key, as
/// `tenantry token` and `kubectl tenantry token` do: a `ttl` longer than the tenant's
/// `max_lifetime` (`spec.auth.maxTokenLifetime`) is refused, since `serve` would refuse the
/// token.
pub fn mint_checked(
    ring: &Keyring,
    tenant: &TenantId,
    sub: &str,
    ttl: std::time::Duration,
    max_lifetime: std::time::Duration,
) -> Result<String, String> {
    if ttl > max_lifetime {
        return Err(format!(
            "--ttl {} is longer than tenant {tenant}'s maximum token lifetime of {} (spec.auth.maxTokenLifetime): serve would refuse the token",
            crate::domain::format_duration(ttl),
            crate::domain::format_duration(max_lifetime)
        ));
    }
    ring.mint(tenant, sub, ttl.as_secs())
        .map_err(|e| e.to_string())
}

/// Path of `tenant`'s keyring in a keys folder (`<data-dir>/keys` on the embedded default).
pub fn keyring_path(keys_dir: &Path, tenant: &TenantId) -> PathBuf {
    keys_dir.join(format!("{}.json", tenant.as_str()))
}

/// Current Unix time in seconds.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyring_roundtrip_and_permissions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = TenantId::parse("acme").expect("id");
        let path = keyring_path(dir.path(), &t);
        let (ring, created) = Keyring::load_or_create(&path, Algorithm::EdDSA).expect("create");
        assert!(created);
        let (again, created) = Keyring::load_or_create(&path, Algorithm::EdDSA).expect("load");
        assert!(!created);
        assert_eq!(ring, again);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Changing the algorithm rotates to a key of the new algorithm.
        let (hs, rotated) = Keyring::load_or_create(&path, Algorithm::HS256).expect("rotate");
        assert!(rotated);
        assert_eq!(
            hs.current_key().map(|k| k.algorithm),
            Some(Algorithm::HS256)
        );
        assert_ne!(hs.current, ring.current);
    }

    #[test]
    fn a_public_keyring_verifies_but_cannot_mint() {
        let t = TenantId::parse("acme").expect("id");
        let ring = Keyring::generate(Algorithm::EdDSA);
        let token = ring.mint(&t, "alice", 60).expect("mint");
        let public = ring.public_only();
        assert!(ring.can_sign() && !public.can_sign());
        assert!(public.keys.iter().all(|k| k.private_key.is_none()));
        let json = serde_json::to_string(&public).expect("json");
        assert!(!json.contains("PRIVATE KEY"), "{json}");
        let err = public.mint(&t, "alice", 60).expect_err("no private key");
        assert!(err.to_string().contains("verify-only"), "{err}");
        let key = public.current_key().and_then(StoredKey::decoding_key);
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
        v.required_spec_claims.clear();
        jsonwebtoken::decode::<Claims>(&token, &key.expect("public key verifies"), &v)
            .expect("verified with the public key");
    }

    #[test]
    fn revocations_match_ids_and_issuers_until_they_lapse() {
        let mut r = Revocations::default();
        assert!(r.revoke("cred-uid", 100, 0));
        assert!(r.revoke("one.token", 50, 0));
        assert!(r.revokes("cred-uid.7", 10) && r.revokes("cred-uid", 10));
        assert!(r.revokes("one.token", 10) && !r.revokes("one.other", 10));
        assert!(!r.revokes("cred-uidx.7", 10) && !r.revokes("other", 10));
        assert!(!r.revokes("cred-uid.7", 101), "past until");
        assert!(
            !r.revoke("cred-uid", 90, 0),
            "an earlier until changes nothing"
        );
        assert!(r.revoke("new", 200, 60), "lapsed entries go");
        assert_eq!(
            r.revoked.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["cred-uid", "new"]
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let t = TenantId::parse("acme").expect("id");
        let path = revocations_path(dir.path(), &t);
        assert_eq!(
            Revocations::read(&path).expect("missing"),
            Revocations::default()
        );
        std::fs::write(&path, serde_json::to_vec(&r).expect("json")).expect("write");
        assert_eq!(Revocations::read(&path).expect("read"), r);
        std::fs::write(&path, "{").expect("write");
        assert!(Revocations::read(&path).is_err());
    }

    #[test]
    fn debug_never_prints_key_material() {
        let ring = Keyring::generate(Algorithm::HS256);
        let secret = ring.keys[0].private_key.clone().expect("secret");
        assert!(!format!("{ring:?}").contains(&secret));
    }
}
