//! The status writer: every status write is a replace conditioned on the
//! resourceVersion last read or written ([`Writer`]), so a stale Capstan gets 409 and
//! stops ([`Error::ClaimLost`]); each write's result goes to the controller's
//! [`Fresh`], so the next reconcile never starts from a snapshot older than this
//! process's own last write (the watch echoes of intermediate writes arrive later);
//! and the fields derived on every write (kinds, next rotation time, conditions, the
//! overdue and stuck gauges: [`Pass::finish_status`]).

use std::sync::Arc;

use capstan_core::conditions;
use capstan_core::runtime::Fresh;
use capstan_core::ssa::replace_status_conditioned;
use chrono::{DateTime, Utc};
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};

use super::conditions::set_conditions;
use super::pass::{Error, Pass, key_of};
use crate::context::FIELD_MANAGER;
use crate::crd::{SecretRotation, SecretRotationStatus, condition_types as ct};
use crate::rotation::{self, Plan};

/// Writes the status (and the one annotation the controller keeps) of one object,
/// conditioned on the resourceVersion last read or written.
pub(super) struct Writer {
    pub(super) api: Api<SecretRotation>,
    pub(super) obj: SecretRotation,
    /// Where the next reconcile takes its object from: learns each write.
    pub(super) fresh: Arc<Fresh<SecretRotation>>,
}

impl Writer {
    /// Replaces the status, failing with [`Error::ClaimLost`] if the object changed since
    /// it was read (HTTP 409).
    pub(super) async fn write(&mut self, status: &SecretRotationStatus) -> Result<(), Error> {
        let mut o = self.obj.clone();
        o.status = Some(status.clone());
        match replace_status_conditioned(&self.api, o, FIELD_MANAGER).await {
            Ok(new) => {
                self.fresh.wrote(new.clone());
                self.obj = new;
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Err(Error::ClaimLost(key_of(&self.obj))),
            Err(e) => Err(e.into()),
        }
    }

    /// Sets an annotation on the object, conditioned on the resourceVersion like a status
    /// write (HTTP 409 is [`Error::ClaimLost`]). A merge patch, not a replace: the cached
    /// object lacks what the cache drops (e.g. kubectl's last-applied annotation), which
    /// a replace would delete.
    pub(super) async fn annotate(&mut self, key: &str, value: String) -> Result<(), Error> {
        let patch = serde_json::json!({
            "metadata": {
                "resourceVersion": self.obj.resource_version(),
                "annotations": { key: value },
            }
        });
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        match self
            .api
            .patch(&self.obj.name_any(), &params, &Patch::Merge(&patch))
            .await
        {
            Ok(new) => {
                self.fresh.wrote(new.clone());
                self.obj = new;
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Err(Error::ClaimLost(key_of(&self.obj))),
            Err(e) => Err(e.into()),
        }
    }

    /// The status last read or written.
    pub(super) fn status(&self) -> SecretRotationStatus {
        self.obj.status.clone().unwrap_or_default()
    }
}

impl Pass<'_> {
    /// The status with kinds, next time and conditions set.
    pub(super) fn finish_status(
        &self,
        status: &mut SecretRotationStatus,
        idle: &'static str,
        ready_override: Option<(&'static str, String)>,
    ) {
        status.backend = Some(self.obj.spec.backend.kind());
        status.target = Some(self.obj.spec.target.kind());
        let now = self.ctx.rt.clock.now();
        status.next_rotation_time =
            match rotation::plan(&self.policy, status, None, self.created, now) {
                Plan::Wait { until, .. } => until,
                Plan::Start { .. } => Some(now),
                Plan::Continue => None,
            }
            .map(whole_second_after);
        if self.policy.suspend {
            status.next_rotation_time = None;
        }
        set_conditions(
            status,
            self.obj.meta().generation,
            self.view(idle, ready_override),
        );
        let late = conditions::is_true(&status.conditions, ct::OVERDUE);
        self.ctx.set_overdue(&self.key, late);
        let stuck = conditions::find(&status.conditions, ct::ROTATING)
            .is_some_and(|c| c.reason == crate::crd::reasons::ROTATION_STUCK);
        self.ctx.set_stuck(&self.key, stuck);
    }
}

/// `t` rounded up to a whole second: `status.nextRotationTime` reads as a plain date
/// in `kubectl get` (not nanoseconds), and is never before the time it stands for.
fn whole_second_after(t: DateTime<Utc>) -> DateTime<Utc> {
    let up = i64::from(t.timestamp_subsec_nanos() > 0);
    DateTime::from_timestamp(t.timestamp().saturating_add(up), 0).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `status.nextRotationTime` holds whole seconds (`kubectl get` prints it as
    /// `2026-12-03T09:40:13Z`, not with nanoseconds), never earlier than the due time,
    /// and stable: the same due time always gives the same value (no status write per
    /// pass).
    #[test]
    fn next_rotation_time_is_rounded_up_to_a_whole_second() {
        let due = DateTime::parse_from_rfc3339("2026-12-03T09:40:12.123456789Z")
            .expect("time")
            .with_timezone(&Utc);
        let shown = whole_second_after(due);
        assert!(shown >= due);
        assert_eq!(
            serde_json::to_string(&shown).expect("json"),
            "\"2026-12-03T09:40:13Z\""
        );
        assert_eq!(whole_second_after(shown), shown);
        assert_eq!(whole_second_after(due), shown);
    }
}
