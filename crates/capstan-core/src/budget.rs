//! Request budgets: one token bucket per (scope, family), shared by every controller of
//! the process, served fairly between namespaces.
//!
//! A *scope* is what an outside system throttles on (for AWS: an account and region,
//! see `capstan_aws::budget`); a *family* is a group of calls that system throttles
//! together (`ecs-read`, `ecs-write`, ...). Each (scope, family) pair has one bucket
//! with a sustained rate and a burst ([`Rate`]). A caller takes a token with
//! [`Budgets::acquire`]: at once when the bucket has one and nobody waits, else it
//! queues. Queues are per namespace (the one [`in_namespace`] set around the caller)
//! and are served round-robin, one request per namespace in turn, so a namespace with
//! 1,000 objects waits behind itself and not in front of another namespace's single
//! object.
//!
//! A family without a configured rate is not limited. Nothing here reads an object's
//! name: the metrics carry the family only.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::oneshot;
use tokio::time::Instant;

tokio::task_local! {
    static NAMESPACE: String;
}

/// Runs `f` with `namespace` as the namespace its budgeted calls are queued under.
pub async fn in_namespace<F: Future>(namespace: impl Into<String>, f: F) -> F::Output {
    NAMESPACE.scope(namespace.into(), f).await
}

/// The namespace set by the innermost [`in_namespace`] around the current task, or ""
/// (one shared queue for calls made on nobody's behalf).
pub fn current_namespace() -> String {
    NAMESPACE.try_with(Clone::clone).unwrap_or_default()
}

/// A sustained rate and a burst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens added per second (> 0).
    pub per_second: f64,
    /// The most tokens the bucket holds (≥ 1): how many calls may go at once after a
    /// quiet period.
    pub burst: u32,
}

impl Rate {
    /// Parses `RATE` or `RATE/BURST` (`5`, `0.5`, `20/40`); the burst defaults to the
    /// rate rounded up.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (rate, burst) = match s.split_once('/') {
            Some((r, b)) => (r, Some(b)),
            None => (s, None),
        };
        let per_second: f64 = rate
            .trim()
            .parse()
            .map_err(|_| format!("{rate:?} is not a number of requests per second"))?;
        if !(per_second.is_finite() && per_second > 0.0) {
            return Err(format!("the rate must be greater than 0, not {rate:?}"));
        }
        let burst = match burst {
            Some(b) => b
                .trim()
                .parse::<u32>()
                .map_err(|_| format!("{b:?} is not a whole number of requests"))?,
            None => per_second.ceil() as u32,
        };
        if burst == 0 {
            return Err("the burst must be at least 1".into());
        }
        Ok(Self { per_second, burst })
    }
}

/// Labels of the budget metrics: the family only (no account, namespace or object).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FamilyLabels {
    /// The call family, e.g. `ecs-read`.
    pub family: String,
}

/// The budget metrics, under `capstan_aws_budget_`.
#[derive(Clone, Debug, Default)]
pub struct BudgetMetrics {
    /// Requests that took a token.
    pub requests: Family<FamilyLabels, Counter>,
    /// Requests that had to queue for their token.
    pub delayed: Family<FamilyLabels, Counter>,
    /// Requests queued now.
    pub waiting: Family<FamilyLabels, Gauge>,
    /// Seconds spent queued, summed.
    pub wait_seconds: Family<FamilyLabels, Counter<f64>>,
}

impl BudgetMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let sub = registry.sub_registry_with_prefix("aws_budget");
        sub.register(
            "requests",
            "AWS requests that took a token of the request budget, by call family",
            m.requests.clone(),
        );
        sub.register(
            "delayed_requests",
            "AWS requests that waited for a token of the request budget, by call family",
            m.delayed.clone(),
        );
        sub.register(
            "waiting_requests",
            "AWS requests waiting for a token of the request budget now, by call family",
            m.waiting.clone(),
        );
        sub.register(
            "wait_seconds",
            "Seconds AWS requests spent waiting for the request budget, by call family",
            m.wait_seconds.clone(),
        );
        m
    }
}

/// Every bucket of the process.
#[derive(Debug, Default)]
pub struct Budgets {
    rates: BTreeMap<String, Rate>,
    buckets: Mutex<HashMap<(String, String), Arc<Bucket>>>,
    metrics: BudgetMetrics,
}

impl Budgets {
    /// Budgets with these rates per family; families not listed are not limited.
    pub fn new(rates: BTreeMap<String, Rate>, metrics: BudgetMetrics) -> Self {
        Self {
            rates,
            buckets: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// No limit on anything (tests and benches that do not exercise budgets).
    pub fn unlimited() -> Self {
        Self::default()
    }

    /// The rate of `family`, if it is limited.
    pub fn rate(&self, family: &str) -> Option<Rate> {
        self.rates.get(family).copied()
    }

    /// The configured rates.
    pub fn rates(&self) -> &BTreeMap<String, Rate> {
        &self.rates
    }

    /// Waits for a token of `family` in `scope`, queued under [`current_namespace`].
    pub async fn acquire(&self, scope: &str, family: &str) {
        let Some(rate) = self.rate(family) else {
            return;
        };
        let labels = FamilyLabels {
            family: family.to_owned(),
        };
        self.metrics.requests.get_or_create(&labels).inc();
        let bucket = self
            .buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((scope.to_owned(), family.to_owned()))
            .or_insert_with(|| Arc::new(Bucket::new(rate)))
            .clone();
        let Some(rx) = bucket.take_or_queue(current_namespace()) else {
            return;
        };
        self.metrics.delayed.get_or_create(&labels).inc();
        let waiting = self.metrics.waiting.get_or_create(&labels).clone();
        waiting.inc();
        let started = Instant::now();
        // The dispatcher only drops a sender after sending on it; an error would mean the
        // runtime is shutting down, and then going ahead is as good as anything.
        let _ = rx.await;
        waiting.dec();
        self.metrics
            .wait_seconds
            .get_or_create(&labels)
            .inc_by(started.elapsed().as_secs_f64());
    }
}

/// One token bucket with per-namespace queues.
#[derive(Debug)]
struct Bucket {
    rate: Rate,
    state: Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    tokens: f64,
    refilled: Instant,
    queues: BTreeMap<String, VecDeque<oneshot::Sender<()>>>,
    /// The namespace served last; the next one after it goes next.
    last_served: Option<String>,
    dispatching: bool,
}

impl BucketState {
    fn refill(&mut self, rate: Rate) {
        let now = Instant::now();
        let added = now.duration_since(self.refilled).as_secs_f64() * rate.per_second;
        self.tokens = (self.tokens + added).min(f64::from(rate.burst));
        self.refilled = now;
    }

    /// The next namespace in round-robin order after the one served last.
    fn next_namespace(&self) -> Option<String> {
        let after = self.last_served.as_ref().and_then(|last| {
            self.queues
                .range::<String, _>((std::ops::Bound::Excluded(last), std::ops::Bound::Unbounded))
                .next()
        });
        after
            .or_else(|| self.queues.iter().next())
            .map(|(ns, _)| ns.clone())
    }
}

impl Bucket {
    fn new(rate: Rate) -> Self {
        Self {
            rate,
            state: Mutex::new(BucketState {
                tokens: f64::from(rate.burst),
                refilled: Instant::now(),
                queues: BTreeMap::new(),
                last_served: None,
                dispatching: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BucketState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a token now (`None`) or queues the caller (`Some(receiver)`).
    fn take_or_queue(self: &Arc<Self>, namespace: String) -> Option<oneshot::Receiver<()>> {
        let mut st = self.lock();
        st.refill(self.rate);
        if st.queues.is_empty() && st.tokens >= 1.0 {
            st.tokens -= 1.0;
            return None;
        }
        let (tx, rx) = oneshot::channel();
        st.queues.entry(namespace).or_default().push_back(tx);
        if !st.dispatching {
            st.dispatching = true;
            tokio::spawn(self.clone().dispatch());
        }
        Some(rx)
    }

    /// Hands out tokens to the queued callers, one namespace after another, until no
    /// one waits.
    async fn dispatch(self: Arc<Self>) {
        loop {
            let wait = {
                let mut st = self.lock();
                st.refill(self.rate);
                while st.tokens >= 1.0 {
                    let Some(ns) = st.next_namespace() else {
                        break;
                    };
                    let sender = st.queues.get_mut(&ns).and_then(VecDeque::pop_front);
                    if st.queues.get(&ns).is_some_and(VecDeque::is_empty) {
                        st.queues.remove(&ns);
                    }
                    st.last_served = Some(ns);
                    // A caller that gave up (its future was dropped) costs no token.
                    if sender.is_some_and(|s| s.send(()).is_ok()) {
                        st.tokens -= 1.0;
                    }
                }
                if st.queues.is_empty() {
                    st.dispatching = false;
                    return;
                }
                Duration::from_secs_f64((1.0 - st.tokens).max(0.0) / self.rate.per_second)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budgets(per_second: f64, burst: u32) -> Arc<Budgets> {
        Arc::new(Budgets::new(
            BTreeMap::from([("f".to_owned(), Rate { per_second, burst })]),
            BudgetMetrics::default(),
        ))
    }

    #[test]
    fn rates_parse_with_and_without_burst() {
        assert_eq!(
            Rate::parse("5"),
            Ok(Rate {
                per_second: 5.0,
                burst: 5
            })
        );
        assert_eq!(
            Rate::parse("0.5/3"),
            Ok(Rate {
                per_second: 0.5,
                burst: 3
            })
        );
        for bad in ["0", "-1", "x", "1/0", "1/x", "NaN", "inf"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }

    /// Past the burst, calls go at the sustained rate, whoever makes them.
    #[tokio::test(start_paused = true)]
    async fn calls_past_the_burst_go_at_the_rate() {
        let b = budgets(10.0, 2);
        let start = Instant::now();
        let calls = (0..12).map(|_| {
            let b = b.clone();
            async move { b.acquire("acct/eu-west-1", "f").await }
        });
        futures::future::join_all(calls).await;
        // 2 at once, then 10 more at 10/s.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(990), "{took:?}");
        assert!(took < Duration::from_millis(1100), "{took:?}");
    }

    /// A family without a rate and a different scope do not wait on a busy bucket.
    #[tokio::test(start_paused = true)]
    async fn scopes_and_unlimited_families_are_separate() {
        let b = budgets(1.0, 1);
        b.acquire("a", "f").await;
        let start = Instant::now();
        b.acquire("b", "f").await;
        b.acquire("a", "other").await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        b.acquire("a", "f").await;
        assert!(start.elapsed() >= Duration::from_millis(999));
    }

    /// A namespace with a long queue does not delay another namespace's single call
    /// by more than one turn.
    #[tokio::test(start_paused = true)]
    async fn namespaces_are_served_in_turn() {
        let b = budgets(10.0, 1);
        b.acquire("s", "f").await; // empty the bucket
        let start = Instant::now();
        let noisy: Vec<_> = (0..50)
            .map(|_| {
                let b = b.clone();
                tokio::spawn(in_namespace("noisy", async move {
                    b.acquire("s", "f").await;
                }))
            })
            .collect();
        tokio::task::yield_now().await;
        let quiet = {
            let b = b.clone();
            tokio::spawn(in_namespace("quiet", async move {
                b.acquire("s", "f").await;
                Instant::now()
            }))
        };
        let served = quiet.await.expect("quiet");
        // One noisy call may go first; the quiet one goes at most two tokens in.
        assert!(
            served - start <= Duration::from_millis(210),
            "{:?}",
            served - start
        );
        for n in noisy {
            n.await.expect("noisy");
        }
        assert!(start.elapsed() >= Duration::from_millis(5000));
    }

    /// A caller that gives up leaves the queue without taking a token.
    #[tokio::test(start_paused = true)]
    async fn a_dropped_waiter_costs_nothing() {
        let b = budgets(1.0, 1);
        b.acquire("s", "f").await;
        let gave_up = tokio::time::timeout(Duration::from_millis(100), b.acquire("s", "f")).await;
        assert!(gave_up.is_err());
        let start = Instant::now();
        b.acquire("s", "f").await;
        // The token that refills at 1 s goes to this caller, not the one that left.
        assert!(
            start.elapsed() <= Duration::from_millis(900),
            "{:?}",
            start.elapsed()
        );
    }
}
