//! A wrapper for secret values whose `Debug` and `Display` print `[redacted]`.
//!
//! Every credential Capstan handles (generated passwords, API keys, admin passwords
//! read from Secrets, Vault tokens) travels in a [`SecretValue`], so that a stray
//! `{:?}` in a log line, an error message, an Event or a panic cannot print it. The
//! plaintext is reachable only through [`SecretValue::expose`], whose call sites are
//! few and easy to audit (`grep expose`).

use std::fmt;

/// What `Debug` and `Display` print instead of a secret value.
pub const REDACTED: &str = "[redacted]";

/// A secret string. Not `Serialize`: writing one anywhere is a deliberate `expose()`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    /// Wraps a plaintext value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The plaintext. Call only where the value must leave the process (a backend write,
    /// a database login, a Secret's data), never to format a message.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Length in bytes, safe to report.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the value is empty, safe to report.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl From<String> for SecretValue {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl Drop for SecretValue {
    /// Overwrites the bytes before the allocation is freed, so that a later heap dump
    /// or core file is less likely to hold old credentials.
    fn drop(&mut self) {
        // Safe overwrite: replace every byte with 0 through a `String` API that keeps
        // UTF-8 validity (NUL is valid UTF-8).
        let len = self.0.len();
        self.0.clear();
        self.0.extend(std::iter::repeat_n('\0', len));
        std::hint::black_box(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_print_the_value() {
        let v = SecretValue::new("hunter2-canary");
        assert_eq!(format!("{v:?}"), REDACTED);
        assert_eq!(format!("{v}"), REDACTED);
        assert_eq!(format!("{:?}", Some(&v)), format!("Some({REDACTED})"));
        assert_eq!(v.expose(), "hunter2-canary");
    }

    #[test]
    fn a_struct_holding_a_secret_debugs_redacted() {
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Login {
            user: String,
            password: SecretValue,
        }
        let l = Login {
            user: "app".into(),
            password: SecretValue::new("canary-123"),
        };
        let printed = format!("{l:?}");
        assert!(printed.contains("app"));
        assert!(!printed.contains("canary-123"), "{printed}");
    }
}
