//! Plugin metrics with labels of the plugin's choosing (the telemetry
//! plugin's Istio-style request metrics, for one): one Prometheus family per
//! (plugin, metric), registered on first use as `weir_<plugin>_<name>`, each
//! holding at most [`MAX_LABEL_SETS`] label sets so that a plugin cannot
//! grow /metrics without bound.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

/// Label sets one labeled metric may hold.
pub const MAX_LABEL_SETS: usize = 2000;

type Labels = Vec<(String, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn buckets() -> Histogram {
    // 1 to about 10^6, in the metric's own unit.
    Histogram::new(exponential_buckets(1.0, 2.0, 21))
}

#[derive(Default)]
struct State {
    counters: HashMap<String, Family<Labels, Counter>>,
    histograms: HashMap<String, HistogramFamily>,
    seen: HashMap<String, HashSet<Labels>>,
}

/// The labeled plugin metrics of a process.
#[derive(Default)]
pub struct Labeled {
    state: Mutex<State>,
    dropped: Family<Vec<(String, String)>, Counter>,
}

/// `weir_<plugin>_<name>` with anything but `[a-zA-Z0-9_]` made `_` (without the `weir_`: the registry adds it).
fn metric_name(plugin: &str, name: &str) -> String {
    sanitize(&format!("{plugin}_{name}"))
}

/// Anything but `[a-zA-Z0-9_]` made `_`, as Prometheus names allow.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn clean(labels: Labels) -> Labels {
    labels.into_iter().map(|(k, v)| (sanitize(&k), v)).collect()
}

impl Labeled {
    /// Registers the dropped-label-sets counter.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "plugin_metric_label_sets_dropped",
            "Label sets a plugin metric could not take (it holds 2,000 already), by plugin and metric",
            self.dropped.clone(),
        );
    }

    /// Whether this label set may be recorded (it is known, or there is room).
    fn admit(&self, st: &mut State, key: &str, plugin: &str, name: &str, labels: &Labels) -> bool {
        let seen = st.seen.entry(key.to_string()).or_default();
        if seen.contains(labels) {
            return true;
        }
        if seen.len() >= MAX_LABEL_SETS {
            self.dropped
                .get_or_create(&vec![
                    ("plugin".to_string(), plugin.to_string()),
                    ("metric".to_string(), name.to_string()),
                ])
                .inc();
            return false;
        }
        seen.insert(labels.clone());
        true
    }

    /// The family of metric `name` of `plugin`, made and registered on first
    /// use; `None` when `labels` would be one label set too many.
    #[allow(clippy::too_many_arguments)] // one metric's parts, passed once
    fn family<F: Metric + Clone>(
        &self,
        registry: &Mutex<Registry>,
        plugin: &str,
        name: &str,
        labels: &Labels,
        pick: impl FnOnce(&mut State) -> &mut HashMap<String, F>,
        make: impl FnOnce() -> F,
    ) -> Option<F> {
        let key = metric_name(plugin, name);
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !self.admit(&mut st, &key, plugin, name, labels) {
            return None;
        }
        let family = pick(&mut st).entry(key.clone()).or_insert_with(|| {
            let f = make();
            registry.lock().unwrap_or_else(|p| p.into_inner()).register(
                key.as_str(),
                format!("{name}, from plugin {plugin}"),
                f.clone(),
            );
            f
        });
        Some(family.clone())
    }

    /// The counter `name` of `plugin` for `labels` (made on first use), to
    /// add to directly: callers keep it for the next time they see the same
    /// labels. `None` when the metric holds [`MAX_LABEL_SETS`] label sets
    /// already (counted as dropped).
    pub fn counter(
        &self,
        registry: &Mutex<Registry>,
        plugin: &str,
        name: &str,
        labels: Labels,
    ) -> Option<Counter> {
        let labels = clean(labels);
        let family = self.family(
            registry,
            plugin,
            name,
            &labels,
            |st| &mut st.counters,
            Family::default,
        )?;
        Some(family.get_or_create(&labels).clone())
    }

    /// The histogram `name` of `plugin` for `labels`, as [`Labeled::counter`].
    pub fn histogram(
        &self,
        registry: &Mutex<Registry>,
        plugin: &str,
        name: &str,
        labels: Labels,
    ) -> Option<Histogram> {
        let labels = clean(labels);
        let make = || -> HistogramFamily { Family::new_with_constructor(buckets) };
        let family = self.family(
            registry,
            plugin,
            name,
            &labels,
            |st| &mut st.histograms,
            make,
        )?;
        Some(family.get_or_create(&labels).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_register_once_and_label_sets_are_capped() {
        let registry = Mutex::new(Registry::with_prefix("weir"));
        let l = Labeled::default();
        l.register(&mut registry.lock().unwrap());
        let counter = |code: String| {
            l.counter(
                &registry,
                "tele-metry",
                "requests",
                vec![("code".into(), code)],
            )
        };
        for i in 0..(MAX_LABEL_SETS + 5) {
            let c = counter(i.to_string());
            assert_eq!(c.is_some(), i < MAX_LABEL_SETS, "label set {i}");
            if let Some(c) = c {
                c.inc();
            }
        }
        // A handle taken again is the same counter.
        counter("0".into()).unwrap().inc_by(2);
        l.histogram(
            &registry,
            "tele-metry",
            "duration_ms",
            vec![("route".into(), "r".into())],
        )
        .unwrap()
        .observe(3.0);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry.lock().unwrap()).unwrap();
        assert!(
            out.contains("weir_tele_metry_requests_total{code=\"0\"} 3"),
            "{out}"
        );
        assert!(
            !out.contains(&format!("code=\"{}\"", MAX_LABEL_SETS + 1)),
            "capped"
        );
        assert!(out.contains("weir_plugin_metric_label_sets_dropped_total{plugin=\"tele-metry\",metric=\"requests\"} 5"), "{}", &out[..out.len().min(3000)]);
        assert!(
            out.contains("weir_tele_metry_duration_ms_count{route=\"r\"} 1"),
            "{out}"
        );
    }
}
