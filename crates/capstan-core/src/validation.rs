//! What a controller reports when a spec fails checks the CRD schema and its CEL rules
//! cannot express: one [`FieldError`] per problem, joined into a condition message by
//! [`summarize`].

use std::fmt;

/// One problem with a spec: the field (`spec.stages[2].deploy.image`) and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// JSON path of the offending field, starting at `spec`.
    pub path: String,
    /// What is wrong, for a human. Never a secret value.
    pub message: String,
}

impl FieldError {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for FieldError {}

/// Joins errors into one condition message (`path: message; path: message`).
pub fn summarize(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_names_every_field() {
        let errors = [
            FieldError::new("spec.a", "bad"),
            FieldError::new("spec.b", "worse"),
        ];
        assert_eq!(summarize(&errors), "spec.a: bad; spec.b: worse");
    }
}
