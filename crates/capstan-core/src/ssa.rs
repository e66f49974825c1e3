//! Server-side apply helpers, and the one status write that is not an apply.
//!
//! Every write Capstan makes is a server-side apply with one constant field manager per
//! use site (so ownership of each field is visible in `managedFields`), forcing
//! conflicts: a controller is the authority over the fields it declares. Status is
//! written from a typed struct, never from hand-built JSON. The exception is a claim
//! ([`replace_status_conditioned`]): a replace conditioned on the resourceVersion read,
//! which fails (409) when anyone wrote since, so two Capstans never both claim a step.

use std::fmt::Debug;

use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::conditions::{self, Desired, ObjectStatus};

/// Applies `status` as the object's status subresource, owned by `field_manager`.
pub async fn apply_status<K, S>(
    api: &Api<K>,
    name: &str,
    field_manager: &str,
    status: &S,
) -> Result<K, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    S: Serialize,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(field_manager).force(),
        &Patch::Apply(&patch),
    )
    .await
}

/// Applies a whole object (its name and namespace taken from `obj`), owned by
/// `field_manager`.
pub async fn apply<K>(api: &Api<K>, obj: &K, field_manager: &str) -> Result<K, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    api.patch(
        &obj.name_any(),
        &PatchParams::apply(field_manager).force(),
        &Patch::Apply(obj),
    )
    .await
}

/// Computes a new status from the current one with `update`, stamps the generation
/// and the given conditions, and applies it only when something a reader would see
/// changed (a status that changes on every pass makes a controller spin). Returns
/// whether it wrote.
pub async fn update_status<K, S>(
    api: &Api<K>,
    obj: &K,
    current: Option<&S>,
    field_manager: &str,
    now: chrono::DateTime<chrono::Utc>,
    desired: Vec<Desired<'_>>,
    update: impl FnOnce(&mut S),
) -> Result<bool, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    S: ObjectStatus,
{
    let before = current.cloned().unwrap_or_default();
    let mut status = before.clone();
    let generation = obj.meta().generation;
    status.set_observed_generation(generation);
    for d in desired {
        conditions::set(status.conditions_mut(), d, generation, now);
    }
    update(&mut status);
    if status == before {
        return Ok(false);
    }
    apply_status(api, &obj.name_any(), field_manager, &status).await?;
    Ok(true)
}

/// Replaces the status subresource with `obj`'s status, conditioned on `obj`'s
/// resourceVersion: HTTP 409 when the object changed since it was read. Returns the
/// object as written (with its new resourceVersion).
pub async fn replace_status_conditioned<K>(
    api: &Api<K>,
    mut obj: K,
    field_manager: &str,
) -> Result<K, kube::Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + Debug,
{
    obj.meta_mut().managed_fields = None;
    let params = PostParams {
        field_manager: Some(field_manager.to_owned()),
        ..PostParams::default()
    };
    api.replace_status(&obj.name_any(), &params, &obj).await
}
