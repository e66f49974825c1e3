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
