//! Capstan's secret rotation resource.
//!
//! - [`crd`]: the `SecretRotation` custom resource (`capstan.dev/v1alpha1`), its status,
//!   condition types, and the rotate-now annotation.
//! - [`reasons`]: every condition reason, step failure reason and audit outcome, with
//!   their exact strings.
//! - [`validation`]: what the CRD's schema and CEL rules cannot check, reported by the
//!   controller as a condition.
//! - [`generator`]: generates passwords and keys from the spec with a CSPRNG.
//! - [`template`]: the `{{ variable }}` templates of the delivered Secret.
//! - [`rotation`]: the pure rotation state machine (what is due, which step is next,
//!   how a crash resumes), with `now` as an input.
//! - [`backend`]: where credentials are stored (Kubernetes Secret, Vault KV, AWS Secrets
//!   Manager); [`targets`]: where they are set (PostgreSQL, MariaDB/MySQL, none).
//! - [`delivery`]: how a new credential reaches its consumers (Secret, rollouts, ECS).
//! - [`context`]: what every reconcile shares, the metrics, and the clients built from a
//!   spec.
//! - [`controller`]: the reconcile loop: connection gate, validation, then the whole
//!   rotation (claim, one side effect per step, record) and its delivery.
//! - [`audit`]: the audit log line of every step and delivery.

pub mod audit;
pub mod backend;
pub mod context;
pub mod controller;
pub mod crd;
pub mod delivery;
pub mod generator;
pub mod metrics;
pub mod reasons;
pub mod rotation;
pub mod targets;
pub mod template;
pub mod validation;

pub use crd::{SecretRotation, SecretRotationSpec, SecretRotationStatus};
pub use generator::PasswordGenerator;
pub use validation::{FieldError, validate};
