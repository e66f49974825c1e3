//! Capstan's ServiceScaling resource: scale an ECS service on CPU, memory and CloudWatch
//! metrics with the Kubernetes HPA v2 semantics.
//!
//! - [`crd`]: the custom resource types and their admission rules.
//! - [`algorithm`]: the pure scaling algorithm (HPA v2, plus schedules and fallback).
//! - [`replay`]: a deterministic simulation of a sales event, for tests and `make bench`.

pub mod algorithm;
pub mod controller;
pub mod crd;
pub mod replay;
