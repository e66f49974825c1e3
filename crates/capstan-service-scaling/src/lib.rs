//! Capstan's ServiceScaling resource: scale an ECS service on CPU, memory and CloudWatch
//! metrics with the Kubernetes HPA v2 semantics.
//!
//! - [`crd`]: the custom resource types and their admission rules.
//! - [`algorithm`]: the pure scaling algorithm (HPA v2, plus schedules and fallback).
//! - [`replay`]: a deterministic simulation of a sales event, for tests and `make bench`.
//! - [`controller`]: the controller (reconcile keeps a registry; [`evaluation`] evaluates
//!   it in batches per connection); [`clients`]: its AWS clients; [`aas`]: the
//!   ApplicationAutoScaling mode's declared AWS objects; [`cleanup`]: the finalizer that
//!   removes them; [`context`]: what those three share.

pub mod aas;
pub mod algorithm;
pub mod cleanup;
pub mod clients;
pub mod context;
pub mod controller;
pub mod crd;
pub mod evaluation;
pub mod reasons;
pub mod replay;
