//! The built binaries, run as a user would run them, with their output captured.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

/// Path of a workspace binary in the same target directory as the running test or benchmark
/// (`target/<profile>/<name>`); `scripts/test` builds them with `cargo build --bins` first.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the process knows its own path");
    // Tests run from target/<profile>/deps/, binaries from target/<profile>/.
    let mut dir = exe.parent().expect("an executable lives in a directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("deps/ lives in the profile directory");
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --bins` first (scripts/test does)",
        path.display()
    );
    path
}

/// Runs a binary to completion and returns its output.
pub fn run(name: &str, args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(binary(name))
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"))
}

/// Runs a binary with `args` and no environment but `envs` (plus `RUST_LOG=info`), and waits
/// for it to exit by itself; `None` if it was still running after `timeout` (it is killed then).
pub async fn run_until_exit(
    name: &str,
    args: &[&str],
    envs: &[(&str, &str)],
    timeout: Duration,
) -> Option<Output> {
    let mut command = tokio::process::Command::new(binary(name));
    command
        .args(args)
        // Nothing from the test runner's environment may configure it.
        .env_clear()
        .env("RUST_LOG", "info")
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    tokio::time::timeout(timeout, command.output())
        .await
        .ok()
        .map(|output| output.unwrap_or_else(|e| panic!("cannot run {name}: {e}")))
}

/// A running binary whose standard output and error are collected line by line. Killed when
/// dropped.
#[derive(Debug)]
pub struct Process {
    child: Child,
    output: Arc<Mutex<String>>,
}

impl Process {
    /// Starts `name` with `args` and extra environment variables.
    pub fn spawn(name: &str, args: &[&str], envs: &[(&str, &str)]) -> Self {
        Self::spawn_program(binary(name), args, envs)
    }

    /// Starts `name` with `args` and no environment but `envs`: nothing is inherited from the
    /// test runner (whose `DATABASE_URL`, say, would configure the binary too).
    pub fn spawn_only(name: &str, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut command = Command::new(binary(name));
        command.env_clear().args(args).envs(envs.iter().copied());
        Self::spawn_command(command, name)
    }

    /// Starts any program (a workspace binary's path, or a system one such as `prometheus`).
    pub fn spawn_program(
        program: impl AsRef<std::ffi::OsStr>,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Self {
        let name = program.as_ref().to_string_lossy().into_owned();
        let mut command = Command::new(program);
        command.args(args).envs(envs.iter().copied());
        Self::spawn_command(command, &name)
    }

    fn spawn_command(mut command: Command, name: &str) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let output = Arc::new(Mutex::new(String::new()));
        let streams: [Box<dyn std::io::Read + Send>; 2] = [
            Box::new(child.stdout.take().expect("stdout is piped")),
            Box::new(child.stderr.take().expect("stderr is piped")),
        ];
        for stream in streams {
            let output = Arc::clone(&output);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut output = output.lock().unwrap_or_else(PoisonError::into_inner);
                    output.push_str(&line);
                    output.push('\n');
                }
            });
        }
        Self { child, output }
    }

    /// The process id, e.g. to read `/proc/<id>/environ`.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process printed so far.
    pub fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until a printed line contains `needle` and returns that line; panics after
    /// `timeout` or if the process exits first.
    pub async fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> String {
        let output = Arc::clone(&self.output);
        let child = &mut self.child;
        crate::wait::until(&format!("a line containing {needle:?}"), timeout, || {
            let found = output
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .lines()
                .find(|line| line.contains(needle))
                .map(str::to_owned);
            if found.is_none()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "the process exited ({status}) before printing {needle:?}:\n{}",
                    output.lock().unwrap_or_else(PoisonError::into_inner)
                );
            }
            std::future::ready(found)
        })
        .await
    }

    /// Sends SIGTERM and waits (without blocking the runtime) up to `timeout` for the exit;
    /// returns whether the process exited successfully.
    pub async fn terminate(&mut self, timeout: Duration) -> bool {
        self.send_sigterm();
        self.wait_for_exit(timeout).await.success()
    }

    /// Sends SIGTERM and returns at once.
    pub fn send_sigterm(&self) {
        self.signal("TERM");
    }

    /// Waits (without blocking the runtime) up to `timeout` for the process to exit on its own
    /// and returns how it ended; panics if it is still running then.
    pub async fn wait_for_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let child = &mut self.child;
        crate::wait::until("the process to exit", timeout, || {
            std::future::ready(child.try_wait().ok().flatten())
        })
        .await
    }
}

impl Process {
    /// Sends `signal` (a name `kill` knows, such as `HUP`) without waiting for anything.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args([format!("-{signal}").as_str(), &pid])
            .status();
        assert!(
            sent.is_ok_and(|s| s.success()),
            "cannot send {signal} to {pid}"
        );
    }

    /// Kills the process with SIGKILL, as a crash would, and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Everything printed so far, counting the lines that contain `needle`.
    pub fn count_lines(&self, needle: &str) -> usize {
        self.output().lines().filter(|l| l.contains(needle)).count()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of `key` in a log line: `key=value` (text format, up to the next white space) or
/// `"key":"value"` (JSON lines).
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    if let Some(start) = line.find(&format!("\"{key}\":\"")) {
        let value = &line[start + key.len() + 4..];
        return value.split('"').next();
    }
    let start = line.find(&format!("{key}="))? + key.len() + 1;
    line[start..].split_whitespace().next()
}

#[cfg(test)]
mod tests {
    use super::field;

    #[test]
    fn fields_are_read_from_text_and_json_log_lines() {
        let text = "INFO identity-server listening grpc.addr=127.0.0.1:5 other=1";
        let json = r#"{"message":"identity-server listening","grpc.addr":"127.0.0.1:5"}"#;
        assert_eq!(field(text, "grpc.addr"), Some("127.0.0.1:5"));
        assert_eq!(field(json, "grpc.addr"), Some("127.0.0.1:5"));
        assert_eq!(field(json, "missing"), None);
    }
}
