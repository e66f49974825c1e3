//! Capstan's secret rotation resource.
//!
//! - [`crd`]: the `SecretRotation` custom resource (`capstan.dev/v1alpha1`), its status,
//!   condition types and reasons, and the rotate-now annotation.
//! - [`validation`]: what the CRD's schema and CEL rules cannot check, reported by the
//!   controller as a condition.
//! - [`generator`]: generates passwords and keys from the spec with a CSPRNG.
//! - [`template`]: the `{{ variable }}` templates of the delivered Secret.
//! - [`controller`]: so far only the connection gate and spec validation, reported as
//!   conditions; the rotation itself (backends, databases, delivery) comes in a later step.

pub mod audit;
pub mod backend;
pub mod context;
pub mod controller;
pub mod crd;
pub mod delivery;
pub mod generator;
pub mod rotation;
pub mod targets;
pub mod template;
pub mod validation;

pub use crd::{SecretRotation, SecretRotationSpec, SecretRotationStatus};
pub use generator::PasswordGenerator;
pub use validation::{FieldError, validate};
