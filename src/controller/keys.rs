//! Signing-key lifecycle (pure): create the keyring, rotate it on schedule, on request (the
//! `tenantry.dev/rotate-key` annotation) or when the algorithm changes, retire previous keys
//! after one rotation period, and revoke them at once on request (the
//! `tenantry.dev/revoke-previous-keys` annotation).
use std::time::Duration;

use crate::auth::keys::Keyring;
use crate::domain::Algorithm;

/// Annotation on the Secret recording the last `tenantry.dev/rotate-key` value acted upon.
pub const ROTATED_FOR_ANNOTATION: &str = "tenantry.dev/rotated-for";
/// Annotation on the Secret recording the last `tenantry.dev/revoke-previous-keys` value acted
/// upon.
pub const REVOKED_FOR_ANNOTATION: &str = "tenantry.dev/revoked-for";
/// How long a previous key stays valid when the tenant sets no `rotateEvery`.
pub const DEFAULT_OVERLAP: Duration = Duration::from_secs(24 * 3600);

/// Why the keyring changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// No keyring existed.
    Created,
    /// The tenant's algorithm changed.
    AlgorithmChanged,
    /// The rotate-key annotation asked for a rotation.
    Requested,
    /// `rotateEvery` elapsed.
    Scheduled,
    /// Only expired keys were dropped.
    Pruned,
    /// The revoke annotation asked for every previous key to go now.
    Revoked,
}

/// What to do with a tenant's keyring.
#[derive(Debug, Clone)]
pub struct KeyPlan {
    /// The keyring to store.
    pub ring: Keyring,
    /// Why it differs from the stored one, if it does.
    pub change: Option<Change>,
    /// Value for [`ROTATED_FOR_ANNOTATION`].
    pub rotated_for: Option<String>,
    /// Value for [`REVOKED_FOR_ANNOTATION`].
    pub revoked_for: Option<String>,
    /// Seconds until the next scheduled rotation, if any.
    pub next_rotation_in: Option<i64>,
    /// When the next scheduled rotation is due (Unix seconds), if any.
    pub next_rotation_at: Option<i64>,
}

/// The keyring a Secret held, with the last rotate-key request acted upon.
#[derive(Debug, Clone)]
pub struct StoredKeyring {
    /// The stored keyring (with a current key).
    pub ring: Keyring,
    /// The Secret's [`ROTATED_FOR_ANNOTATION`].
    pub rotated_for: Option<String>,
    /// The Secret's [`REVOKED_FOR_ANNOTATION`].
    pub revoked_for: Option<String>,
}

/// What the keyring decision depends on.
#[derive(Debug, Clone)]
pub struct KeyInputs<'a> {
    /// The stored keyring, if the Secret held a valid one.
    pub stored: Option<StoredKeyring>,
    /// The tenant's `spec.auth.algorithm`.
    pub algorithm: Algorithm,
    /// The tenant's `spec.auth.rotateEvery` (`None`: no scheduled rotation).
    pub rotate_every: Option<Duration>,
    /// The Tenant's rotate-key annotation.
    pub requested: Option<&'a str>,
    /// The Tenant's revoke-previous-keys annotation.
    pub revoke: Option<&'a str>,
    /// Unix seconds.
    pub now: i64,
}

/// Decides the keyring for a tenant.
pub fn plan(inputs: KeyInputs<'_>) -> KeyPlan {
    let KeyInputs {
        stored,
        algorithm,
        rotate_every,
        requested,
        revoke,
        now,
    } = inputs;
    let overlap = rotate_every.unwrap_or(DEFAULT_OVERLAP).as_secs() as i64;
    let (mut ring, rotated_for, mut revoked_for, mut change) = match stored {
        None => (
            Keyring::generate(algorithm),
            requested.map(str::to_string),
            // A new keyring has no previous key to revoke.
            revoke.map(str::to_string),
            Some(Change::Created),
        ),
        Some(StoredKeyring {
            ring,
            rotated_for,
            revoked_for,
        }) => (ring, rotated_for, revoked_for, None),
    };
    let mut rotated_for = rotated_for;
    if change.is_none() {
        let current = ring.current_key().cloned();
        let age = current
            .as_ref()
            .map(|k| now - k.created_at)
            .unwrap_or(i64::MAX);
        if current.as_ref().is_none_or(|k| k.algorithm != algorithm) {
            // Tokens of the old algorithm are refused anyway: no overlap.
            ring.rotate_at(algorithm, Some(0), now);
            change = Some(Change::AlgorithmChanged);
        } else if let Some(r) = requested.filter(|r| Some(*r) != rotated_for.as_deref()) {
            ring.rotate_at(algorithm, Some(overlap), now);
            rotated_for = Some(r.to_string());
            change = Some(Change::Requested);
        } else if rotate_every.is_some_and(|d| age >= d.as_secs() as i64) {
            ring.rotate_at(algorithm, Some(overlap), now);
            change = Some(Change::Scheduled);
        } else {
            let before = ring.keys.len();
            ring.keys.retain(|k| k.expires_at.is_none_or(|e| e > now));
            if ring.keys.len() != before {
                change = Some(Change::Pruned);
            }
        }
    }
    // After any rotation above, so that rotating and revoking at once leaves the new key only.
    if let Some(r) = revoke.filter(|r| Some(*r) != revoked_for.as_deref()) {
        let current = ring.current.clone();
        ring.keys.retain(|k| k.kid == current);
        revoked_for = Some(r.to_string());
        if change.is_none_or(|c| c == Change::Pruned) {
            change = Some(Change::Revoked);
        }
    }
    let next_rotation_at = rotate_every.and_then(|d| {
        let created = ring.current_key()?.created_at;
        Some(created + d.as_secs() as i64)
    });
    KeyPlan {
        ring,
        change,
        rotated_for,
        revoked_for,
        next_rotation_in: next_rotation_at.map(|at| (at - now).max(1)),
        next_rotation_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::keys::unix_now;

    /// `plan` with positional inputs, to keep the scenarios below short.
    fn plan_for(
        stored: Option<(Keyring, Option<String>)>,
        algorithm: Algorithm,
        rotate_every: Option<Duration>,
        requested: Option<&str>,
        now: i64,
    ) -> KeyPlan {
        plan(KeyInputs {
            stored: stored.map(|(ring, rotated_for)| StoredKeyring {
                ring,
                rotated_for,
                revoked_for: None,
            }),
            algorithm,
            rotate_every,
            requested,
            revoke: None,
            now,
        })
    }

    #[test]
    fn creates_then_keeps() {
        let now = unix_now();
        let p = plan_for(None, Algorithm::EdDSA, None, Some("x"), now);
        assert_eq!(p.change, Some(Change::Created));
        assert_eq!(p.rotated_for.as_deref(), Some("x"));
        let q = plan_for(
            Some((p.ring.clone(), p.rotated_for)),
            Algorithm::EdDSA,
            None,
            Some("x"),
            now,
        );
        assert_eq!(q.change, None);
        assert_eq!(q.ring, p.ring);
    }

    #[test]
    fn annotation_change_rotates_with_overlap() {
        let now = unix_now();
        let p = plan_for(
            None,
            Algorithm::EdDSA,
            Some(Duration::from_secs(3600)),
            None,
            now,
        );
        let q = plan_for(
            Some((p.ring.clone(), None)),
            Algorithm::EdDSA,
            Some(Duration::from_secs(3600)),
            Some("2026-01-01"),
            now,
        );
        assert_eq!(q.change, Some(Change::Requested));
        assert_ne!(q.ring.current, p.ring.current);
        let old = q
            .ring
            .keys
            .iter()
            .find(|k| k.kid == p.ring.current)
            .expect("old kept");
        assert_eq!(old.expires_at, Some(now + 3600));
        // The same annotation value again does nothing.
        let r = plan_for(
            Some((q.ring.clone(), q.rotated_for)),
            Algorithm::EdDSA,
            Some(Duration::from_secs(3600)),
            Some("2026-01-01"),
            now,
        );
        assert_eq!(r.change, None);
    }

    #[test]
    fn schedule_and_expiry() {
        let now = unix_now();
        let p = plan_for(
            None,
            Algorithm::HS256,
            Some(Duration::from_secs(60)),
            None,
            now,
        );
        assert_eq!(p.next_rotation_in, Some(60));
        let later = now + 61;
        let q = plan_for(
            Some((p.ring.clone(), None)),
            Algorithm::HS256,
            Some(Duration::from_secs(60)),
            None,
            later,
        );
        assert_eq!(q.change, Some(Change::Scheduled));
        assert_eq!(q.ring.keys.len(), 2);
        // After the overlap the previous key is pruned.
        let much_later = later + 61;
        let r = plan_for(
            Some((q.ring.clone(), None)),
            Algorithm::HS256,
            Some(Duration::from_secs(3600)),
            None,
            much_later,
        );
        assert_eq!(r.change, Some(Change::Pruned));
        assert_eq!(r.ring.keys.len(), 1);
    }

    #[test]
    fn revoking_drops_every_previous_key_once_per_value() {
        let now = unix_now();
        let every = Some(Duration::from_secs(720 * 3600));
        let first = plan_for(None, Algorithm::EdDSA, every, None, now);
        let rotated = plan_for(
            Some((first.ring.clone(), None)),
            Algorithm::EdDSA,
            every,
            Some("leak"),
            now,
        );
        assert_eq!(rotated.ring.keys.len(), 2, "the old key overlaps");
        let inputs = |ring: Keyring, revoked_for: Option<String>, revoke| KeyInputs {
            stored: Some(StoredKeyring {
                ring,
                rotated_for: Some("leak".into()),
                revoked_for,
            }),
            algorithm: Algorithm::EdDSA,
            rotate_every: every,
            requested: Some("leak"),
            revoke,
            now,
        };
        let revoked = plan(inputs(rotated.ring.clone(), None, Some("now")));
        assert_eq!(revoked.change, Some(Change::Revoked));
        assert_eq!(revoked.ring.keys.len(), 1);
        assert_eq!(
            revoked.ring.current, rotated.ring.current,
            "the new key stays"
        );
        assert_eq!(revoked.revoked_for.as_deref(), Some("now"));
        assert_eq!(
            revoked.next_rotation_at,
            Some(revoked.ring.keys[0].created_at + 720 * 3600)
        );
        // The same value again does nothing, even after another rotation.
        let again = plan(inputs(
            rotated.ring.clone(),
            Some("now".into()),
            Some("now"),
        ));
        assert_eq!((again.change, again.ring.keys.len()), (None, 2));
    }

    #[test]
    fn algorithm_change_rotates_without_overlap() {
        let now = unix_now();
        let p = plan_for(None, Algorithm::EdDSA, None, None, now);
        let q = plan_for(Some((p.ring, None)), Algorithm::HS256, None, None, now);
        assert_eq!(q.change, Some(Change::AlgorithmChanged));
        assert_eq!(
            q.ring.current_key().map(|k| k.algorithm),
            Some(Algorithm::HS256)
        );
    }
}
