//! ALTCHA v1 as a client sees it, written from the protocol rather than from the server's code:
//! a brute-force solver, the widget's payload, and (for a test that knows the server's key)
//! challenges minted by hand, such as expired ones. Also runs altcha-lib (npm) for the
//! compatibility test and the solve-time figures.

use std::{
    io::Write,
    path::PathBuf,
    process::{Command, Stdio},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use identity_proto::identity::v1::CreateChallengeResponse;
use sha2::{Digest, Sha256};

/// hex(SHA-256(salt ‖ decimal(number))).
pub fn hash(salt: &str, number: u64) -> String {
    let digest = Sha256::new()
        .chain_update(salt.as_bytes())
        .chain_update(number.to_string().as_bytes())
        .finalize();
    hex(&digest)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The number that solves `challenge`, by trying 0, 1, 2... up to its `maxnumber`.
pub fn solve(challenge: &CreateChallengeResponse) -> Option<u64> {
    // Compare digests, not their hex, so the loop is one SHA-256 per number.
    let target: Vec<u8> = (0..challenge.challenge.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(challenge.challenge.get(i..i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    let salted = Sha256::new().chain_update(challenge.salt.as_bytes());
    let mut digits = String::new();
    (0..=u64::from(challenge.maxnumber)).find(|n| {
        use std::fmt::Write;
        digits.clear();
        let _ = write!(digits, "{n}");
        salted.clone().chain_update(digits.as_bytes()).finalize()[..] == target[..]
    })
}

/// The payload the widget submits for `challenge` solved with `number`: base64 of the JSON
/// object, with the widget's extra `took` field.
pub fn payload(challenge: &CreateChallengeResponse, number: u64) -> String {
    payload_with_salt(challenge, &challenge.salt, number)
}

/// As [`payload`], with another salt (a tampered one).
pub fn payload_with_salt(challenge: &CreateChallengeResponse, salt: &str, number: u64) -> String {
    let json = serde_json::json!({
        "algorithm": challenge.algorithm,
        "challenge": challenge.challenge,
        "number": number,
        "salt": salt,
        "signature": challenge.signature,
        "took": 1,
    });
    STANDARD.encode(json.to_string())
}

/// A challenge for `salt` and `number` signed with `key`, as a server holding that key would
/// make it.
pub fn mint(key: &str, salt: &str, number: u64) -> CreateChallengeResponse {
    let challenge = hash(salt, number);
    CreateChallengeResponse {
        algorithm: "SHA-256".into(),
        signature: signature(key, &challenge),
        challenge,
        maxnumber: 100_000,
        salt: salt.into(),
    }
}

/// The signature a server holding `key` gives `challenge`: hex(HMAC-SHA256(key, challenge)).
pub fn signature(key: &str, challenge: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(challenge.as_bytes());
    hex(&mac.finalize().into_bytes())
}

/// A salt in the server's form that expires at `unix_seconds`, with fresh random digits.
pub fn salt_expiring_at(unix_seconds: i64) -> String {
    let random: [u8; 12] = rand::random();
    format!("{}?expires={unix_seconds}&", hex(&random))
}

/// The repository's root (where `package.json` and `node_modules/` are).
fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

/// What `tests/js/altcha-solve.mjs` answered for one challenge.
#[derive(Debug, serde::Deserialize)]
pub struct NodeSolution {
    /// The widget-style payload (base64 JSON).
    pub payload: String,
    /// altcha-lib's own `verifySolution(payload, key)`, when a key was given.
    pub verified: Option<bool>,
    /// Milliseconds altcha-lib's `solveChallenge` took.
    pub took_ms: f64,
}

/// Has altcha-lib (npm, pinned in package.json; `npm ci` installs it) solve `challenges` with
/// `solveChallenge` from `altcha-lib/v1`, and, given `key`, check each solution with its
/// `verifySolution`.
pub fn solve_with_altcha_lib(
    challenges: &[CreateChallengeResponse],
    key: Option<&str>,
) -> Vec<NodeSolution> {
    let root = repo_root();
    assert!(
        root.join("node_modules/altcha-lib").is_dir(),
        "altcha-lib is missing: run `npm ci` in {} (scripts/test does)",
        root.display()
    );
    let input: Vec<_> = challenges
        .iter()
        .map(|c| {
            serde_json::json!({
                "algorithm": c.algorithm,
                "challenge": c.challenge,
                "maxnumber": c.maxnumber,
                "salt": c.salt,
                "signature": c.signature,
            })
        })
        .collect();
    let mut child = Command::new("node")
        .arg(root.join("tests/js/altcha-solve.mjs"))
        .current_dir(&root)
        .env("ALTCHA_HMAC_KEY", key.unwrap_or_default())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node runs (install Node.js)");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(serde_json::Value::from(input).to_string().as_bytes())
        .expect("node reads the challenges");
    let output = child.wait_with_output().expect("node finishes");
    assert!(output.status.success(), "altcha-solve.mjs failed");
    String::from_utf8(output.stdout)
        .expect("UTF-8")
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect()
}
