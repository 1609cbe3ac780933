//! Secret settings, given directly or as a file. Every secret setting `NAME` of both binaries
//! (a database URL, a MAC key, SMTP and NATS credentials) has a second form, `NAME_FILE`: the
//! path of a file holding the value, as a mounted Kubernetes Secret or a Docker secret provides
//! it. Each binary declares both forms in its clap options (the value with [`parse`], the file
//! as a path) and calls [`resolve`] or [`require`] once at start-up; from then on the secret is
//! a [`SecretString`], whichever form it came in.
//!
//! The file form is the one that keeps a secret out of the process environment: a variable's
//! value stays readable in `/proc/<pid>/environ` (and in core dumps) for the process's whole
//! life, even if the process removes the variable, since the kernel shows the environment the
//! process started with; a flag's value is in `/proc/<pid>/cmdline`, which every local user may
//! read.
//!
//! A file is read whole (at most [`MAX_FILE_BYTES`]), as UTF-8, and one line ending at its end
//! (`\n` or `\r\n`, as `echo` or an editor leaves it) is dropped; any other white space is part
//! of the secret. Errors name the variable and the path, never the contents.

use std::{
    io::Read,
    path::{Path, PathBuf},
};

use secrecy::SecretString;

/// The largest secret file read: a path to something else (a log, `/dev/zero`) is refused
/// rather than read into memory.
pub const MAX_FILE_BYTES: u64 = 64 * 1024;

/// Why a secret setting cannot be used. `name` is the variable of the direct form (`DATABASE_URL`);
/// the file form's is `name` followed by `_FILE`.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Both forms were given: which one wins would be a guess.
    #[error(
        "{name} and {name}_FILE are both set (as variables or flags): give the secret one way \
         ({name}_FILE keeps it out of the process environment)"
    )]
    BothForms {
        /// The direct form's variable.
        name: &'static str,
    },
    /// Neither form was given, for a secret that is required.
    #[error("{name} is required: set {name}_FILE to a file holding it, or {name}")]
    Missing {
        /// The direct form's variable.
        name: &'static str,
    },
    /// The file could not be read (missing, a directory, not permitted, too large, not UTF-8).
    #[error("{name}_FILE: cannot read {}: {reason}", path.display())]
    Unreadable {
        /// The direct form's variable.
        name: &'static str,
        /// The path given.
        path: PathBuf,
        /// What went wrong, without the contents.
        reason: String,
    },
    /// The file holds nothing but, at most, a line ending.
    #[error("{name}_FILE: {} is empty", path.display())]
    Empty {
        /// The direct form's variable.
        name: &'static str,
        /// The path given.
        path: PathBuf,
    },
}

/// The clap value parser of a secret's direct form: any text but the empty one.
///
/// # Errors
/// An empty value.
pub fn parse(raw: &str) -> Result<SecretString, String> {
    if raw.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(SecretString::from(raw))
}

/// The secret `name`, from whichever form was given: `value` (the variable `name` or its flag)
/// or `file` (`name_FILE` or its flag), read now; `None` when neither was.
///
/// # Errors
/// Both forms given, or a file that cannot be read or is empty.
pub fn resolve(
    name: &'static str,
    value: Option<SecretString>,
    file: Option<&Path>,
) -> Result<Option<SecretString>, SecretError> {
    match (value, file) {
        (Some(_), Some(_)) => Err(SecretError::BothForms { name }),
        (Some(value), None) => Ok(Some(value)),
        (None, Some(path)) => read(name, path).map(Some),
        (None, None) => Ok(None),
    }
}

/// As [`resolve`], for a secret without which the binary cannot run.
///
/// # Errors
/// As [`resolve`], and neither form given.
pub fn require(
    name: &'static str,
    value: Option<SecretString>,
    file: Option<&Path>,
) -> Result<SecretString, SecretError> {
    resolve(name, value, file)?.ok_or(SecretError::Missing { name })
}

/// The contents of `path` without one line ending at the end.
fn read(name: &'static str, path: &Path) -> Result<SecretString, SecretError> {
    let unreadable = |reason: String| SecretError::Unreadable {
        name,
        path: path.to_owned(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| unreadable(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| unreadable(e.to_string()))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(unreadable(format!(
            "larger than {MAX_FILE_BYTES} bytes, too large for a secret"
        )));
    }
    let mut text = String::from_utf8(bytes).map_err(|_| unreadable("not UTF-8 text".into()))?;
    let kept = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .map_or(text.len(), str::len);
    text.truncate(kept);
    if text.is_empty() {
        return Err(SecretError::Empty {
            name,
            path: path.to_owned(),
        });
    }
    Ok(SecretString::from(text))
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    /// A file of its own in the temporary folder holding `contents`; removed when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(contents: &[u8]) -> Self {
            static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = std::env::temp_dir()
                .join(format!("identity-secret-test-{}-{n}", std::process::id()));
            std::fs::write(&path, contents).expect("the file is written");
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn from_file(contents: &[u8]) -> Result<Option<SecretString>, SecretError> {
        let file = TempFile::new(contents);
        resolve("THE_KEY", None, Some(&file.0))
    }

    fn text(secret: Result<Option<SecretString>, SecretError>) -> String {
        secret
            .expect("read")
            .expect("given")
            .expose_secret()
            .to_owned()
    }

    #[test]
    fn one_line_ending_at_the_end_is_dropped_and_nothing_else() {
        assert_eq!(text(from_file(b"s3cret\n")), "s3cret");
        assert_eq!(text(from_file(b"s3cret\r\n")), "s3cret");
        assert_eq!(text(from_file(b"s3cret")), "s3cret");
        assert_eq!(text(from_file(b"s3cret\n\n")), "s3cret\n");
        assert_eq!(text(from_file(b" s3 cret \t\n")), " s3 cret \t");
        assert_eq!(
            text(from_file(b"line one\nline two\n")),
            "line one\nline two"
        );
    }

    #[test]
    fn an_empty_file_is_refused_naming_the_variable_and_the_path() {
        for contents in [&b""[..], b"\n", b"\r\n"] {
            let file = TempFile::new(contents);
            let error = resolve("THE_KEY", None, Some(&file.0))
                .expect_err("empty")
                .to_string();
            assert!(error.contains("THE_KEY_FILE"), "{error}");
            assert!(error.contains(&file.0.display().to_string()), "{error}");
            assert!(error.contains("is empty"), "{error}");
        }
    }

    #[test]
    fn an_unreadable_file_is_refused_naming_the_variable_and_the_path() {
        let missing = std::env::temp_dir().join("identity-secret-test-missing");
        let error = resolve("THE_KEY", None, Some(&missing))
            .expect_err("missing")
            .to_string();
        assert!(
            error.starts_with("THE_KEY_FILE: cannot read ")
                && error.contains(&missing.display().to_string()),
            "{error}"
        );

        let large = TempFile::new(&vec![b'k'; 64 * 1024 + 1]);
        let error = resolve("THE_KEY", None, Some(&large.0)).expect_err("too large");
        assert!(error.to_string().contains("too large"), "{error}");

        let binary = TempFile::new(&[0x73, 0xff, 0xfe, 0x0a]);
        let error = resolve("THE_KEY", None, Some(&binary.0)).expect_err("not text");
        assert!(error.to_string().contains("not UTF-8"), "{error}");
    }

    #[test]
    fn both_forms_are_refused_naming_both_and_neither_is_none_or_missing() {
        let file = TempFile::new(b"from-file\n");
        let error = resolve("THE_KEY", Some("direct".into()), Some(&file.0))
            .expect_err("both")
            .to_string();
        assert!(
            error.starts_with("THE_KEY and THE_KEY_FILE are both set"),
            "{error}"
        );
        assert!(
            !error.contains("direct") && !error.contains("from-file"),
            "{error}"
        );

        assert!(resolve("THE_KEY", None, None).expect("fine").is_none());
        let missing = require("THE_KEY", None, None).expect_err("required");
        assert!(missing.to_string().contains("THE_KEY_FILE"), "{missing}");
        let direct = require("THE_KEY", Some("direct".into()), None).expect("given");
        assert_eq!(direct.expose_secret(), "direct");
    }

    #[test]
    fn errors_never_show_the_contents() {
        let file = TempFile::new(b"\xffsecret-contents");
        let error = resolve("THE_KEY", None, Some(&file.0)).expect_err("not text");
        assert!(!format!("{error} {error:?}").contains("secret-contents"));
    }

    #[test]
    fn the_direct_form_must_not_be_empty() {
        assert!(parse("").is_err());
        assert_eq!(parse("x").expect("a value").expose_secret(), "x");
    }
}
