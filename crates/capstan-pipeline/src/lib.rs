//! Capstan's pipeline resource.
//!
//! - [`crd`]: the `Pipeline` custom resource (`capstan.dev/v1alpha1`), its status,
//!   condition types and reasons, and the promotion annotation.
//! - [`validation`]: what the CRD's schema and CEL rules cannot check, reported by the
//!   controller as a condition.
//! - [`template`]: `{{ revision }}` substitution.
//!
//! The stage scheduler and the controller that runs Jobs and ECS deployments come in a
//! later step.

pub mod controller;
pub mod crd;
pub mod template;
pub mod validation;

pub use crd::{Pipeline, PipelineSpec, PipelineStatus};
pub use validation::{FieldError, validate};
