//! Capstan's pipeline resource.
//!
//! - [`crd`]: the `Pipeline` custom resource (`capstan.dev/v1alpha1`), its status,
//!   condition types and reasons, and the promotion annotation.
//! - [`validation`]: what the CRD's schema and CEL rules cannot check, reported by the
//!   controller as a condition.
//! - [`template`]: `{{ revision }}` and `{{ stages.<name>.results.<key> }}` substitution.
//! - [`scheduler`]: the next action of a run, a pure function of the spec, the status
//!   and the observed Jobs.
//! - [`jobs`]: the Kubernetes Job of a Job stage, and what Capstan observes of it.
//! - [`controller`]: claims that action in status, performs it (a Job), records it.
//!
//! Job stages (Test, Build) run on Kubernetes Jobs. Deploy stages (ECS), smoke tests
//! after them, approvals and rollbacks are not in this build: a Pipeline with a Deploy
//! stage says so (`Ready=Unknown`, `NotImplemented`) and starts nothing.

pub mod controller;
pub mod crd;
pub mod jobs;
pub mod scheduler;
pub mod template;
pub mod validation;

pub use crd::{Pipeline, PipelineSpec, PipelineStatus};
pub use validation::{FieldError, validate};
