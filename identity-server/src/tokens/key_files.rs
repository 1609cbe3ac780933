//! The key directory on disk: one PASERK `k4.secret` per file, named after the UTC time the key
//! was made (`20261121T070000Z.k4.secret`), readable by its owner only.
//!
//! Files whose names do not end in `.k4.secret`, and dot files (Kubernetes' `..data` links among
//! them), are someone else's and are skipped. A `*.k4.secret` file that cannot be used is an
//! error naming the file: silently skipping it could drop the key that should sign.

use std::{
    ffi::OsStr,
    fs,
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use pasetors::{
    keys::{AsymmetricKeyPair, AsymmetricSecretKey, Generate},
    paserk::FormatAsPaserk,
    version4::V4,
};
use secrecy::{ExposeSecret, SecretString};
use time::{
    OffsetDateTime, PrimitiveDateTime, UtcOffset, format_description::BorrowedFormatItem,
    macros::format_description,
};

use super::keys::KeyError;

const SUFFIX: &str = ".k4.secret";
const CREATED: &[BorrowedFormatItem<'static>] =
    format_description!("[year][month][day]T[hour][minute][second]Z");
/// `YYYYMMDDTHHMMSSZ`.
const CREATED_LEN: usize = 16;
/// A `k4.secret` PASERK is 96 characters; anything much longer is not one.
const MAX_FILE_BYTES: u64 = 1024;

/// A key read from its file.
pub(super) struct KeyFile {
    pub(super) path: PathBuf,
    pub(super) created: OffsetDateTime,
    pub(super) secret: AsymmetricSecretKey<V4>,
}

/// Reads every key file in `dir`, in no particular order.
pub(super) fn read_dir(dir: &Path) -> Result<Vec<KeyFile>, KeyError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(KeyError::NoKey { dir: dir.into() });
        }
        Err(source) => return Err(KeyError::io(dir, source)),
    };
    let mut keys = Vec::new();
    for entry in entries {
        let path = entry.map_err(|source| KeyError::io(dir, source))?.path();
        let Some(name) = path.file_name() else {
            continue;
        };
        match created_from_name(name) {
            Naming::NotAKey => {
                tracing::debug!(file = %path.display(), "not a key file; skipped");
            }
            Naming::BadTime => {
                return Err(KeyError::Malformed {
                    path,
                    reason: "its name must be YYYYMMDDTHHMMSSZ.k4.secret, the UTC time it was made",
                });
            }
            Naming::Key(created) => {
                let secret = read_key(&path)?;
                keys.push(KeyFile {
                    path,
                    created,
                    secret,
                });
            }
        }
    }
    Ok(keys)
}

enum Naming {
    NotAKey,
    BadTime,
    Key(OffsetDateTime),
}

fn created_from_name(name: &OsStr) -> Naming {
    let Some(name) = name.to_str() else {
        return Naming::NotAKey;
    };
    if name.starts_with('.') {
        return Naming::NotAKey;
    }
    let Some(stamp) = name.strip_suffix(SUFFIX) else {
        return Naming::NotAKey;
    };
    if stamp.len() != CREATED_LEN {
        return Naming::BadTime;
    }
    match PrimitiveDateTime::parse(stamp, CREATED) {
        Ok(created) => Naming::Key(created.assume_utc()),
        Err(_) => Naming::BadTime,
    }
}

/// `<created>.k4.secret` for a key made at `now` (in UTC, to the second).
fn file_name(now: OffsetDateTime) -> Result<String, KeyError> {
    let stamp = now
        .to_offset(UtcOffset::UTC)
        .format(CREATED)
        .map_err(|e| anyhow::anyhow!("cannot name a key made at {now}: {e}"))?;
    Ok(format!("{stamp}{SUFFIX}"))
}

/// Reads one key. Nothing read from the file goes into an error or a log line.
fn read_key(path: &Path) -> Result<AsymmetricSecretKey<V4>, KeyError> {
    let malformed = |reason| KeyError::Malformed {
        path: path.into(),
        reason,
    };
    let metadata = fs::metadata(path).map_err(|source| KeyError::io(path, source))?;
    if !metadata.is_file() {
        return Err(malformed("it is not a regular file"));
    }
    let mode = metadata.permissions().mode() & 0o777;
    // Group read is allowed: Kubernetes gives a non-root pod its Secret files that way (mode
    // 440, the group being the pod's fsGroup). Others reading, or the group writing, is not.
    if mode & 0o027 != 0 {
        tracing::warn!(
            file = %path.display(),
            mode = %format_args!("{mode:o}"),
            "a signing key is readable by other users; make it mode 600 (or 440 for the pod's group)"
        );
    }
    if metadata.len() > MAX_FILE_BYTES {
        return Err(malformed("it is too large to hold a PASERK k4.secret key"));
    }
    let text = match fs::read_to_string(path) {
        Ok(text) => SecretString::from(text),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            return Err(malformed("it is not UTF-8 text"));
        }
        Err(source) => return Err(KeyError::io(path, source)),
    };
    AsymmetricSecretKey::<V4>::try_from(text.expose_secret().trim())
        .map_err(|_| malformed("it does not hold one PASERK k4.secret key"))
}

/// Makes a key and writes it to a new file in `dir` (created with mode 700 if missing); the file
/// has mode 600 and is never overwritten.
pub(super) fn write_new_key(dir: &Path, now: OffsetDateTime) -> Result<PathBuf, KeyError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| KeyError::io(dir, source))?;
    let path = dir.join(file_name(now)?);
    let pair = AsymmetricKeyPair::<V4>::generate()
        .map_err(|e| anyhow::anyhow!("Ed25519 key generation failed: {e:?}"))?;
    let paserk = SecretString::from(paserk(&pair.secret)?);

    let mut file = match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(KeyError::AlreadyExists { path });
        }
        Err(source) => return Err(KeyError::io(&path, source)),
    };
    let written = file
        .write_all(paserk.expose_secret().as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all());
    if let Err(source) = written {
        // A half-written key would stop the server at the next start; leave nothing behind.
        let _ = fs::remove_file(&path);
        return Err(KeyError::io(&path, source));
    }
    // Make the new directory entry durable too.
    fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|source| KeyError::io(dir, source))?;
    Ok(path)
}

/// `value` in PASERK form (`k4.secret.…`, `k4.public.…`, `k4.pid.…`).
pub(super) fn paserk(value: &dyn FormatAsPaserk) -> Result<String, KeyError> {
    let mut text = String::new();
    value
        .fmt(&mut text)
        .map_err(|_| anyhow::anyhow!("PASERK encoding failed"))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn key_file_names_carry_the_utc_creation_time_to_the_second() {
        let made = datetime!(2026-11-21 08:00:00.75 +01:00);
        let name = file_name(made).expect("named");
        assert_eq!(name, "20261121T070000Z.k4.secret");
        assert!(matches!(
            created_from_name(OsStr::new(&name)),
            Naming::Key(t) if t == datetime!(2026-11-21 07:00 UTC)
        ));
    }

    #[test]
    fn only_k4_secret_files_that_are_not_hidden_are_keys() {
        for other in [
            "README",
            "20261121T070000Z.k4.public",
            "20261121T070000Z.k4.secret~",
            ".20261121T070000Z.k4.secret",
            "..data",
        ] {
            assert!(
                matches!(created_from_name(OsStr::new(other)), Naming::NotAKey),
                "{other}"
            );
        }
        for bad in [
            "key.k4.secret",
            "2026-11-21T07:00:00Z.k4.secret",
            "20261121T070000.k4.secret",
            "20261341T070000Z.k4.secret",
            "+2026121T070000Z.k4.secret",
        ] {
            assert!(
                matches!(created_from_name(OsStr::new(bad)), Naming::BadTime),
                "{bad}"
            );
        }
    }
}
