//! Shared mechanics of Capstan's controllers. Nothing in here knows a particular
//! resource.
//!
//! - [`budget`]: request budgets per AWS account, region and call family, shared by
//!   every controller, with fair per-namespace queues.
//! - [`clock`]: the clock domain logic takes (`now` is an input, tests move it).
//! - [`conditions`]: status conditions and the status helpers every resource uses.
//! - [`connection`]: the cluster-scoped `ClusterConnection` kind that decides who may
//!   reach which outside system, and its resolution.
//! - [`connection_index`]: which objects name which connections, for controllers that
//!   cache only metadata.
//! - [`error`]: error categories (metrics labels, retry decisions) and cause chains.
//! - [`events`]: Kubernetes Events, built without a client and published without a
//!   cache; Warnings when `Ready` turns false.
//! - [`failpoints`]: the crash-injection points of the crash tests (inert, and compiled
//!   out, unless the `failpoints` feature is on).
//! - [`gate`]: step one of every reconcile: resolve the connection an object names and
//!   refuse a namespace or resource it does not allow; the watches that re-run objects
//!   when a connection or namespace changes.
//! - [`metrics`]: per-controller Prometheus metrics.
//! - [`namespaces`]: which namespaces may use a connection (by name or label).
//! - [`redact`]: the redacting wrapper for secret values.
//! - [`runtime`]: what every controller gets (client, clock, AWS settings, identity) and
//!   the controller loop with its metadata-only cache.
//! - [`schedule`]: durations, tenant duration floors and cron schedules.
//! - `schema_testing` (feature `schema-testing`, tests only): the CRD schema tests'
//!   helpers.
//! - [`scope`]: what each allowed namespace may touch through a connection.
//! - [`secret_ref`]: one key of a Secret in Capstan's own namespace (the credentials a
//!   connection names).
//! - [`ssa`]: server-side apply and status writes with one field manager per controller.
//! - [`validation`]: field errors with paths, for what the CRD schema cannot refuse.
//!
//! Layers: `clock`, `error`, `failpoints`, `redact`, `budget`, `schedule` and `validation` import no
//! other module here; no two modules import each other.

pub mod budget;
pub mod clock;
pub mod conditions;
pub mod connection;
pub mod connection_index;
pub mod error;
pub mod events;
pub mod failpoints;
pub mod gate;
pub mod metrics;
pub mod namespaces;
pub mod object_metrics;
pub mod redact;
pub mod runtime;
pub mod schedule;
#[cfg(feature = "schema-testing")]
pub mod schema_testing;
pub mod scope;
pub mod secret_ref;
pub mod ssa;
pub mod validation;

/// The API group of every Capstan resource.
pub const API_GROUP: &str = "capstan.dev";
/// The API version of every Capstan resource.
pub const API_VERSION: &str = "v1alpha1";
