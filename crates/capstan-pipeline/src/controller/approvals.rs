//! Approval stages: deciding the Approvals that name a Pipeline.

use super::*;

/// Decides the Approvals that name this Pipeline and have no phase yet: the one that
/// decides the stage waiting (verified by the admission policy, created after it, for
/// this run and stage, by a listed approver) is recorded in the stage's status (the
/// claim), then marked `Honoured`, with an Event and an audit line; the others are
/// marked `Void` with the reason. While the policy is missing nothing is honoured and
/// `approval_problem` says why (AwaitingApproval, `ApprovalPolicyMissing`).
pub(super) async fn process_approvals(ctx: &Ctx, w: &mut Writer) -> Result<(), Error> {
    let spec = w.obj.spec.clone();
    let has_approvals = spec
        .stages
        .iter()
        .any(|s| matches!(s.action(), Some(StageAction::Approval(_))));
    if !has_approvals {
        return Ok(());
    }
    let ns = w.obj.namespace().unwrap_or_default();
    let name = w.obj.name_any();
    let api: Api<Approval> = Api::namespaced(ctx.rt.client.clone(), &ns);
    let mut pending: Vec<Approval> = api
        .list(&kube::api::ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|a| a.spec.pipeline == name && a.status.as_ref().and_then(|s| s.phase).is_none())
        .collect();
    // The policy is read (two GETs) only when an Approval waits for a verdict or the
    // run has an Approval stage still ahead or waiting, not on every deploy poll.
    let st = w.status();
    let approval_ahead = scheduler::run_active(&st)
        && st.stages.iter().any(|s| {
            matches!(s.phase, StagePhase::Pending | StagePhase::Running)
                && spec.stages.iter().any(|x| {
                    x.name == s.name && matches!(x.action(), Some(StageAction::Approval(_)))
                })
        });
    if pending.is_empty() && !approval_ahead {
        return Ok(());
    }
    let since =
        approval::policy_since(&ctx.rt.client, ctx.settings.approval_policy.as_deref()).await?;
    w.approval_problem = since.clone().err();
    if pending.is_empty() {
        return Ok(());
    }
    let created = |a: &Approval| {
        a.metadata
            .creation_timestamp
            .as_ref()
            .and_then(|t| DateTime::from_timestamp(t.0.as_second(), 0))
    };
    pending.sort_by_key(|a| (created(a), a.name_any()));
    let mut st = st;
    let waiting = scheduler::waiting_for_approval(&spec, &st).map(|(i, n)| (i, n.to_owned()));
    let rules = waiting.as_ref().and_then(|(_, n)| {
        spec.stages
            .iter()
            .find(|s| &s.name == n)
            .and_then(|s| match s.action() {
                Some(StageAction::Approval(a)) => Some(a.clone()),
                _ => None,
            })
    });
    let run = st.run_id.clone().unwrap_or_default();
    let now = ctx.rt.clock.now();
    let mut marks: Vec<(String, ApprovalPhase, String)> = Vec::new();
    let mut honoured: Option<Approval> = None;
    for a in &pending {
        let aname = a.name_any();
        if let Some(s) = st
            .stages
            .iter()
            .find(|s| s.approval.as_ref().is_some_and(|r| r.name == aname))
        {
            // Recorded before a crash; only the mark is missing.
            marks.push((
                aname,
                ApprovalPhase::Honoured,
                format!("recorded by run {run}, stage {}", s.name),
            ));
            continue;
        }
        let target = match (&waiting, &rules) {
            (Some((_, stage)), Some(r)) => Some((run.as_str(), stage.as_str(), r)),
            _ => None,
        };
        match approval::judge(
            a,
            created(a),
            target,
            since.clone().ok(),
            honoured.is_some(),
        ) {
            Verdict::Hold => {}
            Verdict::Void(why) => marks.push((aname, ApprovalPhase::Void, why)),
            Verdict::Honour => {
                if let Some((i, stage)) = &waiting
                    && let Some(s) = st.stages.get_mut(*i)
                {
                    s.approval = Some(ApprovalRecord {
                        name: aname.clone(),
                        decision: a.spec.decision,
                        username: a.spec.approver.username.clone(),
                        groups: a.spec.approver.groups.clone(),
                        at: now,
                    });
                    marks.push((
                        aname,
                        ApprovalPhase::Honoured,
                        format!("run {run}, stage {stage}: {:?}", a.spec.decision),
                    ));
                    honoured = Some(a.clone());
                }
            }
        }
    }
    if let (Some(a), Some((_, stage))) = (&honoured, &waiting) {
        // The claim first: a crash after it finds the record and only marks.
        w.set_conditions(&mut st, now);
        w.write(&st).await?;
        let approve = a.spec.decision == crate::crd::Decision::Approve;
        tracing::info!(
            target: AUDIT_TARGET,
            kind = "Pipeline",
            object = %key_of(&w.obj),
            run = %run,
            stage = %stage,
            approval = %a.name_any(),
            decision = if approve { "Approve" } else { "Reject" },
            approver = %a.spec.approver.username,
            groups = %a.spec.approver.groups.join(","),
            instance = %ctx.rt.instance,
            "approval"
        );
        let note = format!(
            "run {run}, stage {stage}: {} by {} (groups: {}; Approval {})",
            if approve { "approved" } else { "rejected" },
            a.spec.approver.username,
            a.spec.approver.groups.join(", "),
            a.name_any()
        );
        let (kind, reason) = if approve {
            (EventType::Normal, events::APPROVED)
        } else {
            (EventType::Warning, events::REJECTED)
        };
        ctx.events
            .publish(&w.obj, kind, reason, "Approval", note)
            .await;
    }
    for (n, phase, message) in marks {
        match approval::mark(&api, &n, phase, &cut(&message)).await {
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            other => other?,
        }
    }
    Ok(())
}
