//! Argon2id password hashing on a fixed pool of worker threads, off the async runtime.
//!
//! Why not `spawn_blocking` per hash: each worker owns one Argon2 memory buffer (19 MiB with the
//! default parameters) and reuses it for every hash, so the memory spent on hashing is exactly
//! `workers x m_cost`, whatever the load. Jobs wait in a bounded queue; when it is full,
//! [`PasswordHasher::hash`] fails at once with [`HashError::Overloaded`] instead of queueing
//! without bound, and the caller is told when to retry.

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use argon2::{Algorithm, Argon2, Block, Params, Version, password_hash::phc};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::oneshot;
use tracing::Span;

use crate::domain::Password;

/// How the pool hashes and how much it takes on.
#[derive(Debug, Clone)]
pub struct HashingConfig {
    /// Argon2id parameters (OWASP: m=19456 KiB, t=2, p=1).
    pub params: Params,
    /// Worker threads, i.e. hashes computed at once. One per core is the sweet spot.
    pub workers: usize,
    /// Hashes allowed to wait for a worker; beyond that, callers are turned away.
    pub queue: usize,
}

/// Why a hash was not produced.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Every worker is busy and the queue is full.
    #[error("password hashing is saturated")]
    Overloaded {
        /// About when a place in the queue should be free.
        retry_after: Duration,
    },
    /// The pool is gone or Argon2 refused its input; a bug, not a user error.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// What a worker is asked to do.
enum Task {
    /// Hash a new password.
    Hash,
    /// Check a password against a stored PHC string.
    Verify(String),
}

/// What a worker did.
enum Outcome {
    Hashed(String),
    Verified(Verification),
}

/// The result of checking a password against a stored hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verification {
    /// Whether the password is the one the hash was made from.
    pub matches: bool,
    /// Whether the hash was made with other parameters than the current ones, so a matching
    /// password should be hashed again.
    pub outdated: bool,
}

struct Job {
    password: SecretString,
    task: Task,
    reply: oneshot::Sender<anyhow::Result<Outcome>>,
    span: Span,
    /// When the job entered the queue.
    queued_at: Instant,
}

/// Handle to the hashing pool; cheap to clone. Workers stop when the last handle is dropped.
#[derive(Clone)]
pub struct PasswordHasher {
    jobs: mpsc::SyncSender<Job>,
    config: Arc<HashingConfig>,
    /// Duration of the latest hash, in microseconds, to estimate retry delays.
    last_hash_micros: Arc<AtomicU64>,
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasher")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl PasswordHasher {
    /// Starts `config.workers` threads.
    pub fn start(config: HashingConfig) -> std::io::Result<Self> {
        let workers = config.workers.max(1);
        let (jobs, queue) = mpsc::sync_channel::<Job>(config.queue);
        let queue = Arc::new(Mutex::new(queue));
        let last_hash_micros = Arc::new(AtomicU64::new(30_000));
        for index in 0..workers {
            let queue = Arc::clone(&queue);
            let params = config.params.clone();
            let last = Arc::clone(&last_hash_micros);
            thread::Builder::new()
                .name(format!("argon2-{index}"))
                .spawn(move || work(&queue, &params, &last))?;
        }
        Ok(Self {
            jobs,
            config: Arc::new(HashingConfig { workers, ..config }),
            last_hash_micros,
        })
    }

    /// Hashes `password` into an Argon2id PHC string, waiting for a worker if need be.
    pub async fn hash(&self, password: Password) -> Result<String, HashError> {
        self.rehash(password.expose()).await
    }

    /// Checks `password` (as typed, unparsed: a login must not reveal the policy) against the
    /// stored PHC string `phc`, with the same bounded queue as hashing. For an unknown user, pass
    /// [`PasswordHasher::dummy_hash`] so the answer takes as long.
    pub async fn verify(&self, password: &str, phc: &str) -> Result<Verification, HashError> {
        match self
            .run(SecretString::from(password), Task::Verify(phc.to_owned()))
            .await?
        {
            Outcome::Verified(verification) => Ok(verification),
            Outcome::Hashed(_) => Err(anyhow::anyhow!("a check came back as a hash").into()),
        }
    }

    /// Hashes a password that was already accepted once (at login, to upgrade an outdated
    /// hash); the policy is not applied again.
    pub async fn rehash(&self, password: &str) -> Result<String, HashError> {
        match self.run(SecretString::from(password), Task::Hash).await? {
            Outcome::Hashed(phc) => Ok(phc),
            Outcome::Verified(_) => Err(anyhow::anyhow!("a hash job came back as a check").into()),
        }
    }

    /// A valid hash of a random password with the current parameters, to check against when
    /// there is no user, so that unknown and known addresses take the same time.
    pub async fn dummy_hash(&self) -> Result<String, HashError> {
        let mut random = [0u8; 24];
        rand::fill(&mut random);
        let password: String = random.iter().map(|b| format!("{b:02x}")).collect();
        self.rehash(&password).await
    }

    async fn run(&self, password: SecretString, task: Task) -> Result<Outcome, HashError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            password,
            task,
            reply,
            span: Span::current(),
            queued_at: Instant::now(),
        };
        match self.jobs.try_send(job) {
            Ok(()) => metrics::gauge!(crate::metrics::HASH_QUEUE_DEPTH).increment(1),
            Err(mpsc::TrySendError::Full(_)) => {
                metrics::counter!(crate::metrics::HASH_OVERLOADED).increment(1);
                return Err(HashError::Overloaded {
                    retry_after: self.retry_after(),
                });
            }
            Err(mpsc::TrySendError::Disconnected(_)) => {
                return Err(anyhow::anyhow!("the hashing workers have stopped").into());
            }
        }
        let hashed = answer
            .await
            .map_err(|_| anyhow::anyhow!("a hashing worker dropped its job"))??;
        Ok(hashed)
    }

    /// The time for a full queue to drain: a fair hint for an overloaded caller.
    fn retry_after(&self) -> Duration {
        let per_hash = Duration::from_micros(self.last_hash_micros.load(Ordering::Relaxed));
        let rounds = self.config.queue.div_ceil(self.config.workers).max(1);
        per_hash * u32::try_from(rounds).unwrap_or(u32::MAX)
    }
}

/// A worker: takes jobs until every sender is gone, reusing one Argon2 memory buffer.
fn work(queue: &Mutex<mpsc::Receiver<Job>>, params: &Params, last_hash_micros: &AtomicU64) {
    let mut memory = vec![Block::default(); params.block_count()];
    loop {
        // Only the receive happens under the lock; hashing runs in parallel.
        let next = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(job) = next else { return };
        metrics::gauge!(crate::metrics::HASH_QUEUE_DEPTH).decrement(1);
        metrics::histogram!(crate::metrics::HASH_WAIT).record(job.queued_at.elapsed());
        if job.reply.is_closed() {
            continue; // The caller went away (deadline, cancellation): skip the work.
        }
        let _entered = job.span.enter();
        let started = Instant::now();
        let result = match &job.task {
            Task::Hash => hash_with_memory(job.password.expose_secret(), params, &mut memory)
                .map(Outcome::Hashed),
            Task::Verify(phc) => {
                verify_with_memory(job.password.expose_secret(), phc, params, &mut memory)
                    .map(Outcome::Verified)
            }
        };
        let task = match &job.task {
            Task::Hash => "hash",
            Task::Verify(_) => "verify",
        };
        metrics::histogram!(crate::metrics::HASH_DURATION, "task" => task)
            .record(started.elapsed());
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        last_hash_micros.store(micros, Ordering::Relaxed);
        let _ = job.reply.send(result);
    }
}

/// Argon2id over `memory`, formatted as a PHC string with a fresh 16-byte salt.
pub fn hash_with_memory(
    password: &str,
    params: &Params,
    memory: &mut [Block],
) -> anyhow::Result<String> {
    let mut salt = [0u8; phc::Salt::RECOMMENDED_LENGTH];
    rand::fill(&mut salt);
    let mut output = [0u8; Params::DEFAULT_OUTPUT_LEN];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password_into_with_memory(password.as_bytes(), &salt, &mut output, memory)
        .map_err(|e| anyhow::anyhow!("argon2: {e}"))?;
    let phc_hash = phc::PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: phc::ParamsString::try_from(params).map_err(|e| anyhow::anyhow!("phc: {e}"))?,
        salt: Some(phc::Salt::new(&salt).map_err(|e| anyhow::anyhow!("phc: {e}"))?),
        hash: Some(phc::Output::new(&output).map_err(|e| anyhow::anyhow!("phc: {e}"))?),
    };
    Ok(phc_hash.to_string())
}

/// Checks `password` against `phc`, reusing `memory` when the stored parameters fit in it.
fn verify_with_memory(
    password: &str,
    phc: &str,
    current: &Params,
    memory: &mut [Block],
) -> anyhow::Result<Verification> {
    let stored = phc::PasswordHash::new(phc).map_err(|e| anyhow::anyhow!("stored hash: {e}"))?;
    let params =
        Params::try_from(&stored).map_err(|e| anyhow::anyhow!("stored hash parameters: {e}"))?;
    let (Some(salt), Some(expected)) = (&stored.salt, &stored.hash) else {
        anyhow::bail!("the stored hash has no salt or output");
    };
    let mut output = vec![0u8; expected.len()];
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let blocks = params.block_count();
    let computed = if blocks <= memory.len() {
        argon2.hash_password_into_with_memory(
            password.as_bytes(),
            salt.as_ref(),
            &mut output,
            &mut memory[..blocks],
        )
    } else {
        // A hash made with more memory than today's: allocate for this one check.
        argon2.hash_password_into(password.as_bytes(), salt.as_ref(), &mut output)
    };
    computed.map_err(|e| anyhow::anyhow!("argon2: {e}"))?;
    let output = phc::Output::new(&output).map_err(|e| anyhow::anyhow!("phc: {e}"))?;
    Ok(Verification {
        // phc's Output compares in constant time.
        matches: &output == expected,
        outdated: stored.algorithm != Algorithm::Argon2id.ident()
            || stored.version != Some(Version::V0x13.into())
            || params.m_cost() != current.m_cost()
            || params.t_cost() != current.t_cost()
            || params.p_cost() != current.p_cost(),
    })
}

#[cfg(test)]
mod tests {
    use argon2::PasswordVerifier;

    use super::*;

    fn password(raw: &str) -> Password {
        Password::parse(raw, &[]).expect("valid password")
    }

    #[tokio::test]
    async fn hashes_are_owasp_argon2id_and_verify_with_the_argon2_crate() {
        let hasher = PasswordHasher::start(HashingConfig {
            params: Params::DEFAULT,
            workers: 2,
            queue: 4,
        })
        .expect("threads start");
        let phc_string = hasher
            .hash(password("tangerine-kettle-orbit"))
            .await
            .expect("hashes");
        assert!(phc_string.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));

        let parsed = argon2::PasswordHash::new(&phc_string).expect("valid PHC string");
        let verifier = Argon2::default();
        assert!(
            verifier
                .verify_password(b"tangerine-kettle-orbit", &parsed)
                .is_ok()
        );
        assert!(
            verifier
                .verify_password(b"tangerine-kettle-orbiT", &parsed)
                .is_err()
        );

        let again = hasher
            .hash(password("tangerine-kettle-orbit"))
            .await
            .expect("hashes");
        assert_ne!(again, phc_string, "every hash has its own salt");
    }

    #[tokio::test]
    async fn verification_matches_only_the_right_password_and_flags_old_parameters() {
        let hasher = PasswordHasher::start(HashingConfig {
            params: Params::DEFAULT,
            workers: 1,
            queue: 4,
        })
        .expect("threads start");
        let phc_string = hasher
            .hash(password("tangerine-kettle-orbit"))
            .await
            .expect("hashes");

        let right = hasher
            .verify("tangerine-kettle-orbit", &phc_string)
            .await
            .expect("checks");
        assert_eq!(
            right,
            Verification {
                matches: true,
                outdated: false
            }
        );
        let wrong = hasher
            .verify("tangerine-kettle-orbiT", &phc_string)
            .await
            .expect("checks");
        assert!(!wrong.matches);

        // A hash made with weaker parameters still verifies, and says it is outdated.
        let weak = Params::new(8 * 1024, 1, 1, None).expect("valid params");
        let old = hash_with_memory(
            "tangerine-kettle-orbit",
            &weak,
            &mut vec![Block::default(); weak.block_count()],
        )
        .expect("hashes");
        let checked = hasher
            .verify("tangerine-kettle-orbit", &old)
            .await
            .expect("checks");
        assert_eq!(
            checked,
            Verification {
                matches: true,
                outdated: true
            }
        );

        let dummy = hasher.dummy_hash().await.expect("hashes");
        assert!(
            !hasher
                .verify("tangerine-kettle-orbit", &dummy)
                .await
                .expect("checks")
                .matches
        );
    }

    #[tokio::test]
    async fn a_full_queue_fails_fast_with_a_retry_hint() {
        // One worker and one place in the queue: of 8 callers arriving together (each hash takes
        // far longer than starting 8 tasks), one or two are served and the rest turned away.
        let hasher = PasswordHasher::start(HashingConfig {
            params: Params::new(64 * 1024, 8, 1, None).expect("valid params"),
            workers: 1,
            queue: 1,
        })
        .expect("threads start");
        let callers: Vec<_> = (0..8)
            .map(|_| {
                let hasher = hasher.clone();
                tokio::spawn(async move { hasher.hash(password("tangerine-kettle-orbit")).await })
            })
            .collect();
        let (mut hashed, mut overloaded) = (0, 0);
        for caller in callers {
            match caller.await.expect("task completes") {
                Ok(_) => hashed += 1,
                Err(HashError::Overloaded { retry_after }) => {
                    assert!(!retry_after.is_zero(), "the hint says when to come back");
                    overloaded += 1;
                }
                Err(HashError::Failed(e)) => panic!("unexpected failure: {e:#}"),
            }
        }
        assert!((1..=2).contains(&hashed), "{hashed} callers were served");
        assert_eq!(overloaded, 8 - hashed, "nobody waits in an unbounded queue");
    }
}
