//! Capstan's pipeline resource.
//!
//! - [`approval`]: the `Approval` custom resource and when one is honoured.
//! - [`crd`]: the `Pipeline` custom resource (`capstan.dev/v1alpha1`), its status,
//!   condition types and reasons.
//! - [`validation`]: what the CRD's schema and CEL rules cannot check, reported by the
//!   controller as a condition.
//! - [`template`]: `{{ revision }}` and `{{ stages.<name>.results.<key> }}` substitution.
//! - [`scheduler`]: the next action of a run, a pure function of the spec, the status,
//!   the observed Jobs and the followed ECS deployments.
//! - [`jobs`]: the Kubernetes Job of a Job stage, and what Capstan observes of it.
//! - [`deploy`]: the ECS and ECR side of Deploy stages and rollbacks.
//! - [`http_check`]: SmokeTest HTTP checks and their allow-list.
//! - [`controller`]: claims that action in status, performs it, records it.
//!
//! Job stages (Test, Build, SmokeTest) run on Kubernetes Jobs; Deploy stages deploy to
//! ECS by digest and are rolled back when the run fails; Approval stages wait for a
//! person's verified Approval; SmokeTest stages may run HTTP checks ([`http_check`]) to
//! allow-listed URLs only.

pub mod approval;
pub mod controller;
pub mod crd;
pub mod deploy;
pub mod http_check;
pub mod jobs;
pub mod scheduler;
pub mod template;
pub mod validation;

pub use crd::{Pipeline, PipelineSpec, PipelineStatus};
pub use validation::{FieldError, validate};
