//! One config generation, built whole and swapped in with one pointer store:
//! its routes, clusters and metric handles. (The filter chain is swapped on
//! its own by the plugin manager.) Requests in flight
//! keep the generation they started with.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, ConfigError, ConfigErrors, RouteAction};
use crate::router::Router;
use crate::telemetry::{Metrics, RouteStats};
use crate::upstream::Cluster;

/// Everything a request needs from the config.
pub struct Runtime {
    /// The validated config.
    pub config: Arc<Config>,
    /// Its routes.
    pub router: Router,
    /// Its clusters by name.
    pub clusters: HashMap<String, Arc<Cluster>>,
    /// Metric handles per route, by route index; the last is for unrouted requests.
    pub route_stats: Vec<RouteStats>,
    /// Route names by route index, shared with every request's filters
    /// (no copy per request).
    pub route_names: Vec<Arc<str>>,
    /// The cluster of each route that forwards to one (`xds.cluster_name`
    /// before the log phase), by route index.
    pub route_clusters: Vec<Option<Arc<str>>>,
    /// 1 for the first config, +1 per reload.
    pub generation: u64,
}

impl Runtime {
    /// Builds a generation. Clusters whose config did not change since
    /// `previous` are kept, with their connection pools.
    pub async fn build(
        config: Config,
        previous: Option<&Runtime>,
        metrics: &Arc<Metrics>,
    ) -> Result<Runtime, ConfigErrors> {
        let mut clusters = HashMap::new();
        let mut errors = Vec::new();
        for (i, c) in config.clusters.iter().enumerate() {
            let kept = previous
                .and_then(|p| p.clusters.get(&c.name))
                .filter(|old| old.config.raw == c.raw);
            let cluster = match kept {
                Some(old) => old.clone(),
                None => match Cluster::start(c.clone(), metrics).await {
                    Ok(cl) => cl,
                    Err(e) => {
                        errors.push(ConfigError {
                            path: format!("cluster[{i}].tls"),
                            location: None,
                            message: e,
                        });
                        continue;
                    }
                },
            };
            clusters.insert(c.name.clone(), cluster);
        }
        if !errors.is_empty() {
            return Err(ConfigErrors {
                origin: config.origin.clone(),
                errors,
            });
        }
        let mut route_stats: Vec<RouteStats> = config
            .routes
            .iter()
            .map(|r| {
                let targets: Vec<&str> = match &r.action {
                    RouteAction::Cluster(c) => vec![c.as_str()],
                    RouteAction::Weighted { clusters, .. } => {
                        clusters.iter().map(|c| c.0.as_str()).collect()
                    }
                    RouteAction::Direct { .. }
                    | RouteAction::Redirect { .. }
                    | RouteAction::Echo => vec![],
                };
                metrics.route_stats(&r.name, targets.into_iter())
            })
            .collect();
        route_stats.push(metrics.route_stats("", std::iter::empty()));
        let generation = previous.map_or(1, |p| p.generation + 1);
        metrics.config_generation.set(generation as i64);
        let route_clusters = config
            .routes
            .iter()
            .map(|r| match &r.action {
                crate::config::RouteAction::Cluster(c) => clusters.get(c).map(|c| c.name.clone()),
                _ => None,
            })
            .collect();
        Ok(Runtime {
            route_clusters,
            route_names: config
                .routes
                .iter()
                .map(|r| r.name.as_str().into())
                .collect(),
            router: Router::new(config.routes.clone()),
            config: Arc::new(config),
            clusters,
            route_stats,
            generation,
        })
    }
}
