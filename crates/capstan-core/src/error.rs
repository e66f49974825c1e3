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

/// A Kubernetes client error as a person reads it. kube's own text for an API refusal
/// appends a debug dump of the whole `Status` (`ApiError: ... (Status { status:
/// Some(Failure), code: 403, ... })`); this is the API server's message, its reason and
/// its code: `secrets "db" is forbidden: ... (Forbidden, 403)`. Other errors are their
/// text and causes ([`with_causes`]).
#[derive(Debug, Clone, Copy)]
pub struct KubeMessage<'a>(pub &'a kube::Error);

impl std::fmt::Display for KubeMessage<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            kube::Error::Api(s) if s.reason.is_empty() => write!(f, "{} ({})", s.message, s.code),
            kube::Error::Api(s) => write!(f, "{} ({}, {})", s.message, s.reason, s.code),
            other => f.write_str(&with_causes(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{KubeMessage, with_causes};

    #[test]
    fn api_refusals_read_as_the_api_servers_message_without_a_dump() {
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure",
            "message": "secrets \"db\" is forbidden: User \"system:serviceaccount:c:capstan\" cannot get resource \"secrets\"",
            "reason": "Forbidden",
            "code": 403
        }))
        .expect("status");
        let e = kube::Error::Api(Box::new(status));
        let text = KubeMessage(&e).to_string();
        assert_eq!(
            text,
            "secrets \"db\" is forbidden: User \"system:serviceaccount:c:capstan\" cannot get resource \"secrets\" (Forbidden, 403)"
        );
        assert!(
            e.to_string().contains("Status {"),
            "kube's own text has the dump"
        );
    }

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
