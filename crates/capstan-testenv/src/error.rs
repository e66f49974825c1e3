//! The one error type of the test environment.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong while starting or using the test environment.
///
/// Cloneable on purpose: a service that failed to start is remembered, and every test that
/// asks for it afterwards gets the same error at once instead of waiting for another
/// timeout.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// A binary or tool that the environment needs is not installed.
    #[error("{what} not found ({detail}); install it with `{install}`")]
    Missing {
        /// What is missing, e.g. `kube-apiserver`.
        what: String,
        /// Where it was looked for.
        detail: String,
        /// The command that installs it.
        install: String,
    },
    /// A service failed to start or did not become ready.
    #[error(
        "{service}: {message}\n  log file: {}{}\n  last lines of the log:\n{tail}",
        log.display(),
        keep_hint()
    )]
    Service {
        /// The service, e.g. `kube-apiserver`.
        service: String,
        /// What failed.
        message: String,
        /// The service's log file (inside the environment's temporary directory).
        log: PathBuf,
        /// The last lines of that log.
        tail: String,
    },
    /// A wait for a condition ran out of time.
    #[error("timed out after {timeout:?} waiting for {what}; last seen: {last_seen}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long it was awaited.
        timeout: Duration,
        /// The last state seen (for Kubernetes objects: their status), or why none was seen.
        last_seen: String,
    },
    /// Anything else: an I/O error, a Kubernetes API error, a bad file.
    #[error("{context}: {message}")]
    Other {
        /// What was being done.
        context: String,
        /// The underlying error.
        message: String,
    },
}

fn keep_hint() -> &'static str {
    if crate::Options::keep_from_env() {
        ""
    } else {
        " (removed when the test process ends: set CAPSTAN_TESTENV_KEEP=1 to keep it)"
    }
}

impl Error {
    /// An [`Error::Other`] from a context and any displayable error.
    pub(crate) fn other(context: impl Into<String>, err: impl fmt::Display) -> Self {
        Error::Other {
            context: context.into(),
            message: err.to_string(),
        }
    }

    /// An [`Error::Service`] whose tail is read from the log file now.
    pub(crate) fn service(service: &str, message: impl Into<String>, log: &Path) -> Self {
        Error::Service {
            service: service.to_owned(),
            message: message.into(),
            log: log.to_owned(),
            tail: log_tail(log, 25),
        }
    }

    /// Whether this is a start failure caused by a port that someone else took between
    /// choosing it and the service binding it: worth another try with new ports.
    pub(crate) fn is_port_clash(&self) -> bool {
        match self {
            Error::Service { message, tail, .. } => {
                let text = format!("{message}\n{tail}").to_ascii_lowercase();
                text.contains("address already in use")
                    || text.contains("could not bind")
                    || text.contains("can't start server: bind")
            }
            _ => false,
        }
    }
}

/// The last `lines` lines of a log file, indented, or a note that it could not be read.
pub(crate) fn log_tail(log: &Path, lines: usize) -> String {
    match std::fs::read(log) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            let mut out = String::new();
            for line in &all[start..] {
                // Very long lines (JSON dumps) would drown the message.
                let line: String = line.chars().take(400).collect();
                out.push_str("    | ");
                out.push_str(&line);
                out.push('\n');
            }
            if out.is_empty() {
                "    (empty)\n".to_owned()
            } else {
                out
            }
        }
        Err(e) => format!("    (could not read it: {e})\n"),
    }
}
