//! The [`KeyRing`]: every signing key in the key directory, as loaded at one moment.
//!
//! Rotation without a restart (see [`super::KeyDirectory`] for the reloading): run
//! `identity-server keygen`; every replica publishes the new key at its next reload, but the
//! key signs only once its activation delay has passed since it was made (the time in its file
//! name). By then every replica has loaded it and every verifier that refetches ListPublicKeys
//! knows it, so no token reaches anyone who cannot check it. The key that signs is the newest
//! whose delay has passed; when none has (a fresh install: one new key), the oldest signs at
//! once. A replaced key's [`PublishedKey::not_after`] is its successor's activation plus the
//! access-token lifetime; after that its file can be deleted. Secret halves are kept only for the
//! key that signs and newer ones; older keys are held as public keys.

use std::path::{Path, PathBuf};

use pasetors::{
    keys::{AsymmetricPublicKey, AsymmetricSecretKey},
    paserk::Id,
    version4::V4,
};
use time::{Duration, OffsetDateTime};

use super::key_files::{self, paserk};

/// Why the key directory could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The directory holds no key file, or does not exist.
    #[error("no signing key in {d}: run `identity-server keygen --keys-dir {d}`", d = .dir.display())]
    NoKey {
        /// The key directory.
        dir: PathBuf,
    },
    /// A `*.k4.secret` file that cannot be used. The message names the file, never its content.
    #[error("{}: not a usable signing key: {reason}", .path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Two files hold the same key.
    #[error("{} and {} hold the same key: delete one", .first.display(), .second.display())]
    Duplicate {
        /// The newer-named file.
        first: PathBuf,
        /// The older-named file.
        second: PathBuf,
    },
    /// A key made in the same second already has this file name.
    #[error("{} already exists: try again in a second", .path.display())]
    AlreadyExists {
        /// The file.
        path: PathBuf,
    },
    /// The file system refused.
    #[error("cannot access {}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// Key generation or encoding failed; a bug, not an operator error.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl KeyError {
    pub(super) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// A key as the world may see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedKey {
    /// PASERK id, `k4.pid.…`: the `kid` in the footer of the tokens this key signs.
    pub key_id: String,
    /// PASERK `k4.public.…`.
    pub public_key: String,
    /// Whether this key signs new tokens. A newer key that does not sign yet is inactive with
    /// no `not_after`.
    pub active: bool,
    /// For a replaced key: when the last token it could have signed expires, after which its
    /// file can be deleted. `None` for the active key and for keys not signing yet.
    pub not_after: Option<OffsetDateTime>,
}

/// A key in the ring.
pub(super) struct RingKey {
    created: OffsetDateTime,
    /// When it may start signing: `created` plus the activation delay.
    activates_at: OffsetDateTime,
    pub(super) kid: String,
    pub(super) public: AsymmetricPublicKey<V4>,
    paserk: String,
    /// Dropped (and zeroed by pasetors) for keys older than the one signing at load time.
    secret: Option<AsymmetricSecretKey<V4>>,
}

/// The signing keys loaded from a key directory. Its `Debug` shows key ids only.
pub struct KeyRing {
    /// Newest first.
    keys: Vec<RingKey>,
}

impl KeyRing {
    /// Loads every `<created>.k4.secret` file in `dir`. A key may sign from `activation_delay`
    /// after its creation; secret halves that can no longer sign at `now` are dropped.
    pub fn load(
        dir: &Path,
        activation_delay: Duration,
        now: OffsetDateTime,
    ) -> Result<Self, KeyError> {
        let mut files = key_files::read_dir(dir)?;
        files.sort_by_key(|file| std::cmp::Reverse(file.created));
        let mut keys: Vec<(PathBuf, RingKey)> = Vec::with_capacity(files.len());
        for file in files {
            let key = ring_key(file.created, activation_delay, file.secret)?;
            if let Some((twin, _)) = keys.iter().find(|(_, k)| k.kid == key.kid) {
                return Err(KeyError::Duplicate {
                    first: twin.clone(),
                    second: file.path,
                });
            }
            keys.push((file.path, key));
        }
        if keys.is_empty() {
            return Err(KeyError::NoKey { dir: dir.into() });
        }
        let mut ring = Self {
            keys: keys.into_iter().map(|(_, key)| key).collect(),
        };
        let signing = ring.signer_index(now);
        for key in &mut ring.keys[signing + 1..] {
            key.secret = None;
        }
        Ok(ring)
    }

    /// Makes a new key in `dir` (created with mode 700 if missing) as
    /// `<now as YYYYMMDDTHHMMSSZ>.k4.secret`, mode 600, and returns its path. Servers publish it
    /// at their next reload and sign with it once its activation delay has passed.
    pub fn generate(dir: &Path, now: OffsetDateTime) -> Result<PathBuf, KeyError> {
        key_files::write_new_key(dir, now)
    }

    /// The id (`k4.pid.…`) of the key that signs at `now`.
    pub fn signing_key_id(&self, now: OffsetDateTime) -> &str {
        &self.keys[self.signer_index(now)].kid
    }

    /// Whether the key signing at `now` signs before its activation delay has passed, because
    /// no key has passed it (a fresh install; or a rotation that replaced every key).
    pub fn signs_before_activation(&self, now: OffsetDateTime) -> bool {
        self.keys[self.signer_index(now)].activates_at > now
    }

    /// The keys published at `now` but not signing yet, with when each may start: newest first.
    pub fn pending(&self, now: OffsetDateTime) -> Vec<(&str, OffsetDateTime)> {
        self.keys[..self.signer_index(now)]
            .iter()
            .map(|key| (key.kid.as_str(), key.activates_at))
            .collect()
    }

    /// Whether `other` holds the same keys (made at the same times).
    pub fn same_keys(&self, other: &KeyRing) -> bool {
        self.keys.len() == other.keys.len()
            && self
                .keys
                .iter()
                .zip(&other.keys)
                .all(|(a, b)| a.kid == b.kid && a.created == b.created)
    }

    /// Every key, newest first, as published at `now`: keys not signing yet, the signing key,
    /// then replaced keys with when each can be retired given the access-token lifetime.
    pub fn public_keys(&self, now: OffsetDateTime, access_ttl: Duration) -> Vec<PublishedKey> {
        let signing = self.signer_index(now);
        self.keys
            .iter()
            .enumerate()
            .map(|(index, key)| PublishedKey {
                key_id: key.kid.clone(),
                public_key: key.paserk.clone(),
                active: index == signing,
                // A replaced key stopped signing when its successor (the next newer key)
                // activated; its last token expires one lifetime later.
                not_after: (index > signing)
                    .then(|| self.keys[index - 1].activates_at.saturating_add(access_ttl)),
            })
            .collect()
    }

    /// The secret key that signs at `now`, and its id.
    pub(super) fn signer(&self, now: OffsetDateTime) -> Option<(&AsymmetricSecretKey<V4>, &str)> {
        let key = &self.keys[self.signer_index(now)];
        Some((key.secret.as_ref()?, &key.kid))
    }

    /// The key named `kid`, if it is in the ring.
    pub(super) fn find(&self, kid: &str) -> Option<&RingKey> {
        self.keys.iter().find(|key| key.kid == kid)
    }

    /// Position of the key that signs at `now`: the newest key with a secret half whose
    /// activation has come, or, when none has, the oldest key with a secret half. (A ring always
    /// has a key with a secret half: `load` keeps the signer's and newer ones.)
    fn signer_index(&self, now: OffsetDateTime) -> usize {
        let with_secret = || {
            self.keys
                .iter()
                .enumerate()
                .filter(|(_, key)| key.secret.is_some())
        };
        with_secret()
            .find(|(_, key)| key.activates_at <= now)
            .or_else(|| with_secret().next_back())
            .map_or(0, |(index, _)| index)
    }
}

fn ring_key(
    created: OffsetDateTime,
    activation_delay: Duration,
    secret: AsymmetricSecretKey<V4>,
) -> Result<RingKey, KeyError> {
    let public = AsymmetricPublicKey::<V4>::try_from(&secret)
        .map_err(|e| anyhow::anyhow!("deriving a public key failed: {e:?}"))?;
    Ok(RingKey {
        created,
        activates_at: created.saturating_add(activation_delay),
        kid: paserk(&Id::from(&public))?,
        paserk: paserk(&public)?,
        public,
        secret: Some(secret),
    })
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field(
                "keys",
                &self.keys.iter().map(|key| &key.kid).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::PermissionsExt};

    use super::*;
    use crate::tokens::test_support::{T0, TempDir};

    const TTL: Duration = Duration::minutes(15);
    const DELAY: Duration = Duration::hours(1);

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("exists").permissions().mode() & 0o777
    }

    #[test]
    fn generated_keys_are_readable_by_their_owner_only() {
        let dir = TempDir::new();
        let keys_dir = dir.path().join("keys");

        let path = KeyRing::generate(&keys_dir, T0).expect("generated");

        assert_eq!(path, keys_dir.join("20261121T070000Z.k4.secret"));
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&keys_dir), 0o700);
        let text = fs::read_to_string(&path).expect("readable");
        assert!(text.starts_with("k4.secret.") && text.ends_with('\n'));
    }

    #[test]
    fn generating_never_overwrites_a_key() {
        let dir = TempDir::new();
        let first = KeyRing::generate(dir.path(), T0).expect("generated");
        let before = fs::read(&first).expect("readable");

        let again = KeyRing::generate(dir.path(), T0);

        assert!(matches!(again, Err(KeyError::AlreadyExists { path }) if path == first));
        assert_eq!(fs::read(&first).expect("readable"), before);
    }

    /// Keys made at each of `created` in a fresh directory, loaded at `now`.
    fn ring(created: &[OffsetDateTime], now: OffsetDateTime) -> KeyRing {
        let dir = TempDir::new();
        for &at in created {
            KeyRing::generate(dir.path(), at).expect("generated");
        }
        fs::write(dir.path().join("README"), "not a key").expect("written");
        KeyRing::load(dir.path(), DELAY, now).expect("loads")
    }

    fn flags(published: &[PublishedKey]) -> Vec<(bool, Option<OffsetDateTime>)> {
        published.iter().map(|k| (k.active, k.not_after)).collect()
    }

    #[test]
    fn a_sole_new_key_signs_at_once() {
        let ring = ring(&[T0], T0);

        let published = ring.public_keys(T0, TTL);

        assert_eq!(flags(&published), [(true, None)]);
        assert_eq!(ring.signing_key_id(T0), published[0].key_id);
        assert!(ring.signs_before_activation(T0));
        assert!(!ring.signs_before_activation(T0 + DELAY));
        for key in &published {
            assert!(key.key_id.starts_with("k4.pid."), "{}", key.key_id);
            assert!(key.public_key.starts_with("k4.public."));
        }
    }

    #[test]
    fn a_new_key_is_published_at_once_but_signs_only_after_its_activation_delay() {
        let made = T0 + Duration::days(30);
        let ring = ring(&[T0, made], made);
        let [new, old] = [0, 1].map(|i| ring.public_keys(made, TTL)[i].key_id.clone());

        assert_eq!(
            flags(&ring.public_keys(made, TTL)),
            [(false, None), (true, None)]
        );
        assert_eq!(ring.signing_key_id(made), old);
        assert_eq!(ring.pending(made), [(new.as_str(), made + DELAY)]);
        let just_before = made + DELAY - Duration::seconds(1);
        assert_eq!(ring.signing_key_id(just_before), old);

        assert_eq!(ring.signing_key_id(made + DELAY), new);
        assert!(ring.pending(made + DELAY).is_empty());
        assert_eq!(
            flags(&ring.public_keys(made + DELAY, TTL)),
            [(true, None), (false, Some(made + DELAY + TTL))]
        );
    }

    #[test]
    fn replaced_keys_can_be_retired_a_token_lifetime_after_their_successor_activates() {
        let t1 = T0 + Duration::days(30);
        let t2 = T0 + Duration::days(60);
        // Made out of order: the name, not the order of making, decides.
        let ring = ring(&[t1, T0, t2], t2 + DELAY);

        let published = ring.public_keys(t2 + DELAY, TTL);

        assert_eq!(
            flags(&published),
            [
                (true, None),
                (false, Some(t2 + DELAY + TTL)),
                (false, Some(t1 + DELAY + TTL))
            ]
        );
        assert_eq!(ring.signing_key_id(t2 + DELAY), published[0].key_id);
    }

    #[test]
    fn when_no_key_has_passed_its_delay_the_oldest_signs() {
        let ring = ring(&[T0, T0 + Duration::minutes(1)], T0 + Duration::minutes(1));
        let now = T0 + Duration::minutes(1);
        let published = ring.public_keys(now, TTL);

        assert_eq!(flags(&published), [(false, None), (true, None)]);
        assert!(ring.signs_before_activation(now));
    }

    #[test]
    fn a_ring_never_goes_back_to_a_key_it_had_replaced_when_loaded() {
        let made = T0 + Duration::days(30);
        let ring = ring(&[T0, made], made + DELAY);
        let newest = ring.signing_key_id(made + DELAY).to_owned();

        // A clock set back: the old key's secret half is gone, so the new key still signs.
        assert_eq!(ring.signing_key_id(T0 + DELAY), newest);
        assert!(ring.signer(T0 + DELAY).is_some());
    }

    #[test]
    fn rings_of_the_same_files_hold_the_same_keys() {
        let dir = TempDir::new();
        KeyRing::generate(dir.path(), T0).expect("generated");
        let first = KeyRing::load(dir.path(), DELAY, T0).expect("loads");
        let again = KeyRing::load(dir.path(), DELAY, T0 + DELAY).expect("loads");
        KeyRing::generate(dir.path(), T0 + DELAY).expect("generated");
        let more = KeyRing::load(dir.path(), DELAY, T0 + DELAY).expect("loads");

        assert!(first.same_keys(&again));
        assert!(!first.same_keys(&more));
    }

    #[test]
    fn an_empty_or_missing_directory_asks_for_keygen() {
        let dir = TempDir::new();
        let missing = KeyRing::load(dir.path(), DELAY, T0).expect_err("no directory");
        fs::create_dir(dir.path()).expect("created");
        fs::write(dir.path().join("notes.txt"), "hello").expect("written");
        let empty = KeyRing::load(dir.path(), DELAY, T0).expect_err("no key");

        let hint = format!(
            "no signing key in {0}: run `identity-server keygen --keys-dir {0}`",
            dir.path().display()
        );
        assert_eq!(missing.to_string(), hint);
        assert_eq!(empty.to_string(), hint);
    }

    #[test]
    fn a_malformed_key_file_is_named_but_its_content_is_not_shown() {
        let dir = TempDir::new();
        KeyRing::generate(dir.path(), T0).expect("generated");
        let bad = dir.path().join("20261122T070000Z.k4.secret");
        let content = "k4.secret.hunter2-SUPERSECRET";
        fs::write(&bad, content).expect("written");

        let error = KeyRing::load(dir.path(), DELAY, T0).expect_err("malformed");

        let shown = format!("{error} {error:?}");
        assert!(shown.contains("20261122T070000Z.k4.secret"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(matches!(error, KeyError::Malformed { path, .. } if path == bad));
    }

    #[test]
    fn a_key_file_with_a_bad_time_in_its_name_is_refused() {
        let dir = TempDir::new();
        let good = KeyRing::generate(dir.path(), T0).expect("generated");
        let renamed = dir.path().join("newest.k4.secret");
        fs::copy(&good, &renamed).expect("copied");

        let error = KeyRing::load(dir.path(), DELAY, T0).expect_err("bad name");

        assert!(matches!(error, KeyError::Malformed { path, .. } if path == renamed));
    }

    #[test]
    fn the_same_key_in_two_files_is_refused() {
        let dir = TempDir::new();
        let original = KeyRing::generate(dir.path(), T0).expect("generated");
        let copy = dir.path().join("20261122T070000Z.k4.secret");
        fs::copy(&original, &copy).expect("copied");

        let error = KeyRing::load(dir.path(), DELAY, T0).expect_err("duplicate");

        assert!(matches!(
            error,
            KeyError::Duplicate { first, second } if first == copy && second == original
        ));
    }

    #[test]
    fn key_ids_are_the_paserk_ids_of_the_public_keys() {
        let dir = TempDir::new();
        let path = KeyRing::generate(dir.path(), T0).expect("generated");
        let ring = KeyRing::load(dir.path(), DELAY, T0).expect("loads");
        let text = fs::read_to_string(path).expect("readable");
        let secret = AsymmetricSecretKey::<V4>::try_from(text.trim()).expect("a k4.secret");
        let public = AsymmetricPublicKey::<V4>::try_from(&secret).expect("public half");

        assert_eq!(
            ring.signing_key_id(T0),
            paserk(&Id::from(&public)).expect("id")
        );
        assert_eq!(
            ring.public_keys(T0, TTL)[0].public_key,
            paserk(&public).expect("k4.public")
        );
    }

    #[test]
    fn debug_output_shows_key_ids_but_no_key_material() {
        let dir = TempDir::new();
        let mut secrets = Vec::new();
        for at in [T0, T0 + Duration::days(1)] {
            let path = KeyRing::generate(dir.path(), at).expect("generated");
            secrets.push(fs::read_to_string(path).expect("readable"));
        }
        let ring = KeyRing::load(dir.path(), DELAY, T0).expect("loads");

        let shown = format!("{ring:?} {ring:#?}");

        assert!(shown.contains(ring.signing_key_id(T0)), "{shown}");
        for secret in &secrets {
            let encoded = secret.trim().trim_start_matches("k4.secret.");
            // Neither the whole key nor its seed (the first 32 bytes, 43 characters).
            assert!(!shown.contains(&encoded[..43]), "{shown}");
        }
    }
}
