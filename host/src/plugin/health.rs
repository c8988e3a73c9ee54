//! What the host knows about one plugin's behaviour, across its versions:
//! callbacks run and their latency, traps, rate-limited trap logs, and
//! quarantine with backoff for a plugin that keeps trapping.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use std::sync::Arc;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// This many traps within [`TRAP_WINDOW`] quarantine a plugin.
pub const QUARANTINE_TRAPS: usize = 5;
/// The window [`QUARANTINE_TRAPS`] are counted in.
pub const TRAP_WINDOW: Duration = Duration::from_secs(10);
/// The first quarantine lasts this long; each one that follows soon after doubles it.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Quarantine never lasts longer than this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// At most one trap log line per plugin per this period; the others are counted.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// Latency buckets: bucket `i` holds durations up to `2^(i/4)` nanoseconds.
const BUCKETS: usize = 4 * 36;

/// The latency bucket of `took`: `ceil(4 * log2(ns))`, in integers (this
/// runs once per plugin callback, where a floating-point log2 costs more
/// than the bookkeeping around it).
fn bucket_of(took: Duration) -> usize {
    let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX).max(1);
    let octave = 63 - ns.leading_zeros() as u64;
    // ns / 2^octave in [1, 2) as a 1.32 fixed-point fraction (exact: ns < 2^64).
    let frac = ((u128::from(ns) << 32) >> octave) as u64;
    // 1, 2^(1/4), 2^(2/4), 2^(3/4) in 1.32 fixed point (rounded down; the
    // irrational ones are never hit exactly): how many of these bounds
    // the fraction is above is the quarter-octave, as ceil() counts it.
    const BOUNDS: [u64; 4] = [1 << 32, 5_107_605_667, 6_074_000_999, 7_223_245_205];
    let quarter = BOUNDS.iter().filter(|&&b| frac > b).count() as u64;
    ((4 * octave + quarter) as usize).min(BUCKETS - 1)
}

/// One plugin's callback latencies, recorded lock-free in quarter-octave
/// buckets: read by `/plugins` (p50, p99) and exported on `/metrics` as the
/// `weir_plugin_callback_duration_seconds` histogram, whose bounds are the
/// powers of two from 2^10 ns (1.024 µs) to 2^24 ns (16.8 ms), so that the
/// cumulative counts are exact sums of these buckets.
///
/// A plugin instance records into its own [`CallbackShard`], under the lock
/// it runs callbacks under, with plain loads and stores instead of atomic
/// read-modify-writes (two per callback fewer, on the request path); reads
/// add the shards up. A shard's counts fold into the histogram when its
/// instance goes, so they continue across reloads.
#[derive(Clone, Debug, Default)]
pub struct CallbackHistogram(Arc<Histogram>);

#[derive(Debug, Default)]
struct Histogram {
    /// Callbacks recorded without a shard, and the shards that are gone.
    folded: LatencyCells,
    /// The shards of live instances.
    live: Mutex<Vec<Arc<LatencyCells>>>,
}

#[derive(Debug)]
struct LatencyCells {
    sum_ns: AtomicU64,
    buckets: Box<[AtomicU64]>,
}

impl Default for LatencyCells {
    fn default() -> Self {
        LatencyCells {
            sum_ns: AtomicU64::new(0),
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

/// One instance's part of a [`CallbackHistogram`]. Only one thread may
/// record into a shard at a time (its instance's lock guarantees that);
/// any thread may read it.
#[derive(Debug)]
pub struct CallbackShard {
    cells: Arc<LatencyCells>,
    owner: CallbackHistogram,
}

impl CallbackShard {
    /// Records one callback that took `took`. The caller is the shard's only
    /// writer, so a relaxed load and store make an exact count.
    pub fn record(&self, took: Duration) {
        let bump = |cell: &AtomicU64, by: u64| {
            cell.store(
                cell.load(Ordering::Relaxed).wrapping_add(by),
                Ordering::Relaxed,
            );
        };
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        bump(&self.cells.sum_ns, ns);
        bump(&self.cells.buckets[bucket_of(took)], 1);
    }
}

impl Drop for CallbackShard {
    fn drop(&mut self) {
        let h = &self.owner.0;
        let mut live = h.live.lock().unwrap_or_else(|p| p.into_inner());
        // Folded and unlisted under the same lock readers take: nothing is
        // counted twice or missed.
        h.folded
            .sum_ns
            .fetch_add(self.cells.sum_ns.load(Ordering::Relaxed), Ordering::Relaxed);
        for (into, from) in h.folded.buckets.iter().zip(self.cells.buckets.iter()) {
            into.fetch_add(from.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        live.retain(|c| !Arc::ptr_eq(c, &self.cells));
    }
}

impl CallbackHistogram {
    /// A new shard for one instance to record into.
    pub fn shard(&self) -> CallbackShard {
        let cells = Arc::new(LatencyCells::default());
        self.0
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(cells.clone());
        CallbackShard {
            cells,
            owner: self.clone(),
        }
    }

    /// Per-bucket counts and the sum in nanoseconds, over every shard.
    fn totals(&self) -> (Vec<u64>, u64) {
        let h = &self.0;
        let live = h.live.lock().unwrap_or_else(|p| p.into_inner());
        let mut counts: Vec<u64> = h
            .folded
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let mut sum = h.folded.sum_ns.load(Ordering::Relaxed);
        for cells in live.iter() {
            for (c, b) in counts.iter_mut().zip(cells.buckets.iter()) {
                *c += b.load(Ordering::Relaxed);
            }
            sum = sum.wrapping_add(cells.sum_ns.load(Ordering::Relaxed));
        }
        (counts, sum)
    }

    fn counts(&self) -> Vec<u64> {
        self.totals().0
    }
}

/// The exported bounds: 2^FIRST_OCTAVE ns up to 2^LAST_OCTAVE ns.
const FIRST_OCTAVE: usize = 10;
const LAST_OCTAVE: usize = 24;

impl TypedMetric for CallbackHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for CallbackHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (counts, sum_ns) = self.totals();
        let mut buckets = Vec::with_capacity(LAST_OCTAVE - FIRST_OCTAVE + 2);
        // The encoder takes each bucket's own count and sums them into the
        // cumulative `le` series itself.
        let mut next = 0;
        for octave in FIRST_OCTAVE..=LAST_OCTAVE {
            // Bucket i holds durations up to 2^(i/4) ns: those up to
            // 2^octave are the buckets up to 4 * octave.
            let upto = 4 * octave + 1;
            buckets.push((
                (1u64 << octave) as f64 / 1e9,
                counts[next..upto].iter().sum(),
            ));
            next = upto;
        }
        buckets.push((f64::MAX, counts[next..].iter().sum()));
        let total: u64 = counts.iter().sum();
        let sum = sum_ns as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, total, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// One plugin's counters and trap history. Shared by every version of the
/// plugin the manager loads, so counts continue across reloads.
pub struct PluginHealth {
    name: String,
    traps: AtomicU64,
    latency: CallbackHistogram,
    started: Instant,
    /// Milliseconds since `started` until which the plugin is quarantined (0: not).
    quarantined_until: AtomicU64,
    trap_state: Mutex<TrapState>,
}

#[derive(Default)]
struct TrapState {
    recent: std::collections::VecDeque<Instant>,
    backoff: Option<Duration>,
    last_quarantine: Option<Instant>,
    last_log: Option<Instant>,
    suppressed: u64,
}

/// What to do about a trap that was just recorded.
#[derive(Debug, PartialEq, Eq)]
pub struct TrapVerdict {
    /// Log this trap (false: rate-limited, counted instead).
    pub log: bool,
    /// Trap lines suppressed since the last one logged.
    pub suppressed: u64,
    /// The plugin is now quarantined for this long.
    pub quarantine: Option<Duration>,
}

impl std::fmt::Debug for PluginHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHealth")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl PluginHealth {
    /// Fresh health for `name`, recording callback latencies into
    /// `histogram` (the plugin's `/metrics` series; `None`: a private one).
    pub fn new(name: &str, histogram: Option<CallbackHistogram>) -> PluginHealth {
        PluginHealth {
            name: name.to_string(),
            traps: AtomicU64::new(0),
            latency: histogram.unwrap_or_default(),
            started: Instant::now(),
            quarantined_until: AtomicU64::new(0),
            trap_state: Mutex::new(TrapState::default()),
        }
    }

    /// A shard of the callback histogram, for one plugin instance to record
    /// its callbacks into (see [`CallbackShard::record`]).
    pub fn callback_shard(&self) -> CallbackShard {
        self.latency.shard()
    }

    /// Callbacks run so far.
    pub fn callbacks(&self) -> u64 {
        // Every callback falls in one bucket: their sum is the count (one
        // atomic add less per callback than a counter of its own).
        self.latency.counts().iter().sum()
    }

    /// Traps so far.
    pub fn traps(&self) -> u64 {
        self.traps.load(Ordering::Relaxed)
    }

    /// The callback latency below which a fraction `q` of callbacks fall,
    /// to within one bucket (±19%); `None` before any callback.
    pub fn latency_quantile(&self, q: f64) -> Option<Duration> {
        let counts = self.latency.counts();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Duration::from_nanos(2f64.powf(i as f64 / 4.0) as u64));
            }
        }
        None
    }

    /// Records a trap at `now` and decides about logging and quarantine.
    pub fn record_trap(&self, now: Instant) -> TrapVerdict {
        self.traps.fetch_add(1, Ordering::Relaxed);
        let mut st = self.trap_state.lock().unwrap_or_else(|p| p.into_inner());
        let log = st
            .last_log
            .is_none_or(|t| now.duration_since(t) >= LOG_EVERY);
        let suppressed = if log {
            st.last_log = Some(now);
            std::mem::take(&mut st.suppressed)
        } else {
            st.suppressed += 1;
            0
        };
        st.recent.push_back(now);
        while st
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > TRAP_WINDOW)
        {
            st.recent.pop_front();
        }
        let mut quarantine = None;
        if st.recent.len() >= QUARANTINE_TRAPS {
            // Back to back quarantines (the next within MAX_BACKOFF of the last) double.
            let backoff = match (st.backoff, st.last_quarantine) {
                (Some(b), Some(at)) if now.duration_since(at) <= b + MAX_BACKOFF => {
                    (b * 2).min(MAX_BACKOFF)
                }
                _ => FIRST_BACKOFF,
            };
            st.backoff = Some(backoff);
            st.last_quarantine = Some(now);
            st.recent.clear();
            let until = now + backoff;
            let ms = until.saturating_duration_since(self.started).as_millis() as u64;
            self.quarantined_until.store(ms.max(1), Ordering::Release);
            quarantine = Some(backoff);
        }
        TrapVerdict {
            log,
            suppressed,
            quarantine,
        }
    }

    /// Records a trap now and logs it as the verdict says (rate-limited;
    /// the start of a quarantine always).
    pub fn trapped(&self, message: &str) {
        let verdict = self.record_trap(Instant::now());
        if verdict.log {
            tracing::warn!(plugin.name = %self.name, error = %message, traps_not_logged = verdict.suppressed, "plugin trapped; replacing its instance");
        }
        if let Some(backoff) = verdict.quarantine {
            tracing::error!(
                plugin.name = %self.name,
                backoff = ?backoff,
                "plugin keeps trapping; quarantined (its failure policy applies to requests until the backoff ends)"
            );
        }
    }

    /// Why a request must not call the plugin now: it is quarantined.
    pub fn quarantine_reason(&self) -> Option<String> {
        if self.quarantined_until.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.quarantined(Instant::now()).map(|left| {
            format!(
                "quarantined after repeated traps, for {:.1}s more",
                left.as_secs_f64()
            )
        })
    }

    /// How much longer the plugin stays quarantined at `now`, if it is.
    pub fn quarantined(&self, now: Instant) -> Option<Duration> {
        let until = self.quarantined_until.load(Ordering::Acquire);
        if until == 0 {
            return None;
        }
        let until = self.started + Duration::from_millis(until);
        let left = until.saturating_duration_since(now);
        (!left.is_zero()).then_some(left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_buckets_match_ceil_of_four_log2() {
        let float = |ns: u64| ((ns.max(1) as f64).log2() * 4.0).ceil() as usize;
        let mut ns = 1u64;
        while ns < 1 << 40 {
            for n in [
                ns,
                ns + 1,
                ns * 5 / 4,
                ns * 4 / 3,
                ns * 3 / 2,
                ns * 5 / 3,
                ns * 7 / 4,
            ] {
                assert_eq!(
                    bucket_of(Duration::from_nanos(n)),
                    float(n).min(BUCKETS - 1),
                    "{n} ns"
                );
            }
            ns = ns * 9 / 8 + 1;
        }
        assert_eq!(bucket_of(Duration::ZERO), 0);
        assert_eq!(bucket_of(Duration::from_secs(1 << 40)), BUCKETS - 1);
    }

    #[test]
    fn the_exported_histogram_sums_the_buckets_under_each_power_of_two() {
        let h = CallbackHistogram::default();
        let health = PluginHealth::new("p", Some(h.clone()));
        let shard = health.callback_shard();
        for ns in [500, 1024, 1025, 3000, 40_000_000] {
            shard.record(Duration::from_nanos(ns));
        }
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("cb", "callbacks", h);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        // 500 and 1024 ns are at most 2^10 ns; 1025 is not; 3000 is under
        // 2^12; 40 ms is only under +Inf.
        assert!(text.contains("cb_bucket{le=\"0.000001024\"} 2"), "{text}");
        assert!(text.contains("cb_bucket{le=\"0.000002048\"} 3"), "{text}");
        assert!(text.contains("cb_bucket{le=\"0.000004096\"} 4"), "{text}");
        assert!(text.contains("cb_bucket{le=\"0.016777216\"} 4"), "{text}");
        assert!(text.contains("cb_bucket{le=\"+Inf\"} 5"), "{text}");
        assert!(text.contains("cb_count 5"), "{text}");
        assert!(text.contains("cb_sum 0.040005549"), "{text}");
    }

    #[test]
    fn traps_quarantine_with_doubling_backoff_and_rate_limited_logs() {
        let h = PluginHealth::new("p", None);
        let t0 = Instant::now();
        let first = h.record_trap(t0);
        assert_eq!(
            first,
            TrapVerdict {
                log: true,
                suppressed: 0,
                quarantine: None
            }
        );
        for i in 1..4 {
            let v = h.record_trap(t0 + Duration::from_millis(i * 10));
            assert!(!v.log && v.quarantine.is_none());
        }
        let fifth = h.record_trap(t0 + Duration::from_millis(50));
        assert_eq!(fifth.quarantine, Some(FIRST_BACKOFF));
        assert!(h.quarantined(t0 + Duration::from_millis(100)).is_some());
        assert!(h.quarantined(t0 + Duration::from_secs(2)).is_none());
        // Out of quarantine, five more traps soon after: twice as long.
        let t1 = t0 + Duration::from_secs(2);
        let mut last = None;
        for i in 0..5 {
            last = h.record_trap(t1 + Duration::from_millis(i)).quarantine;
        }
        assert_eq!(last, Some(FIRST_BACKOFF * 2));
        let logged = h.record_trap(t1 + Duration::from_secs(1));
        assert!(logged.log);
        assert_eq!(logged.suppressed, 4, "the traps not logged are counted");
        assert_eq!(h.traps(), 11);
    }

    #[test]
    fn spread_out_traps_never_quarantine() {
        let h = PluginHealth::new("p", None);
        let t0 = Instant::now();
        for i in 0..20 {
            let v = h.record_trap(t0 + Duration::from_secs(3 * i));
            assert!(v.quarantine.is_none());
        }
    }

    #[test]
    fn latency_quantiles_come_from_the_buckets() {
        let h = PluginHealth::new("p", None);
        assert_eq!(h.latency_quantile(0.5), None);
        let shard = h.callback_shard();
        for _ in 0..98 {
            shard.record(Duration::from_micros(2));
        }
        shard.record(Duration::from_millis(3));
        shard.record(Duration::from_millis(3));
        let p50 = h.latency_quantile(0.5).unwrap();
        assert!(
            p50 >= Duration::from_micros(2) && p50 < Duration::from_nanos(2400),
            "{p50:?}"
        );
        let p99 = h.latency_quantile(0.99).unwrap();
        assert!(
            p99 >= Duration::from_millis(3) && p99 < Duration::from_micros(3600),
            "{p99:?}"
        );
        assert_eq!(h.callbacks(), 100);
    }

    #[test]
    fn shards_add_up_and_fold_into_the_histogram_when_their_instance_goes() {
        let hist = CallbackHistogram::default();
        let h = PluginHealth::new("p", Some(hist.clone()));
        let (a, b) = (h.callback_shard(), h.callback_shard());
        // Two instances on two threads, each the only writer of its shard.
        std::thread::scope(|s| {
            s.spawn(|| (0..1000).for_each(|_| a.record(Duration::from_micros(2))));
            s.spawn(|| (0..500).for_each(|_| b.record(Duration::from_millis(3))));
        });
        a.record(Duration::from_micros(2));
        assert_eq!(h.callbacks(), 1501);
        let text = |hist: &CallbackHistogram| {
            let mut registry = prometheus_client::registry::Registry::default();
            registry.register("cb", "callbacks", hist.clone());
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
            out
        };
        let before = text(&hist);
        assert!(before.contains("cb_count 1501"), "{before}");
        assert!(before.contains("cb_sum 1.502002"), "{before}");
        // The instance behind `b` is replaced: its counts stay.
        drop(b);
        assert_eq!(h.callbacks(), 1501);
        assert_eq!(text(&hist), before);
        assert_eq!(
            hist.0.live.lock().unwrap().len(),
            1,
            "the dropped shard is unlisted"
        );
        let p99 = h.latency_quantile(0.99).unwrap();
        assert!(p99 >= Duration::from_millis(3), "{p99:?}");
    }
}
