//! Error categories: the stable, low-cardinality label every controller error carries
//! into metrics (`capstan_*_reconcile_failures_total{category=...}`).
//!
//! A category is a fixed string chosen by the code, never `format!("{:?}")` of an error
//! and never an object name, so a metric's cardinality stays bounded and no message
//! (which might quote user input) reaches a label.

/// An error that knows its metric category.
pub trait Categorized {
    /// A short snake_case identifier, stable across releases (e.g. `kube_api`,
    /// `connection_not_allowed`, `backend_unreachable`).
    fn category(&self) -> &'static str;
}

impl Categorized for kube::Error {
    fn category(&self) -> &'static str {
        match self {
            kube::Error::Api(s) if s.code == 409 => "kube_conflict",
            kube::Error::Api(s) if s.code == 404 => "kube_not_found",
            kube::Error::Api(_) => "kube_api",
            _ => "kube_transport",
        }
    }
}

/// An error's text followed by its causes (`outer: cause: root cause`), each text once.
/// HTTP clients print only their outer layer (reqwest: "error sending request for url
/// (...)"); what a reader needs ("Connection refused", "invalid peer certificate:
/// UnknownIssuer") is down the source chain.
pub fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::with_causes;

    #[derive(Debug, thiserror::Error)]
    #[error("error sending request")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("client error (Connect): {0}")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn causes_follow_the_outer_text_once_each() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let e = Outer(Middle(io));
        // The middle layer already quotes the root cause: it is not repeated.
        assert_eq!(
            with_causes(&e),
            "error sending request: client error (Connect): Connection refused"
        );
    }
}
