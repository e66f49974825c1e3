//! Crash-injection points for the crash tests. With the `failpoints` feature (turned on
//! only by the tests' dev-dependencies) and `FAILPOINTS="<point>=return"` in the
//! environment, the process aborts at `<point>`, as a crash would; `sleep(ms)` and
//! `pause` hold it there. Without the feature both functions compile to nothing.
//!
//! Points are named `<controller>::<where>`, e.g. `secret-rotation::after-SetTarget`
//! or `pipeline::after-create-job`; each controller's module documentation lists its
//! own.

/// Reads `FAILPOINTS` (`name=actions;name=actions`) once per process and configures the
/// points. A malformed entry is logged and ignored.
pub fn from_env() {
    #[cfg(feature = "failpoints")]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            if let Ok(spec) = std::env::var("FAILPOINTS") {
                for part in spec.split(';').filter(|p| !p.trim().is_empty()) {
                    if let Some((name, actions)) = part.split_once('=')
                        && let Err(e) = fail::cfg(name.trim(), actions.trim())
                    {
                        tracing::warn!(failpoint = name, error = %e, "bad failpoint");
                    }
                }
            }
        });
    }
}

/// A crash point after a side effect: aborts the process when configured to `return`.
pub fn crash_point(_name: &str) {
    #[cfg(feature = "failpoints")]
    {
        let _: Option<()> = fail::eval(_name, |_| {
            tracing::warn!(failpoint = _name, "failpoint: aborting");
            std::process::abort()
        });
    }
}
