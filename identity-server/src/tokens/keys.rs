//! The [`KeyRing`]: every signing key in the key directory, the newest of which signs.
//!
//! Rotation: run `identity-server keygen` (a new, newer key file), reload every replica so the
//! new key signs, and once the old key's [`PublishedKey::not_after`] has passed, delete its file.
//! Until then it is published and its tokens verify. Only the signing key's secret half is kept
//! in memory; older keys are held as public keys.

use std::path::{Path, PathBuf};

use pasetors::{
    keys::{AsymmetricPublicKey, AsymmetricSecretKey},
    paserk::Id,
    version4::V4,
};
use time::{Duration, OffsetDateTime};

use super::key_files::{self, KeyFile, paserk};

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
    /// Whether this key signs new tokens.
    pub active: bool,
    /// For a retired key: when the last token it could have signed expires, after which its file
    /// can be deleted. `None` for the active key.
    pub not_after: Option<OffsetDateTime>,
}

/// The public half of a key in the ring.
#[derive(Debug)]
pub(super) struct RingKey {
    pub(super) created: OffsetDateTime,
    pub(super) kid: String,
    pub(super) public: AsymmetricPublicKey<V4>,
    paserk: String,
}

/// The signing keys loaded from a key directory. Its `Debug` shows key ids only.
pub struct KeyRing {
    signing: AsymmetricSecretKey<V4>,
    active: RingKey,
    /// Older keys, newest first.
    older: Vec<RingKey>,
}

impl KeyRing {
    /// Loads every `<created>.k4.secret` file in `dir`; the newest key (by the time in its name)
    /// signs.
    pub fn load(dir: &Path) -> Result<Self, KeyError> {
        let mut files = key_files::read_dir(dir)?;
        files.sort_by_key(|file| std::cmp::Reverse(file.created));
        let mut keys: Vec<(KeyFile, RingKey)> = Vec::with_capacity(files.len());
        for file in files {
            let key = ring_key(&file)?;
            if let Some((twin, _)) = keys.iter().find(|(_, k)| k.kid == key.kid) {
                return Err(KeyError::Duplicate {
                    first: twin.path.clone(),
                    second: file.path,
                });
            }
            keys.push((file, key));
        }
        let mut keys = keys.into_iter();
        let Some((newest, active)) = keys.next() else {
            return Err(KeyError::NoKey { dir: dir.into() });
        };
        // Older keys' secret halves are dropped here (pasetors zeroes them).
        let older: Vec<RingKey> = keys.map(|(_, key)| key).collect();
        tracing::info!(
            active = %active.kid,
            older = older.len(),
            "signing keys loaded"
        );
        Ok(Self {
            signing: newest.secret,
            active,
            older,
        })
    }

    /// Makes a new key in `dir` (created with mode 700 if missing) as
    /// `<now as YYYYMMDDTHHMMSSZ>.k4.secret`, mode 600, and returns its path. It signs once the
    /// ring is loaded again, being the newest.
    pub fn generate(dir: &Path, now: OffsetDateTime) -> Result<PathBuf, KeyError> {
        key_files::write_new_key(dir, now)
    }

    /// The signing key's id, `k4.pid.…`.
    pub fn active_key_id(&self) -> &str {
        &self.active.kid
    }

    /// Every key, newest (the signing key) first, with when each older one can be retired given
    /// the access token lifetime.
    ///
    /// A key stops signing when the newer key is loaded, which `not_after` takes to be when the
    /// newer key was made: reload the replicas right after `keygen`, or wait the extra time.
    pub fn public_keys(&self, access_ttl: Duration) -> Vec<PublishedKey> {
        let mut published = Vec::with_capacity(1 + self.older.len());
        published.push(PublishedKey {
            key_id: self.active.kid.clone(),
            public_key: self.active.paserk.clone(),
            active: true,
            not_after: None,
        });
        let mut newer = &self.active;
        for key in &self.older {
            published.push(PublishedKey {
                key_id: key.kid.clone(),
                public_key: key.paserk.clone(),
                active: false,
                not_after: Some(newer.created.saturating_add(access_ttl)),
            });
            newer = key;
        }
        published
    }

    /// The secret key that signs, and its id.
    pub(super) fn signer(&self) -> (&AsymmetricSecretKey<V4>, &str) {
        (&self.signing, &self.active.kid)
    }

    /// The key named `kid`, if it is in the ring.
    pub(super) fn find(&self, kid: &str) -> Option<&RingKey> {
        std::iter::once(&self.active)
            .chain(&self.older)
            .find(|key| key.kid == kid)
    }
}

fn ring_key(file: &KeyFile) -> Result<RingKey, KeyError> {
    let public = AsymmetricPublicKey::<V4>::try_from(&file.secret)
        .map_err(|e| anyhow::anyhow!("deriving a public key failed: {e:?}"))?;
    Ok(RingKey {
        created: file.created,
        kid: paserk(&Id::from(&public))?,
        paserk: paserk(&public)?,
        public,
    })
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("active", &self.active.kid)
            .field(
                "older",
                &self.older.iter().map(|key| &key.kid).collect::<Vec<_>>(),
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

    #[test]
    fn the_newest_key_signs_and_every_key_is_published_newest_first() {
        let dir = TempDir::new();
        let t1 = T0 + Duration::days(30);
        let t2 = T0 + Duration::days(60);
        // Made out of order: the name, not the order of making, decides.
        for at in [t1, T0, t2] {
            KeyRing::generate(dir.path(), at).expect("generated");
        }
        fs::write(dir.path().join("README"), "not a key").expect("written");

        let ring = KeyRing::load(dir.path()).expect("loads");
        let published = ring.public_keys(TTL);

        assert_eq!(published.len(), 3);
        assert_eq!(published[0].key_id, ring.active_key_id());
        let flags: Vec<_> = published.iter().map(|k| (k.active, k.not_after)).collect();
        assert_eq!(
            flags,
            [
                (true, None),
                (false, Some(t2 + TTL)),
                (false, Some(t1 + TTL))
            ]
        );
        for key in &published {
            assert!(key.key_id.starts_with("k4.pid."), "{}", key.key_id);
            assert!(key.public_key.starts_with("k4.public."));
        }
    }

    #[test]
    fn an_empty_or_missing_directory_asks_for_keygen() {
        let dir = TempDir::new();
        let missing = KeyRing::load(dir.path()).expect_err("no directory");
        fs::create_dir(dir.path()).expect("created");
        fs::write(dir.path().join("notes.txt"), "hello").expect("written");
        let empty = KeyRing::load(dir.path()).expect_err("no key");

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

        let error = KeyRing::load(dir.path()).expect_err("malformed");

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

        let error = KeyRing::load(dir.path()).expect_err("bad name");

        assert!(matches!(error, KeyError::Malformed { path, .. } if path == renamed));
    }

    #[test]
    fn the_same_key_in_two_files_is_refused() {
        let dir = TempDir::new();
        let original = KeyRing::generate(dir.path(), T0).expect("generated");
        let copy = dir.path().join("20261122T070000Z.k4.secret");
        fs::copy(&original, &copy).expect("copied");

        let error = KeyRing::load(dir.path()).expect_err("duplicate");

        assert!(matches!(
            error,
            KeyError::Duplicate { first, second } if first == copy && second == original
        ));
    }

    #[test]
    fn key_ids_are_the_paserk_ids_of_the_public_keys() {
        let dir = TempDir::new();
        let path = KeyRing::generate(dir.path(), T0).expect("generated");
        let ring = KeyRing::load(dir.path()).expect("loads");
        let text = fs::read_to_string(path).expect("readable");
        let secret = AsymmetricSecretKey::<V4>::try_from(text.trim()).expect("a k4.secret");
        let public = AsymmetricPublicKey::<V4>::try_from(&secret).expect("public half");

        assert_eq!(
            ring.active_key_id(),
            paserk(&Id::from(&public)).expect("id")
        );
        assert_eq!(
            ring.public_keys(TTL)[0].public_key,
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
        let ring = KeyRing::load(dir.path()).expect("loads");

        let shown = format!("{ring:?} {ring:#?}");

        assert!(shown.contains(ring.active_key_id()), "{shown}");
        for secret in &secrets {
            let encoded = secret.trim().trim_start_matches("k4.secret.");
            // Neither the whole key nor its seed (the first 32 bytes, 43 characters).
            assert!(!shown.contains(&encoded[..43]), "{shown}");
        }
    }
}
