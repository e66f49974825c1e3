//! Shared mechanics of Capstan's controllers.
//!
//! Nothing in here knows a particular resource: conditions and status helpers
//! ([`conditions`]), server-side apply ([`ssa`]), Events ([`events`]), metrics
//! ([`metrics`]), error categories ([`error`]), schedules ([`schedule`]), the clock
//! domain logic takes ([`clock`]), the cluster-scoped connection kind that decides
//! who may reach which outside system ([`connection`]) and what each namespace may
//! touch there ([`scope`]), the redacting wrapper for secret values ([`redact`]), and
//! the request budgets shared by every controller ([`budget`]).

pub mod budget;
pub mod clock;
pub mod conditions;
pub mod connection;
pub mod error;
pub mod events;
pub mod gate;
pub mod metrics;
pub mod redact;
pub mod runtime;
pub mod schedule;
pub mod scope;
pub mod secret_ref;
pub mod ssa;
pub mod validation;

/// The API group of every Capstan resource.
pub const API_GROUP: &str = "capstan.dev";
/// The API version of every Capstan resource.
pub const API_VERSION: &str = "v1alpha1";
