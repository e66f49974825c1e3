//! Durations and cron schedules, as every controller reads them from a spec.
//!
//! - [`parse_duration`] reads Go/Kubernetes durations (`"90s"`, `"1h30m"`, `"500ms"`,
//!   `"1.5h"`) plus `d` for days, and [`DurationString`] is the CRD field type whose
//!   OpenAPI `pattern` admits exactly what the parser admits, so a bad value is refused
//!   at admission instead of by a controller.
//! - [`CronSchedule`] is a 5-field cron expression (or an `@daily`-style macro) in an IANA
//!   time zone, with [`CronSchedule::next_after`] and [`CronSchedule::last_at_or_before`]
//!   for deciding when a window opens and whether one that opened at a cron time is still
//!   open.
//!
//! Nothing here reads a clock: callers pass `now`.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// Why a duration, cron expression or time zone was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The duration string was empty.
    #[error("duration is empty")]
    EmptyDuration,
    /// The duration string is not a valid duration; `reason` says which part.
    #[error("invalid duration {input:?}: {reason}")]
    InvalidDuration {
        /// The string as given.
        input: String,
        /// What is wrong with it.
        reason: Cow<'static, str>,
    },
    /// The duration does not fit in a [`Duration`] (or, for [`DurationString`], in
    /// [`DURATION_MAX_LENGTH`] characters).
    #[error("duration {input:?} is too large")]
    DurationOverflow {
        /// The string as given, or the formatted duration.
        input: String,
    },
    /// The cron expression could not be parsed.
    #[error("invalid cron expression {expression:?}: {reason}")]
    InvalidCron {
        /// The expression as given.
        expression: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The time zone is not a known IANA time zone name.
    #[error("unknown time zone {0:?} (expected an IANA name such as \"Europe/Berlin\")")]
    UnknownTimeZone(String),
}

// ---------------------------------------------------------------------------------------
// Durations
// ---------------------------------------------------------------------------------------

/// The OpenAPI `pattern` of [`DurationString`]: one or more `<number><unit>` components,
/// or a bare `0`.
///
/// A number is at most 12 integer digits with an optional fraction of at most 9 digits
/// (`1.5h`, `.5s`, `1.s`, as Go accepts). Units: `ns`, `us`, `ms`, `s`, `m`, `h`, `d`
/// (`d` is exactly 24 h, not a calendar day). No sign: negative durations are refused,
/// and so is `+`. Go's `µs` spelling is not accepted (ASCII only).
///
/// With the 12-digit limit and [`DURATION_MAX_LENGTH`], no string the pattern admits can
/// overflow, so the schema and [`DurationString::new`] accept exactly the same strings.
pub const DURATION_PATTERN: &str =
    r"^(0|(([0-9]{1,12}(\.[0-9]{0,9})?|\.[0-9]{1,9})(ns|us|ms|s|m|h|d))+)$";

/// The longest string a [`DurationString`] may hold (the schema's `maxLength`).
pub const DURATION_MAX_LENGTH: usize = 64;

const MAX_INTEGER_DIGITS: usize = 12;
const MAX_FRACTION_DIGITS: usize = 9;

const NANOS_PER_SEC: u128 = 1_000_000_000;

fn unit_nanos(unit: &str) -> Option<u128> {
    Some(match unit {
        "ns" => 1,
        "us" => 1_000,
        "ms" => 1_000_000,
        "s" => NANOS_PER_SEC,
        "m" => 60 * NANOS_PER_SEC,
        "h" => 3_600 * NANOS_PER_SEC,
        "d" => 86_400 * NANOS_PER_SEC,
        _ => return None,
    })
}

fn invalid(input: &str, reason: impl Into<Cow<'static, str>>) -> ScheduleError {
    ScheduleError::InvalidDuration {
        input: input.to_owned(),
        reason: reason.into(),
    }
}

/// Parses a Go/Kubernetes-style duration, plus `d` for 24-hour days.
///
/// Accepts exactly [`DURATION_PATTERN`] (see there for the grammar); a fraction is
/// truncated to whole nanoseconds, as Go does. Refuses the empty string, signs, unknown
/// or missing units, over-long numbers, and values that do not fit in a [`Duration`].
///
/// ```
/// # use std::time::Duration;
/// # use capstan_core::schedule::parse_duration;
/// assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
/// assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
/// assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
/// assert!(parse_duration("-5s").is_err());
/// assert!(parse_duration("5").is_err());
/// ```
pub fn parse_duration(input: &str) -> Result<Duration, ScheduleError> {
    if input.is_empty() {
        return Err(ScheduleError::EmptyDuration);
    }
    if input == "0" {
        return Ok(Duration::ZERO);
    }
    if input.starts_with('-') {
        return Err(invalid(input, "negative durations are not allowed"));
    }
    let bytes = input.as_bytes();
    let mut total: u128 = 0;
    let mut i = 0;
    while i < bytes.len() {
        // Integer part.
        let int_start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let int_digits = &input[int_start..i];
        // Fraction part.
        let mut frac_digits = "";
        let has_dot = i < bytes.len() && bytes[i] == b'.';
        if has_dot {
            i += 1;
            let frac_start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            frac_digits = &input[frac_start..i];
        }
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(invalid(input, "expected a number before each unit"));
        }
        if int_digits.len() > MAX_INTEGER_DIGITS {
            return Err(invalid(
                input,
                format!("a number may have at most {MAX_INTEGER_DIGITS} digits"),
            ));
        }
        if frac_digits.len() > MAX_FRACTION_DIGITS {
            return Err(invalid(
                input,
                format!("a fraction may have at most {MAX_FRACTION_DIGITS} digits"),
            ));
        }
        // Unit: everything up to the next digit or dot, as Go reads it.
        let unit_start = i;
        while i < bytes.len() && !bytes[i].is_ascii_digit() && bytes[i] != b'.' {
            i += 1;
        }
        let unit = &input[unit_start..i];
        if unit.is_empty() {
            return Err(invalid(
                input,
                "missing unit (one of ns, us, ms, s, m, h, d)",
            ));
        }
        let Some(per_unit) = unit_nanos(unit) else {
            return Err(invalid(
                input,
                format!("unknown unit {unit:?} (expected one of ns, us, ms, s, m, h, d)"),
            ));
        };
        // Both parts are at most 12 and 9 digits, so none of this can overflow u128.
        let int_value: u128 = if int_digits.is_empty() {
            0
        } else {
            int_digits
                .parse()
                .map_err(|_| invalid(input, "malformed number"))?
        };
        let mut component = int_value * per_unit;
        if !frac_digits.is_empty() {
            let frac_value: u128 = frac_digits
                .parse()
                .map_err(|_| invalid(input, "malformed fraction"))?;
            let scale = 10u128.pow(frac_digits.len() as u32);
            component += frac_value * per_unit / scale;
        }
        total = total
            .checked_add(component)
            .ok_or_else(|| ScheduleError::DurationOverflow {
                input: input.to_owned(),
            })?;
    }
    let secs =
        u64::try_from(total / NANOS_PER_SEC).map_err(|_| ScheduleError::DurationOverflow {
            input: input.to_owned(),
        })?;
    // The remainder is below 10^9, so it fits.
    let nanos = (total % NANOS_PER_SEC) as u32;
    Ok(Duration::new(secs, nanos))
}

/// Formats a duration in the compact form [`parse_duration`] reads back exactly:
/// `0s`, `90s` → `1m30s`, `36h` → `1d12h`, `1.5s` → `1s500ms`.
pub fn format_duration(duration: Duration) -> String {
    if duration.is_zero() {
        return "0s".to_owned();
    }
    let secs = duration.as_secs();
    let nanos = duration.subsec_nanos();
    let parts: [(u64, &str); 7] = [
        (secs / 86_400, "d"),
        (secs % 86_400 / 3_600, "h"),
        (secs % 3_600 / 60, "m"),
        (secs % 60, "s"),
        (u64::from(nanos / 1_000_000), "ms"),
        (u64::from(nanos / 1_000 % 1_000), "us"),
        (u64::from(nanos % 1_000), "ns"),
    ];
    let mut out = String::new();
    for (value, unit) in parts {
        if value != 0 {
            out.push_str(&value.to_string());
            out.push_str(unit);
        }
    }
    out
}

/// A duration as a CRD field holds it: a string such as `"15s"` or `"1h30m"`.
///
/// The schema is `type: string` with [`DURATION_PATTERN`] and `maxLength`
/// [`DURATION_MAX_LENGTH`], so the API server refuses exactly the strings
/// [`DurationString::new`] refuses.
///
/// Deserializing does not validate: an object stored before a schema change must not
/// break a whole watch stream, so the controller calls [`DurationString::duration`] and
/// reports a bad value on the object instead.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DurationString(String);

impl DurationString {
    /// Validates `value` as the schema does.
    pub fn new(value: impl Into<String>) -> Result<Self, ScheduleError> {
        let value = value.into();
        Self::check(&value)?;
        Ok(Self(value))
    }

    /// The canonical string for `duration` (see [`format_duration`]); fails only for
    /// durations too large to write in [`DURATION_MAX_LENGTH`] characters.
    pub fn from_duration(duration: Duration) -> Result<Self, ScheduleError> {
        Self::new(format_duration(duration)).map_err(|_| ScheduleError::DurationOverflow {
            input: format_duration(duration),
        })
    }

    fn check(value: &str) -> Result<Duration, ScheduleError> {
        if value.len() > DURATION_MAX_LENGTH {
            return Err(invalid(
                value,
                format!("longer than {DURATION_MAX_LENGTH} characters"),
            ));
        }
        parse_duration(value)
    }

    /// The string as written in the spec.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The duration, or why the stored string is not one.
    pub fn duration(&self) -> Result<Duration, ScheduleError> {
        Self::check(&self.0)
    }
}

impl fmt::Display for DurationString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for DurationString {
    type Err = ScheduleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<Duration> for DurationString {
    type Error = ScheduleError;

    fn try_from(value: Duration) -> Result<Self, Self::Error> {
        Self::from_duration(value)
    }
}

impl JsonSchema for DurationString {
    fn schema_name() -> Cow<'static, str> {
        "DurationString".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_generator: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "maxLength": DURATION_MAX_LENGTH,
        })
    }
}

/// The shortest duration a tenant may set in any Capstan CRD (evaluation and rotation
/// intervals, timeouts, window lengths): 1 s. Anything shorter only makes Capstan call
/// outside systems in a loop; the tests use 1 s intervals.
pub const MIN_TENANT_DURATION: Duration = Duration::from_secs(1);

/// [`MIN_TENANT_DURATION`] as a spec writes it.
pub const MIN_TENANT_DURATION_STR: &str = "1s";

/// The CEL rule (`x-kubernetes-validations`) that refuses a [`DurationString`] shorter
/// than [`MIN_TENANT_DURATION`], so the API server answers with the field's path.
///
/// CEL's own `duration()` knows no `d` unit, so the rule adds the components up
/// itself: each `<number><unit>` of the string (Kubernetes' `findAll`) is converted to
/// seconds and the list summed (Kubernetes' list `sum()`). `0`, `0d` and `1ns` are
/// refused; `1s`, `500ms500ms` and `1d` pass. A string the `pattern` refuses is left to
/// the pattern's own error. [`check_min_duration`] is the same check in code.
pub fn rule_min_duration() -> String {
    let pattern = DURATION_PATTERN.replace('\\', "\\\\");
    format!(
        "!self.matches('{pattern}') || (self != '0' && {} >= 1.0)",
        cel_seconds("self")
    )
}

/// A CEL expression for the length in seconds (a double) of the duration string
/// `expr` (a field the schema bounds and the pattern [`DURATION_PATTERN`] checks), for
/// rules that compare two durations.
pub fn cel_seconds(expr: &str) -> String {
    let secs = |scale: &str, unit_len: usize| {
        format!("double(c.substring(0, size(c) - {unit_len})){scale}")
    };
    format!(
        "{expr}.findAll('[0-9.]+(ns|us|ms|s|m|h|d)').map(c, \
         c.endsWith('ns') ? {ns} : c.endsWith('us') ? {us} : c.endsWith('ms') ? {ms} : \
         c.endsWith('s') ? {s} : c.endsWith('m') ? {m} : c.endsWith('h') ? {h} : {d}).sum()",
        ns = secs(" / 1000000000.0", 2),
        us = secs(" / 1000000.0", 2),
        ms = secs(" / 1000.0", 2),
        s = secs("", 1),
        m = secs(" * 60.0", 1),
        h = secs(" * 3600.0", 1),
        d = secs(" * 86400.0", 1),
    )
}

/// The message of [`rule_min_duration`] for the field `name`.
pub fn min_duration_message(name: &str) -> String {
    format!("{name} must be at least {MIN_TENANT_DURATION_STR}")
}

/// The code side of [`rule_min_duration`]: the duration of `value`, or why it is not
/// one or is shorter than [`MIN_TENANT_DURATION`]. Controllers call it on every
/// tenant-set duration and report an error as `InvalidSpec`, so an object stored
/// before the rule existed cannot make them loop either.
pub fn check_min_duration(value: &DurationString) -> Result<Duration, String> {
    match value.duration() {
        Ok(d) if d >= MIN_TENANT_DURATION => Ok(d),
        Ok(_) => Err(format!(
            "{:?} is shorter than the minimum of {MIN_TENANT_DURATION_STR}",
            value.as_str()
        )),
        Err(e) => Err(e.to_string()),
    }
}

// ---------------------------------------------------------------------------------------
// Cron
// ---------------------------------------------------------------------------------------

/// A syntactic `pattern` for cron fields in a CRD: an `@yearly`/`@annually`/`@monthly`/
/// `@weekly`/`@daily`/`@hourly` macro, or five space-separated fields made of digits,
/// names, `*`, `,`, `-`, `/` and croner's `L`, `W`, `#`, `?` extensions.
///
/// It refuses malformed expressions at admission (wrong field count, stray characters).
/// It cannot see value ranges (`61 * * * *`) or a range written backwards (`5-1`): those
/// pass admission and [`CronSchedule::parse`] refuses them. Every string the parser
/// accepts matches this pattern.
pub const CRON_PATTERN: &str = r"^(@(yearly|annually|monthly|weekly|daily|hourly)|[0-9A-Za-z*,/#?-]+( +[0-9A-Za-z*,/#?-]+){4})$";

/// The longest cron expression accepted.
pub const CRON_MAX_LENGTH: usize = 256;

/// A syntactic `pattern` for IANA time zone names (`UTC`, `Europe/Berlin`,
/// `America/Argentina/Buenos_Aires`, `Etc/GMT+5`). Whether the name exists is decided by
/// [`parse_time_zone`] (the tz database compiled into the operator), not by the schema:
/// a list of every zone would make `kubectl explain` unreadable.
pub const TIME_ZONE_PATTERN: &str = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$";

/// The longest time zone name accepted.
pub const TIME_ZONE_MAX_LENGTH: usize = 64;

/// Looks up an IANA time zone name (case-sensitive, as in the tz database).
pub fn parse_time_zone(name: &str) -> Result<Tz, ScheduleError> {
    Tz::from_str(name).map_err(|_| ScheduleError::UnknownTimeZone(name.to_owned()))
}

/// A cron expression in a time zone.
///
/// Five fields (minute, hour, day of month, month, day of week; Vixie semantics: when
/// both day fields are restricted, either matching is enough; 0 and 7 are Sunday; month
/// and day names are accepted in any case) or one of the macros in [`CRON_PATTERN`].
/// Croner's `L` (last), `W` (nearest weekday) and `#` (nth weekday) are accepted too.
///
/// # Daylight saving time
///
/// Fields are matched against the wall clock of the time zone:
/// - **Skipped hour** (spring forward): a fixed-time expression (single minute and hour,
///   e.g. `30 2 * * *`) whose time does not exist that day fires once, at the first
///   instant after the gap (03:00 local). An expression with wildcards or steps in the
///   minute or hour fires only at wall-clock times that exist, so the skipped hour simply
///   has no occurrences.
/// - **Repeated hour** (fall back): a fixed-time expression fires once, at the first
///   (earlier) of the two instants. An expression with wildcards or steps fires at both.
///
/// So a daily window never disappears and never opens twice on a DST day.
#[derive(Clone, Debug)]
pub struct CronSchedule {
    expression: String,
    time_zone: Tz,
    cron: Cron,
}

impl PartialEq for CronSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.expression == other.expression && self.time_zone == other.time_zone
    }
}

impl Eq for CronSchedule {}

fn invalid_cron(expression: &str, reason: impl Into<String>) -> ScheduleError {
    ScheduleError::InvalidCron {
        expression: expression.to_owned(),
        reason: reason.into(),
    }
}

/// Checks the syntax [`CRON_PATTERN`] describes, so the parser never accepts a string the
/// schema would refuse (croner alone is more lenient: tabs, `+`, 6 or 7 fields).
fn check_cron_syntax(expression: &str) -> Result<(), ScheduleError> {
    if expression.len() > CRON_MAX_LENGTH {
        return Err(invalid_cron(
            expression,
            format!("longer than {CRON_MAX_LENGTH} characters"),
        ));
    }
    if let Some(name) = expression.strip_prefix('@') {
        return match name {
            "yearly" | "annually" | "monthly" | "weekly" | "daily" | "hourly" => Ok(()),
            _ => Err(invalid_cron(
                expression,
                "unknown macro (expected @yearly, @annually, @monthly, @weekly, @daily or @hourly)",
            )),
        };
    }
    if expression.starts_with(' ') || expression.ends_with(' ') {
        return Err(invalid_cron(expression, "leading or trailing space"));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || "*,/#?-".contains(c);
    if let Some(bad) = expression.chars().find(|&c| c != ' ' && !allowed(c)) {
        return Err(invalid_cron(
            expression,
            format!("character {bad:?} is not allowed"),
        ));
    }
    let fields = expression.split(' ').filter(|f| !f.is_empty()).count();
    if fields != 5 {
        return Err(invalid_cron(
            expression,
            format!(
                "expected 5 fields (minute hour day-of-month month day-of-week), found {fields}"
            ),
        ));
    }
    Ok(())
}

/// Where [`CronSchedule::parse`] checks that an expression fires at all, and how far it
/// looks: 112 years is four 28-year calendar cycles, enough for any day/weekday/leap-day
/// combination, across the missing leap day of 2100.
const FIRES_CHECK_START_YEAR: i32 = 2000;
const FIRES_CHECK_YEARS: i32 = 28 * 4;

impl CronSchedule {
    /// Parses `expression` in `time_zone` (an IANA name; `None` means UTC).
    ///
    /// Refuses expressions that never fire (`0 0 30 2 *`), so [`Self::next_after`] and
    /// [`Self::last_at_or_before`] only return `None` at the ends of representable time.
    pub fn parse(expression: &str, time_zone: Option<&str>) -> Result<Self, ScheduleError> {
        let time_zone = match time_zone {
            None => Tz::UTC,
            Some(name) => parse_time_zone(name)?,
        };
        check_cron_syntax(expression)?;
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(expression)
            .map_err(|e| invalid_cron(expression, e.to_string()))?;
        let schedule = Self {
            expression: expression.to_owned(),
            time_zone,
            cron,
        };
        let start = Utc
            .with_ymd_and_hms(FIRES_CHECK_START_YEAR, 1, 1, 0, 0, 0)
            .single()
            .ok_or_else(|| invalid_cron(expression, "internal: bad reference date"))?;
        match schedule.next_after(start) {
            Some(t) if t.year() < FIRES_CHECK_START_YEAR + FIRES_CHECK_YEARS => Ok(schedule),
            _ => Err(invalid_cron(expression, "the expression never fires")),
        }
    }

    /// The expression as given.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The time zone the fields are matched in.
    pub fn time_zone(&self) -> Tz {
        self.time_zone
    }

    /// The first firing time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&self.time_zone);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|next| next.with_timezone(&Utc))
    }

    /// The last firing time at or before `t` (`t` itself if it is a firing time).
    ///
    /// A window that opens at each firing time and lasts `d` is open at `now` exactly
    /// when `last_at_or_before(now)` is `Some(start)` with `now < start + d`.
    pub fn last_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&self.time_zone);
        self.cron
            .find_previous_occurrence(&local, true)
            .ok()
            .map(|prev| prev.with_timezone(&Utc))
    }
}

/// `base` plus up to 20% jitter derived from `seed`: objects that fail or wait together
/// (a start-up, an outage of a shared system) spread out instead of retrying in
/// lockstep. Deterministic (the same seed always waits the same), so decisions stay
/// testable; seed with the object's key and its failure count.
pub fn jittered(base: Duration, seed: &impl std::hash::Hash) -> Duration {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    seed.hash(&mut h);
    base + base.mul_f64((h.finish() % 1000) as f64 / 5000.0)
}

#[cfg(test)]
mod tests;
