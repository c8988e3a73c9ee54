//! The local backend: token buckets in memory, exact across the worker
//! threads of one process (a bucket is updated under its shard's lock).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Decision, Limit};

const SHARDS: usize = 32;
/// Every this many takes, a shard drops the buckets that are full again.
const SWEEP_EVERY: u32 = 4096;

struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Default)]
struct Shard {
    /// By key, then by limit (keys are looked up borrowed: no allocation once a bucket exists).
    buckets: HashMap<String, Vec<(Limit, Bucket)>>,
    takes: u32,
}

/// In-memory buckets.
pub struct Buckets {
    shards: Vec<Mutex<Shard>>,
}

impl Default for Buckets {
    fn default() -> Self {
        Buckets {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

fn refill(b: &mut Bucket, limit: Limit, now: Instant) {
    let rate = f64::from(limit.tokens) / limit.period.as_secs_f64();
    let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
    b.tokens = (b.tokens + elapsed * rate).min(f64::from(limit.tokens));
    b.at = now;
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

impl Buckets {
    /// Takes `cost` tokens from `key`'s bucket.
    pub fn take(&self, key: &str, cost: u32, limit: Limit) -> Decision {
        let shard = &self.shards[xxhash_rust::xxh3::xxh3_64(key.as_bytes()) as usize % SHARDS];
        let mut shard = shard.lock().expect("quota shard lock");
        let now = Instant::now();
        shard.takes = shard.takes.wrapping_add(1);
        if shard.takes.is_multiple_of(SWEEP_EVERY) {
            shard.buckets.retain(|_, by_limit| {
                by_limit.retain_mut(|(l, b)| {
                    refill(b, *l, now);
                    b.tokens < f64::from(l.tokens)
                });
                !by_limit.is_empty()
            });
        }
        if !shard.buckets.contains_key(key) {
            shard.buckets.insert(key.to_string(), Vec::new());
        }
        let by_limit = shard.buckets.get_mut(key).expect("inserted above");
        let i = match by_limit.iter().position(|(l, _)| *l == limit) {
            Some(i) => i,
            None => {
                let full = Bucket {
                    tokens: f64::from(limit.tokens),
                    at: now,
                };
                by_limit.push((limit, full));
                by_limit.len() - 1
            }
        };
        let b = &mut by_limit[i].1;
        refill(b, limit, now);
        let rate = f64::from(limit.tokens) / limit.period.as_secs_f64();
        let cost_f = f64::from(cost);
        let allowed = b.tokens >= cost_f;
        if allowed {
            b.tokens -= cost_f;
        }
        Decision {
            allowed,
            limit: limit.tokens,
            remaining: b.tokens.floor() as u32,
            retry_after: if allowed {
                Duration::ZERO
            } else if cost > limit.tokens {
                Duration::MAX
            } else {
                secs((cost_f - b.tokens) / rate)
            },
            reset: secs((f64::from(limit.tokens) - b.tokens) / rate),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_admits_its_size_then_refills() {
        let b = Buckets::default();
        let limit = Limit {
            tokens: 3,
            period: Duration::from_millis(300),
        };
        let got: Vec<bool> = (0..4).map(|_| b.take("k", 1, limit).allowed).collect();
        assert_eq!(got, [true, true, true, false]);
        let d = b.take("k", 1, limit);
        assert!(!d.allowed && d.remaining == 0);
        assert!(d.retry_after > Duration::ZERO && d.retry_after <= Duration::from_millis(100));
        assert!(b.take("other", 1, limit).allowed, "keys are separate");
        std::thread::sleep(Duration::from_millis(120));
        assert!(b.take("k", 1, limit).allowed, "one token came back");
    }

    #[test]
    fn exact_across_threads() {
        let b = std::sync::Arc::new(Buckets::default());
        let limit = Limit {
            tokens: 1000,
            period: Duration::from_secs(3600),
        };
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    (0..500)
                        .filter(|_| b.take("shared", 1, limit).allowed)
                        .count()
                })
            })
            .collect();
        let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, 1000, "4000 takes, exactly the bucket's 1000 allowed");
    }
}
