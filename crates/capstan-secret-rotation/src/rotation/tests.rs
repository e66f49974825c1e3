//! Table and property tests of the rotation state machine.

#![allow(clippy::unwrap_used)]

use chrono::TimeZone;
use proptest::prelude::*;

use super::*;
use crate::crd::{RotationFailure, RotationOutcome, RotationSummary, SecretRotationSpec};

/// 2024-03-04 10:00:00 UTC plus `s` seconds: the injected clock of these tests.
fn t(s: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 3, 4, 10, 0, 0).unwrap() + Duration::seconds(s)
}

fn policy(interval_s: i64) -> Policy {
    Policy {
        cadence: Cadence::Interval(Duration::seconds(interval_s)),
        window: None,
        suspend: false,
        max_attempts: 3,
        users: Users::None,
    }
}

fn rotated_at(s: i64) -> SecretRotationStatus {
    SecretRotationStatus {
        last_rotation_time: Some(t(s)),
        rotation_count: 1,
        ..Default::default()
    }
}

fn failed_at(s: i64) -> SecretRotationStatus {
    let mut st = SecretRotationStatus::default();
    st.record_rotation(RotationSummary {
        id: "1".into(),
        trigger: RotationTrigger::Initial,
        started: t(s - 5),
        finished: t(s),
        outcome: RotationOutcome::Failed,
        attempts: 3,
        version: None,
        username: None,
        failure_reason: Some("TargetRejected".into()),
    });
    st
}

fn in_progress(step: RotationStep) -> RotationInProgress {
    let mut r = start(RotationTrigger::Schedule, None, None, t(0));
    r.step = step;
    r
}

fn window(start: &str, end: &str) -> Window {
    Window {
        start: parse_hh_mm(start).unwrap(),
        end: parse_hh_mm(end).unwrap(),
        tz: Tz::UTC,
    }
}

fn start_of(trigger: RotationTrigger) -> Plan {
    Plan::Start {
        trigger,
        token: None,
    }
}

/// When a rotation starts, for each combination of history, schedule, window, suspend
/// and rotate-now token.
#[test]
fn plan_table() {
    let mut busy = rotated_at(0);
    busy.rotation = Some(in_progress(RotationStep::Deliver));
    let mut acted = rotated_at(0);
    acted.observed_rotate_now_token = Some("tok-1".into());
    let suspended = Policy {
        suspend: true,
        ..policy(60)
    };
    let closed = Policy {
        window: Some(window("22:00", "04:00")),
        ..policy(60)
    };
    let open = Policy {
        window: Some(window("09:30", "11:00")),
        ..policy(60)
    };
    #[allow(clippy::type_complexity)]
    let cases: Vec<(&str, Policy, SecretRotationStatus, Option<&str>, i64, Plan)> = vec![
        (
            "new object rotates at creation",
            policy(60),
            SecretRotationStatus::default(),
            None,
            0,
            start_of(RotationTrigger::Initial),
        ),
        (
            "not yet due waits for the due time",
            policy(60),
            rotated_at(0),
            None,
            59,
            Plan::Wait {
                reason: reasons::IDLE,
                until: Some(t(60)),
            },
        ),
        (
            "due at exactly last + interval",
            policy(60),
            rotated_at(0),
            None,
            60,
            start_of(RotationTrigger::Schedule),
        ),
        (
            "a given-up rotation anchors the schedule too",
            policy(60),
            failed_at(0),
            None,
            30,
            Plan::Wait {
                reason: reasons::IDLE,
                until: Some(t(60)),
            },
        ),
        (
            "a rotation in progress continues, even past its due time",
            policy(60),
            busy.clone(),
            None,
            1000,
            Plan::Continue,
        ),
        (
            "a rotation in progress continues while suspended",
            suspended.clone(),
            busy.clone(),
            Some("new"),
            1000,
            Plan::Continue,
        ),
        (
            "suspended: nothing starts, not even rotate-now",
            suspended.clone(),
            rotated_at(0),
            Some("tok-2"),
            1000,
            Plan::Wait {
                reason: reasons::SUSPENDED,
                until: None,
            },
        ),
        (
            "a new rotate-now token starts at once",
            policy(3600),
            acted.clone(),
            Some("tok-2"),
            1,
            Plan::Start {
                trigger: RotationTrigger::RotateNow,
                token: Some("tok-2".into()),
            },
        ),
        (
            "a token already acted on does nothing",
            policy(3600),
            acted.clone(),
            Some("tok-1"),
            1,
            Plan::Wait {
                reason: reasons::IDLE,
                until: Some(t(3600)),
            },
        ),
        (
            "an empty token does nothing",
            policy(3600),
            acted.clone(),
            Some("  "),
            1,
            Plan::Wait {
                reason: reasons::IDLE,
                until: Some(t(3600)),
            },
        ),
        (
            "rotate-now ignores a closed window",
            closed.clone(),
            acted.clone(),
            Some("tok-3"),
            1,
            Plan::Start {
                trigger: RotationTrigger::RotateNow,
                token: Some("tok-3".into()),
            },
        ),
        (
            "due outside the window waits for the opening",
            closed.clone(),
            rotated_at(0),
            None,
            120,
            Plan::Wait {
                reason: reasons::OUTSIDE_WINDOW,
                until: Some(Utc.with_ymd_and_hms(2024, 3, 4, 22, 0, 0).unwrap()),
            },
        ),
        (
            "the first rotation waits for the window too",
            closed.clone(),
            SecretRotationStatus::default(),
            None,
            0,
            Plan::Wait {
                reason: reasons::OUTSIDE_WINDOW,
                until: Some(Utc.with_ymd_and_hms(2024, 3, 4, 22, 0, 0).unwrap()),
            },
        ),
        (
            "due inside the window starts",
            open.clone(),
            rotated_at(0),
            None,
            120,
            start_of(RotationTrigger::Schedule),
        ),
        (
            "not yet due, with a window: wait until due and open",
            closed.clone(),
            rotated_at(0),
            None,
            10,
            Plan::Wait {
                reason: reasons::IDLE,
                until: Some(Utc.with_ymd_and_hms(2024, 3, 4, 22, 0, 0).unwrap()),
            },
        ),
    ];
    for (name, p, st, token, now, want) in cases {
        assert_eq!(plan(&p, &st, token, t(-100), t(now)), want, "{name}");
    }
}

#[test]
fn cron_schedule_is_anchored_at_the_last_finish() {
    let p = Policy {
        cadence: Cadence::Cron(Box::new(CronSchedule::parse("0 3 * * 1", None).unwrap())),
        ..policy(1)
    };
    // Finished Monday 2024-03-04 10:00: next Monday 03:00.
    let want = Utc.with_ymd_and_hms(2024, 3, 11, 3, 0, 0).unwrap();
    assert_eq!(next_due(&p, &rotated_at(0), t(-100)), want);
    assert_eq!(
        plan(&p, &rotated_at(0), None, t(-100), t(3600)),
        Plan::Wait {
            reason: reasons::IDLE,
            until: Some(want)
        }
    );
    assert_eq!(
        plan(&p, &rotated_at(0), None, t(-100), want),
        start_of(RotationTrigger::Schedule)
    );
}

#[test]
fn window_spanning_midnight_in_a_time_zone() {
    let w = Window {
        start: parse_hh_mm("22:00").unwrap(),
        end: parse_hh_mm("04:00").unwrap(),
        tz: parse_time_zone("Europe/Berlin").unwrap(),
    };
    // 20:59 UTC = 21:59 CET: closed; 21:00 UTC = 22:00 CET: open; 02:59 UTC = 03:59 CET.
    let at = |h, m| Utc.with_ymd_and_hms(2024, 1, 10, h, m, 0).unwrap();
    assert!(!w.is_open(at(20, 59)));
    assert!(w.is_open(at(21, 0)));
    assert!(w.is_open(at(2, 59)));
    assert!(!w.is_open(at(3, 0)));
    assert_eq!(w.next_opening(at(12, 0)), at(21, 0));
    assert_eq!(w.next_opening(at(23, 0)), at(23, 0));
}

#[test]
fn overdue_means_late_and_not_healthily_rotating() {
    let p = policy(60);
    assert!(!overdue(&p, &rotated_at(0), t(-100), t(59)));
    assert!(overdue(&p, &rotated_at(0), t(-100), t(61)));
    let mut rotating = rotated_at(0);
    rotating.rotation = Some(start(RotationTrigger::Schedule, None, None, t(60)));
    assert!(!overdue(&p, &rotating, t(-100), t(62)), "healthy rotation");
    rotating.last_failure = Some(RotationFailure::new(
        t(61),
        RotationStep::SetTarget,
        "Unreachable",
        "x",
        &[],
    ));
    assert!(overdue(&p, &rotating, t(-100), t(62)), "failing rotation");
    // Given up: still late against the last success.
    let mut gave_up = failed_at(100);
    gave_up.last_rotation_time = Some(t(0));
    assert!(overdue(&p, &gave_up, t(-100), t(101)));
    // A new object not yet rotated is late once its creation has passed...
    assert!(overdue(&p, &SecretRotationStatus::default(), t(-100), t(0)));
    // ...unless suspended before it ever rotated.
    let suspended = Policy { suspend: true, ..p };
    assert!(!overdue(
        &suspended,
        &SecretRotationStatus::default(),
        t(-100),
        t(0)
    ));
}

/// A rotation is stuck past the floor, or past five times its object's usual
/// (median successful) rotation when that is longer; failed rotations do not count.
#[test]
fn stuck_means_far_longer_than_usual() {
    let floor = StdDuration::from_secs(120);
    let mut st = SecretRotationStatus::default();
    assert_eq!(stuck(&st, floor, t(1000)), None, "nothing in progress");
    st.rotation = Some(start(RotationTrigger::Schedule, None, None, t(0)));
    // No history: the floor.
    assert_eq!(stuck_after(&st, floor), floor);
    assert_eq!(stuck(&st, floor, t(120)), None);
    assert_eq!(stuck(&st, floor, t(121)), Some(StdDuration::from_secs(121)));
    // Usual rotations of 60 s (median of 10, 60, 70): five times that.
    for (i, secs) in [10, 60, 70].into_iter().enumerate() {
        st.record_rotation(RotationSummary {
            id: i.to_string(),
            trigger: RotationTrigger::Schedule,
            started: t(-10_000),
            finished: t(-10_000 + secs),
            outcome: RotationOutcome::Succeeded,
            attempts: 1,
            version: None,
            username: None,
            failure_reason: None,
        });
    }
    // A failed rotation of an hour does not make "usual" longer.
    st.record_rotation(RotationSummary {
        id: "f".into(),
        trigger: RotationTrigger::Schedule,
        started: t(-9_000),
        finished: t(-5_400),
        outcome: RotationOutcome::Failed,
        attempts: 3,
        version: None,
        username: None,
        failure_reason: Some("Unreachable".into()),
    });
    assert_eq!(stuck_after(&st, floor), StdDuration::from_secs(300));
    assert_eq!(stuck(&st, floor, t(300)), None);
    assert!(stuck(&st, floor, t(301)).is_some());
    // A clock behind the start is never stuck.
    assert_eq!(stuck(&st, floor, t(-5)), None);
}

/// The steps a resume finds done, and the step it runs, with and without a target.
#[test]
fn resumed_steps_follow_the_targets_steps() {
    use RotationStep::*;
    assert_eq!(resumed_step(SetTarget, true), SetTarget);
    assert_eq!(resumed_step(SetTarget, false), Finish);
    assert_eq!(resumed_step(Deliver, false), Deliver);
    let cases = [
        (CreatePending, SetTarget, true, vec![CreatePending]),
        (CreatePending, Finish, false, vec![CreatePending]),
        (Finish, Deliver, true, vec![Finish]),
        (Finish, Deliver, false, vec![Finish]),
        (
            SetTarget,
            Deliver,
            true,
            vec![SetTarget, TestTarget, Finish],
        ),
        (Deliver, Deliver, true, vec![]),
    ];
    for (claimed, resumed, has_target, want) in cases {
        assert_eq!(
            steps_done_between(claimed, resumed, has_target),
            want,
            "{claimed:?} -> {resumed:?} (target: {has_target})"
        );
    }
}

/// Crash resume: the claimed step plus what the backend shows.
#[test]
fn resume_table() {
    use RotationStep::*;
    let none = BackendView::default();
    let pending = BackendView {
        pending: true,
        promoted: false,
    };
    let promoted = BackendView {
        pending: false,
        promoted: true,
    };
    let cases = [
        // Crashed before the pending value was stored: store one (a fresh value).
        (CreatePending, none, Resume::Run(CreatePending)),
        // Stored but not recorded: go on to the target.
        (CreatePending, pending, Resume::Run(SetTarget)),
        // Target maybe set: set it again (same value, idempotent).
        (SetTarget, pending, Resume::Run(SetTarget)),
        // Target set, test claimed: test, then promote.
        (TestTarget, pending, Resume::Run(TestTarget)),
        (Finish, pending, Resume::Run(Finish)),
        // Promoted but not recorded: deliver.
        (Finish, promoted, Resume::Run(Deliver)),
        (Deliver, promoted, Resume::Run(Deliver)),
        (SetTarget, promoted, Resume::Run(Deliver)),
        // Pending value gone after it was stored: a fresh attempt.
        (SetTarget, none, Resume::PendingLost),
        (TestTarget, none, Resume::PendingLost),
        (Finish, none, Resume::PendingLost),
    ];
    for (step, view, want) in cases {
        assert_eq!(resume(step, view), want, "{step:?} {view:?}");
    }
}

#[test]
fn steps_without_a_target_skip_set_and_test() {
    use RotationStep::*;
    assert_eq!(next_step(CreatePending, false), Some(Finish));
    assert_eq!(next_step(CreatePending, true), Some(SetTarget));
    assert_eq!(next_step(SetTarget, true), Some(TestTarget));
    assert_eq!(next_step(TestTarget, true), Some(Finish));
    assert_eq!(next_step(Finish, false), Some(Deliver));
    assert_eq!(next_step(Deliver, true), None);
}

#[test]
fn rejection_starts_a_new_attempt_with_a_new_token_until_the_cap() {
    let mut r = in_progress(RotationStep::TestTarget);
    r.pending_version = Some("v1".into());
    let Transition::NewAttempt(next) = after_step(&r, Outcome::Rejected, true, 3, 0) else {
        panic!("expected a new attempt");
    };
    assert_eq!(next.attempt, 2);
    assert_eq!(next.step, RotationStep::CreatePending);
    assert_eq!(next.pending_version, None);
    assert_eq!(next.id, r.id, "same rotation, new attempt");
    let mut last = r.clone();
    last.attempt = 3;
    assert_eq!(
        after_step(&last, Outcome::Rejected, true, 3, 0),
        Transition::GiveUp
    );
    assert_eq!(
        after_step(&r, Outcome::Transient, true, 3, 3),
        Transition::Retry(StdDuration::from_secs(4))
    );
    let mut deliver = r.clone();
    deliver.step = RotationStep::Deliver;
    assert_eq!(
        after_step(&deliver, Outcome::Done, true, 3, 0),
        Transition::Finished
    );
}

#[test]
fn alternating_users_take_turns_and_start_with_the_first() {
    let users = Users::Alternating("app".into(), "app_b".into());
    assert_eq!(next_username(&users, None).as_deref(), Some("app"));
    assert_eq!(next_username(&users, Some("app")).as_deref(), Some("app_b"));
    assert_eq!(next_username(&users, Some("app_b")).as_deref(), Some("app"));
    assert_eq!(
        next_username(&users, Some("stranger")).as_deref(),
        Some("app")
    );
    let single = Users::Single("app".into());
    assert_eq!(next_username(&single, Some("app")).as_deref(), Some("app"));
    assert_eq!(next_username(&Users::None, Some("app")), None);
}

#[test]
fn policy_from_the_example_spec() {
    let spec: SecretRotationSpec = serde_json::from_value(serde_json::json!({
        "backend": { "kubernetes": { "secretName": "db" } },
        "target": { "postgres": {
            "host": "db", "database": "orders", "username": "app",
            "adminSecretRef": { "name": "admin" } } },
        "strategy": { "alternatingUsers": {} },
        "schedule": { "cron": "0 3 * * 1", "timeZone": "Europe/Berlin",
                      "window": { "start": "02:00", "end": "05:00" } },
        "maxAttemptsPerRotation": 5
    }))
    .unwrap();
    let p = Policy::from_spec(&spec).unwrap();
    assert_eq!(p.users, Users::Alternating("app".into(), "app_b".into()));
    assert_eq!(p.max_attempts, 5);
    assert!(matches!(p.cadence, Cadence::Cron(_)));
    assert_eq!(
        p.window,
        Some(Window {
            start: 120,
            end: 300,
            tz: Tz::UTC
        })
    );
}

#[test]
fn backoff_doubles_and_caps() {
    assert_eq!(backoff(0), StdDuration::from_secs(1));
    assert_eq!(backoff(1), StdDuration::from_secs(1));
    assert_eq!(backoff(2), StdDuration::from_secs(2));
    assert_eq!(backoff(5), StdDuration::from_secs(16));
    assert_eq!(backoff(40), BACKOFF_MAX);
}

#[test]
fn rotation_ids_are_start_milliseconds() {
    let r = start(RotationTrigger::Initial, None, None, t(0));
    assert_eq!(rotation_number(&r), t(0).timestamp_millis() as u64);
    assert_eq!(r.attempt, 1);
}

proptest! {
    /// However the steps end, a rotation never uses more attempts than the cap, a
    /// rejection never keeps the same attempt (so never replays a value), and every
    /// sequence ends (finished or given up) once outcomes stop being transient.
    #[test]
    fn attempts_are_capped_and_rejections_never_replay(
        max in 1u32..6,
        outcomes in proptest::collection::vec(0u8..3, 1..60),
        has_target in any::<bool>(),
    ) {
        let mut r = in_progress(RotationStep::CreatePending);
        let mut attempts_seen = std::collections::BTreeSet::new();
        for o in outcomes {
            let outcome = match o { 0 => Outcome::Done, 1 => Outcome::Transient, _ => Outcome::Rejected };
            attempts_seen.insert(r.attempt);
            match after_step(&r, outcome, has_target, max, 1) {
                Transition::Advance(next) => {
                    prop_assert_eq!(outcome, Outcome::Done);
                    prop_assert!(next.step > r.step);
                    prop_assert_eq!(next.attempt, r.attempt);
                    r = next;
                }
                Transition::NewAttempt(next) => {
                    prop_assert_eq!(outcome, Outcome::Rejected);
                    prop_assert_eq!(next.attempt, r.attempt + 1);
                    prop_assert_eq!(next.step, RotationStep::CreatePending);
                    r = next;
                }
                Transition::Retry(d) => {
                    prop_assert_eq!(outcome, Outcome::Transient);
                    prop_assert!(d <= BACKOFF_MAX);
                }
                Transition::GiveUp => {
                    prop_assert_eq!(r.attempt as u32, max);
                    break;
                }
                Transition::Finished => {
                    prop_assert_eq!(r.step, RotationStep::Deliver);
                    break;
                }
            }
            prop_assert!(r.attempt as u32 <= max);
        }
        prop_assert!(attempts_seen.len() as u32 <= max);
    }

    /// A token starts exactly one rotation: once observed, the same token never starts
    /// another, whatever the time; and nothing starts while suspended.
    #[test]
    fn each_rotate_now_token_rotates_once(
        token in "[a-z0-9]{1,12}",
        now_s in 0i64..10_000_000,
        suspend in any::<bool>(),
    ) {
        let p = Policy { suspend, ..policy(100_000_000) };
        let mut st = rotated_at(0);
        let first = plan(&p, &st, Some(&token), t(-1), t(now_s));
        if suspend {
            let is_suspended = matches!(first, Plan::Wait { reason, .. } if reason == reasons::SUSPENDED);
            prop_assert!(is_suspended);
        } else {
            prop_assert_eq!(first, Plan::Start { trigger: RotationTrigger::RotateNow, token: Some(token.clone()) });
            st.observed_rotate_now_token = Some(token.clone());
            let again = plan(&p, &st, Some(&token), t(-1), t(now_s));
            let starts = matches!(again, Plan::Start { .. });
            prop_assert!(!starts);
        }
    }

    /// A scheduled rotation never starts before it is due nor outside the window, and a
    /// wait always names a time in the future at which the plan does start.
    #[test]
    fn schedule_and_window_are_respected(
        interval in 1i64..200_000,
        last in 0i64..100_000,
        now_off in 0i64..400_000,
        ws in 0u32..1440,
        len in 1u32..1439,
    ) {
        let w = Window { start: ws, end: (ws + len) % 1440, tz: Tz::UTC };
        let p = Policy { window: Some(w.clone()), ..policy(interval) };
        let st = rotated_at(last);
        let now = t(last + now_off);
        match plan(&p, &st, None, t(-1), now) {
            Plan::Start { trigger, .. } => {
                prop_assert_eq!(trigger, RotationTrigger::Schedule);
                prop_assert!(now >= t(last + interval));
                prop_assert!(w.is_open(now));
            }
            Plan::Wait { until: Some(until), .. } => {
                prop_assert!(until > now || !w.is_open(now) || now < t(last + interval));
                prop_assert!(until >= now);
                let later = plan(&p, &st, None, t(-1), until);
                let starts = matches!(later, Plan::Start { .. });
                prop_assert!(starts, "no start at the announced time {until}");
            }
            other => prop_assert!(false, "unexpected {other:?}"),
        }
    }
}

#[test]
fn only_steps_with_side_effects_are_claimed() {
    use RotationStep::*;
    for delivers in [false, true] {
        assert!(needs_claim(CreatePending, delivers));
        assert!(needs_claim(SetTarget, delivers));
        assert!(!needs_claim(TestTarget, delivers));
        assert!(needs_claim(Finish, delivers));
        assert_eq!(needs_claim(Deliver, delivers), delivers);
    }
}
