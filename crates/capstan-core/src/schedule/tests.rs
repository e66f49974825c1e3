use proptest::prelude::*;
use regex::Regex;

use super::*;

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("test timestamp")
        .with_timezone(&Utc)
}

/// Go/Kubernetes durations and `d` parse to the values Go would give.
#[test]
fn parse_duration_accepts_go_durations() {
    let cases: &[(&str, Duration)] = &[
        ("0", Duration::ZERO),
        ("0s", Duration::ZERO),
        ("90s", Duration::from_secs(90)),
        ("15m", Duration::from_secs(900)),
        ("1h30m", Duration::from_secs(5400)),
        ("720h", Duration::from_secs(720 * 3600)),
        ("500ms", Duration::from_millis(500)),
        ("2d", Duration::from_secs(2 * 86_400)),
        ("1d12h", Duration::from_secs(36 * 3600)),
        ("1.5h", Duration::from_secs(5400)),
        (".5s", Duration::from_millis(500)),
        ("1.s", Duration::from_secs(1)),
        ("1m1m", Duration::from_secs(120)),
        ("10us", Duration::from_micros(10)),
        ("7ns", Duration::from_nanos(7)),
        ("1.000000001s", Duration::new(1, 1)),
        // Truncated to whole nanoseconds, as in Go.
        ("0.5ns", Duration::ZERO),
        ("1.1ns", Duration::from_nanos(1)),
        (
            "999999999999d",
            Duration::from_secs(999_999_999_999 * 86_400),
        ),
    ];
    for (input, want) in cases {
        assert_eq!(parse_duration(input).as_ref(), Ok(want), "{input}");
    }
}

/// Empty, signed, unit-less, unknown-unit and over-long durations are refused.
#[test]
fn parse_duration_refuses_bad_input() {
    let cases = [
        "",
        "-5s",
        "+5s",
        "5",
        "s",
        ".s",
        ".",
        "5x",
        "5sec",
        "1h 30m",
        " 1h",
        "1h ",
        "5S",
        "µs",
        "5µs",
        "1e3s",
        "1_000s",
        "1..5s",
        "1.5.5s",
        "5s-",
        "0x10s",
        "1000000000000s", // 13 digits
        "1.0000000001s",  // 10 fraction digits
        "9999999999999999999999999h",
    ];
    for input in cases {
        assert!(
            parse_duration(input).is_err(),
            "{input:?} should be refused"
        );
    }
    assert_eq!(parse_duration(""), Err(ScheduleError::EmptyDuration));
}

/// Every tenant duration has a 1 s floor, whatever units it is written in (`0d` and
/// `1ns` included).
#[test]
fn the_minimum_is_one_second_whatever_the_units() {
    let check = |s: &str| check_min_duration(&DurationString(s.to_owned()));
    for ok in [
        "1s",
        "1000ms",
        "500ms500ms",
        "1d",
        "0d1s",
        "0.5d",
        "1m",
        ".5s.5s",
    ] {
        assert!(check(ok).is_ok(), "{ok}");
    }
    for bad in [
        "0",
        "0s",
        "0d",
        "1ns",
        "999ms",
        "999999999ns",
        "0.5s",
        "0d0h0m0s",
    ] {
        assert!(check(bad).is_err(), "{bad}");
    }
    // The CEL rule names the same minimum and keeps the pattern's escapes.
    let rule = rule_min_duration();
    assert!(rule.contains(">= 1.0"), "{rule}");
    assert!(rule.contains("[0-9]{1,12}(\\\\.[0-9]{0,9})"), "{rule}");
}

/// Many maximal components overflow a Duration and are refused rather than wrapped.
#[test]
fn parse_duration_refuses_overflow() {
    let huge = "999999999999d".repeat(300);
    assert!(matches!(
        parse_duration(&huge),
        Err(ScheduleError::DurationOverflow { .. })
    ));
}

#[test]
fn format_duration_is_compact() {
    let cases: &[(Duration, &str)] = &[
        (Duration::ZERO, "0s"),
        (Duration::from_secs(90), "1m30s"),
        (Duration::from_secs(36 * 3600), "1d12h"),
        (Duration::from_millis(1500), "1s500ms"),
        (Duration::new(0, 1_001_001), "1ms1us1ns"),
    ];
    for (d, want) in cases {
        assert_eq!(format_duration(*d), *want);
    }
}

#[test]
fn duration_string_schema_carries_pattern_and_max_length() {
    let schema = schemars::schema_for!(DurationString);
    let value = serde_json::to_value(&schema).expect("schema serializes");
    assert_eq!(value["type"], "string");
    assert_eq!(value["pattern"], DURATION_PATTERN);
    assert_eq!(value["maxLength"], DURATION_MAX_LENGTH);
}

/// Deserializing keeps a bad value instead of failing, and `duration()` reports it.
#[test]
fn duration_string_deserializes_leniently() {
    let ok: DurationString = serde_json::from_str("\"15s\"").expect("deserializes");
    assert_eq!(ok.duration(), Ok(Duration::from_secs(15)));
    let bad: DurationString = serde_json::from_str("\"soon\"").expect("deserializes");
    assert!(bad.duration().is_err());
    assert!(DurationString::new("soon").is_err());
    assert!(
        DurationString::new("1s".repeat(40)).is_err(),
        "longer than maxLength"
    );
    assert_eq!(serde_json::to_string(&ok).expect("serializes"), "\"15s\"");
}

/// The pattern without `^`/`$`, which proptest cannot generate from.
fn unanchored(pattern: &str) -> &str {
    pattern
        .strip_prefix('^')
        .and_then(|p| p.strip_suffix('$'))
        .expect("anchored pattern")
}

fn duration_regex() -> Regex {
    Regex::new(DURATION_PATTERN).expect("DURATION_PATTERN compiles")
}

proptest! {
    /// format then parse gives back the same duration, and the string is a valid
    /// DurationString.
    #[test]
    fn duration_format_parse_round_trip(
        secs in 0u64..(999_999_999_999u64 * 86_400),
        nanos in 0u32..1_000_000_000,
    ) {
        let d = Duration::new(secs, nanos);
        let s = format_duration(d);
        prop_assert_eq!(parse_duration(&s), Ok(d));
        let ds = DurationString::from_duration(d).expect("fits");
        prop_assert_eq!(ds.duration(), Ok(d));
    }

    /// Every string the schema pattern admits (within maxLength) is a valid
    /// DurationString.
    #[test]
    fn duration_pattern_admits_only_valid(
        s in proptest::string::string_regex(unanchored(DURATION_PATTERN)).expect("strategy"),
    ) {
        prop_assume!(s.len() <= DURATION_MAX_LENGTH);
        prop_assert!(DurationString::new(s.clone()).is_ok(), "{:?}", s);
    }

    /// Every string DurationString accepts matches the schema pattern, and every
    /// string it refuses does not (or is too long): the two agree exactly.
    #[test]
    fn duration_pattern_agrees_with_parser(
        s in "[0-9.nsumhdx+ -]{0,20}",
    ) {
        let schema_ok = duration_regex().is_match(&s) && s.len() <= DURATION_MAX_LENGTH;
        prop_assert_eq!(schema_ok, DurationString::new(s.clone()).is_ok(), "{:?}", s);
    }

    /// Same agreement on strings built from well-formed components, where the
    /// interesting cases (digit limits, fractions) live.
    #[test]
    fn duration_pattern_agrees_with_parser_on_components(
        parts in proptest::collection::vec(
            ("[0-9]{0,14}", proptest::option::of("[0-9]{0,11}"), "(ns|us|ms|s|m|h|d|x|)"),
            1..6,
        ),
    ) {
        let s: String = parts
            .iter()
            .map(|(i, f, u)| match f {
                Some(f) => format!("{i}.{f}{u}"),
                None => format!("{i}{u}"),
            })
            .collect();
        let schema_ok = duration_regex().is_match(&s) && s.len() <= DURATION_MAX_LENGTH;
        prop_assert_eq!(schema_ok, DurationString::new(s.clone()).is_ok(), "{:?}", s);
    }
}

#[test]
fn cron_parse_accepts_and_refuses() {
    let ok = [
        ("*/5 * * * *", None),
        ("0 9 * * MON-FRI", Some("Europe/Berlin")),
        ("0 9 * * mon-fri", None),
        ("0 0 1 JAN *", None),
        ("30 2 * * 7", Some("America/New_York")),
        ("0 0 L * *", None),
        ("0 0 29 2 *", None),
        ("@daily", None),
        ("@hourly", Some("UTC")),
        ("@yearly", None),
        ("@annually", None),
        ("@monthly", None),
        ("@weekly", None),
        ("0  0 * * *", None),
    ];
    for (expr, tz) in ok {
        let s = CronSchedule::parse(expr, tz);
        assert!(s.is_ok(), "{expr:?} in {tz:?}: {s:?}");
    }
    let bad = [
        ("", None),
        ("* * * *", None),
        ("0 * * * * *", None),
        ("0 0 * * * 2026", None),
        ("61 * * * *", None),
        ("0 24 * * *", None),
        ("5-1 * * * *", None),
        ("*/0 * * * *", None),
        ("0 0 30 2 *", None),
        ("0 0 31 4 *", None),
        ("@reboot", None),
        ("@every 5m", None),
        (" 0 0 * * *", None),
        ("0 0 * * *\t", None),
        ("0\t0 * * *", None),
        ("0 0 * * +MON", None),
        ("0 0 * * *", Some("Mars/Olympus")),
        ("0 0 * * *", Some("europe/berlin")),
        ("0 0 * * *", Some("")),
    ];
    for (expr, tz) in bad {
        let s = CronSchedule::parse(expr, tz);
        assert!(s.is_err(), "{expr:?} in {tz:?} should be refused: {s:?}");
    }
    assert_eq!(
        CronSchedule::parse("0 0 * * *", Some("Mars/Olympus")),
        Err(ScheduleError::UnknownTimeZone("Mars/Olympus".into()))
    );
}

#[test]
fn cron_next_and_last_table() {
    // (expression, zone, t, next_after(t), last_at_or_before(t))
    let cases = [
        (
            "*/15 * * * *",
            None,
            "2026-01-01T10:07:00Z",
            "2026-01-01T10:15:00Z",
            "2026-01-01T10:00:00Z",
        ),
        // Strictly after; at-or-before includes t itself.
        (
            "*/15 * * * *",
            None,
            "2026-01-01T10:15:00Z",
            "2026-01-01T10:30:00Z",
            "2026-01-01T10:15:00Z",
        ),
        // Seconds in t are not a firing time.
        (
            "*/15 * * * *",
            None,
            "2026-01-01T10:15:30Z",
            "2026-01-01T10:30:00Z",
            "2026-01-01T10:15:00Z",
        ),
        // Time zone: 09:00 Berlin in winter is 08:00 UTC.
        (
            "0 9 * * *",
            Some("Europe/Berlin"),
            "2026-01-15T12:00:00Z",
            "2026-01-16T08:00:00Z",
            "2026-01-15T08:00:00Z",
        ),
        // Black Friday 2026 is 27 November; 00:00 New York is 05:00 UTC (EST).
        (
            "0 0 27 11 *",
            Some("America/New_York"),
            "2026-06-01T00:00:00Z",
            "2026-11-27T05:00:00Z",
            "2025-11-27T05:00:00Z",
        ),
        // Leap day.
        (
            "0 0 29 2 *",
            None,
            "2025-01-01T00:00:00Z",
            "2028-02-29T00:00:00Z",
            "2024-02-29T00:00:00Z",
        ),
    ];
    for (expr, tz, t, next, last) in cases {
        let s = CronSchedule::parse(expr, tz).expect("parses");
        assert_eq!(s.next_after(utc(t)), Some(utc(next)), "next {expr} {t}");
        assert_eq!(
            s.last_at_or_before(utc(t)),
            Some(utc(last)),
            "last {expr} {t}"
        );
    }
}

/// Spring forward (New York, 8 March 2026, 02:00 → 03:00): a daily 02:30 fires once,
/// at 03:00 EDT (07:00 UTC); an every-30-minutes expression skips the missing hour.
#[test]
fn cron_dst_gap() {
    let daily = CronSchedule::parse("30 2 * * *", Some("America/New_York")).expect("ok");
    let next = daily.next_after(utc("2026-03-08T05:00:00Z"));
    assert_eq!(next, Some(utc("2026-03-08T07:00:00Z")));
    // The day before and after run at 02:30 local as usual.
    assert_eq!(
        daily.next_after(utc("2026-03-07T05:00:00Z")),
        Some(utc("2026-03-07T07:30:00Z"))
    );
    assert_eq!(
        daily.next_after(utc("2026-03-08T07:00:00Z")),
        Some(utc("2026-03-09T06:30:00Z"))
    );
    assert_eq!(
        daily.last_at_or_before(utc("2026-03-08T08:00:00Z")),
        Some(utc("2026-03-08T07:00:00Z"))
    );

    let every = CronSchedule::parse("*/30 * * * *", Some("America/New_York")).expect("ok");
    // 01:30 EST = 06:30 UTC; the next wall-clock time that exists is 03:00 EDT = 07:00.
    assert_eq!(
        every.next_after(utc("2026-03-08T06:30:00Z")),
        Some(utc("2026-03-08T07:00:00Z"))
    );
}

/// Fall back (New York, 1 November 2026, 02:00 EDT → 01:00 EST): a daily 01:30 fires
/// once, at the earlier instant (05:30 UTC); an every-30-minutes expression fires in
/// both copies of the hour.
#[test]
fn cron_dst_overlap() {
    let daily = CronSchedule::parse("30 1 * * *", Some("America/New_York")).expect("ok");
    assert_eq!(
        daily.next_after(utc("2026-11-01T04:00:00Z")),
        Some(utc("2026-11-01T05:30:00Z"))
    );
    assert_eq!(
        daily.next_after(utc("2026-11-01T05:30:00Z")),
        Some(utc("2026-11-02T06:30:00Z")),
        "does not fire again in the repeated hour"
    );
    assert_eq!(
        daily.last_at_or_before(utc("2026-11-01T07:00:00Z")),
        Some(utc("2026-11-01T05:30:00Z"))
    );

    let every = CronSchedule::parse("*/30 * * * *", Some("America/New_York")).expect("ok");
    let mut t = utc("2026-11-01T04:45:00Z");
    let mut fired = Vec::new();
    for _ in 0..5 {
        let next = every.next_after(t).expect("fires");
        fired.push(next);
        t = next;
    }
    let want: Vec<_> = [
        "2026-11-01T05:00:00Z",
        "2026-11-01T05:30:00Z",
        "2026-11-01T06:00:00Z",
        "2026-11-01T06:30:00Z",
        "2026-11-01T07:00:00Z",
    ]
    .iter()
    .map(|s| utc(s))
    .collect();
    assert_eq!(fired, want);
}

fn cron_regex() -> Regex {
    Regex::new(CRON_PATTERN).expect("CRON_PATTERN compiles")
}

#[test]
fn cron_pattern_refuses_malformed_and_admits_valid() {
    let re = cron_regex();
    for ok in [
        "*/5 * * * *",
        "0 9 * * MON-FRI",
        "@daily",
        "0 0 L * *",
        "0 0 * * 5#2",
    ] {
        assert!(re.is_match(ok), "{ok}");
    }
    for bad in [
        "",
        "* * * *",
        "0 * * * * *",
        "@reboot",
        "0 0 * * *\t",
        " 0 0 * * *",
        "a;b c d e f",
    ] {
        assert!(!re.is_match(bad), "{bad:?}");
    }
    let tz = Regex::new(TIME_ZONE_PATTERN).expect("TIME_ZONE_PATTERN compiles");
    for name in chrono_tz::TZ_VARIANTS.iter().map(|t| t.name()) {
        assert!(
            tz.is_match(name),
            "every known zone matches the pattern: {name}"
        );
    }
    for bad in [
        "",
        "/UTC",
        "Europe/",
        "Europe//Berlin",
        "Europe Berlin",
        "../etc",
    ] {
        assert!(!tz.is_match(bad), "{bad:?}");
    }
}

fn any_instant() -> impl Strategy<Value = DateTime<Utc>> {
    // 2000-01-01 .. 2040-01-01, to the second.
    (946_684_800i64..2_208_988_800)
        .prop_map(|s| DateTime::<Utc>::from_timestamp(s, 0).expect("in range"))
}

fn some_schedule() -> impl Strategy<Value = CronSchedule> {
    let exprs = prop_oneof![
        Just("*/5 * * * *"),
        Just("30 2 * * *"),
        Just("30 1 * * *"),
        Just("0 */2 * * *"),
        Just("15,45 1-3 * * *"),
        Just("0 9 * * MON-FRI"),
        Just("0 0 1 * *"),
        Just("0 0 27 11 *"),
        Just("@hourly"),
        Just("@daily"),
    ];
    let zones = prop_oneof![
        Just(None),
        Just(Some("UTC")),
        Just(Some("America/New_York")),
        Just(Some("Europe/Berlin")),
        Just(Some("Australia/Lord_Howe")),
        Just(Some("Asia/Kolkata")),
    ];
    (exprs, zones).prop_map(|(e, z)| CronSchedule::parse(e, z).expect("valid"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// next_after is strictly later, and last_at_or_before is at or earlier.
    #[test]
    fn cron_next_is_after_and_last_is_before(s in some_schedule(), t in any_instant()) {
        let next = s.next_after(t).expect("fires");
        prop_assert!(next > t);
        let last = s.last_at_or_before(t).expect("fired");
        prop_assert!(last <= t);
    }

    /// A firing time is its own last_at_or_before, so a window that opened at it is
    /// seen as open.
    #[test]
    fn cron_last_of_next_is_next(s in some_schedule(), t in any_instant()) {
        let next = s.next_after(t).expect("fires");
        prop_assert_eq!(s.last_at_or_before(next), Some(next));
    }

    /// No firing time lies strictly between last_at_or_before(t) and next_after(t).
    #[test]
    fn cron_last_and_next_are_adjacent(s in some_schedule(), t in any_instant()) {
        let last = s.last_at_or_before(t).expect("fired");
        let next = s.next_after(t).expect("fires");
        prop_assert_eq!(s.next_after(last), Some(next));
    }

    /// Every string the cron parser accepts matches the schema pattern.
    #[test]
    fn cron_parser_accepts_only_pattern_matches(
        fields in proptest::collection::vec("[0-9*,/LW#?A-Za-z-]{1,6}", 4..7),
        sep in "( |  |\t)",
    ) {
        let expr = fields.join(&sep);
        if CronSchedule::parse(&expr, None).is_ok() {
            prop_assert!(cron_regex().is_match(&expr), "{:?}", expr);
        }
    }
}

#[test]
fn jitter_adds_up_to_a_fifth_and_spreads_seeds() {
    let base = Duration::from_secs(10);
    let waits: Vec<Duration> = (0..50).map(|i| jittered(base, &("ns", i))).collect();
    assert!(waits.iter().all(|w| *w >= base && *w <= base.mul_f64(1.2)));
    let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
    assert!(
        distinct.len() > 40,
        "{} distinct waits of 50",
        distinct.len()
    );
    assert_eq!(jittered(base, &("ns", 7)), jittered(base, &("ns", 7)));
}
