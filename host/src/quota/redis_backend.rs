//! The redis backend: the same token buckets kept in Redis by one Lua script
//! (atomic, using the server's clock), so every weir that points at the same
//! Redis shares one budget per key. Connections are pooled; connecting,
//! reading and writing are bounded by the configured timeout.
//!
//! Components take through one multiplexed async connection: the request
//! waits for Redis's answer, the worker thread does not. proxy-wasm plugins
//! (whose host calls cannot wait) take through a pool of blocking
//! connections, on the calling thread. Both are bounded by the timeout;
//! when Redis is unreachable or slower, the failure policy decides.

use std::sync::Mutex;
use std::time::Duration;

use super::{Decision, Limit};

/// HASH {tokens, ts}: tokens refill at capacity/period, continuously.
/// Returns {allowed, remaining, retry_after_ms, reset_ms}.
const SCRIPT: &str = r"
local capacity = tonumber(ARGV[1])
local period_ms = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate = capacity / period_ms
local s = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(s[1])
local ts = tonumber(s[2])
if tokens == nil or ts == nil then
  tokens = capacity
  ts = now
end
if now > ts then
  tokens = math.min(capacity, tokens + (now - ts) * rate)
end
local allowed = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(math.max(now, ts)))
redis.call('PEXPIRE', KEYS[1], period_ms * 2 + 1000)
local retry = 0
if allowed == 0 then
  retry = math.ceil((cost - tokens) / rate)
end
return {allowed, math.floor(tokens), retry, math.ceil((capacity - tokens) / rate)}
";

/// Buckets in Redis.
pub struct Buckets {
    client: redis::Client,
    script: redis::Script,
    timeout: Duration,
    pool_size: usize,
    idle: Mutex<Vec<redis::Connection>>,
    /// The async connection, once made; dropped after an error so the next
    /// take connects again.
    shared: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
}

impl Buckets {
    /// A backend for the Redis at `url` (`redis://host:port/db`); nothing is
    /// connected yet. The error says what is wrong with the URL.
    pub fn new(url: &str, timeout: Duration, pool_size: usize) -> Result<Buckets, String> {
        let client =
            redis::Client::open(url).map_err(|e| format!("quota.redis_url {url:?}: {e}"))?;
        Ok(Buckets {
            client,
            script: redis::Script::new(SCRIPT),
            timeout,
            pool_size: pool_size.max(1),
            idle: Mutex::default(),
            shared: tokio::sync::Mutex::new(None),
        })
    }

    fn connection(&self) -> Result<redis::Connection, String> {
        if let Some(c) = self.idle.lock().expect("redis pool lock").pop() {
            return Ok(c);
        }
        let c = self
            .client
            .get_connection_with_timeout(self.timeout)
            .map_err(|e| format!("cannot connect to Redis: {e}"))?;
        c.set_read_timeout(Some(self.timeout))
            .and_then(|()| c.set_write_timeout(Some(self.timeout)))
            .map_err(|e| format!("cannot set Redis timeouts: {e}"))?;
        Ok(c)
    }

    /// The async connection, connecting when there is none.
    async fn shared_connection(&self) -> Result<redis::aio::MultiplexedConnection, String> {
        let mut slot = self.shared.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout);
        let c = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| format!("cannot connect to Redis: {e}"))?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Takes `cost` tokens from `key`'s bucket in Redis, waiting for the
    /// answer without holding the thread.
    pub async fn take_async(&self, key: &str, cost: u32, limit: Limit) -> Result<Decision, String> {
        let attempt = async {
            let mut con = self.shared_connection().await?;
            let period_ms = limit.period.as_millis().max(1) as u64;
            let r: Result<Vec<i64>, _> = self
                .script
                .key(format!("weir:quota:{key}:{}:{period_ms}", limit.tokens))
                .arg(limit.tokens)
                .arg(period_ms)
                .arg(cost)
                .invoke_async(&mut con)
                .await;
            r.map_err(|e| format!("Redis refused or timed out: {e}"))
        };
        let v = match tokio::time::timeout(self.timeout * 2, attempt).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                *self.shared.lock().await = None;
                return Err(e);
            }
            Err(_) => {
                *self.shared.lock().await = None;
                return Err(format!(
                    "Redis did not answer within {:?}",
                    self.timeout * 2
                ));
            }
        };
        decision(&v, limit)
    }

    /// Takes `cost` tokens from `key`'s bucket in Redis.
    pub fn take(&self, key: &str, cost: u32, limit: Limit) -> Result<Decision, String> {
        let mut con = self.connection()?;
        let period_ms = limit.period.as_millis().max(1) as u64;
        let r: Result<Vec<i64>, _> = self
            .script
            .key(format!("weir:quota:{key}:{}:{period_ms}", limit.tokens))
            .arg(limit.tokens)
            .arg(period_ms)
            .arg(cost)
            .invoke(&mut con);
        let v = r.map_err(|e| format!("Redis refused or timed out: {e}"))?;
        // A connection that answered goes back to the pool; a failed one is dropped.
        {
            let mut idle = self.idle.lock().expect("redis pool lock");
            if idle.len() < self.pool_size {
                idle.push(con);
            }
        }
        decision(&v, limit)
    }
}

/// The script's answer as a decision.
fn decision(v: &[i64], limit: Limit) -> Result<Decision, String> {
    let [allowed, remaining, retry_ms, reset_ms] = v[..] else {
        return Err(format!("unexpected answer from the quota script: {v:?}"));
    };
    let ms = |n: i64| Duration::from_millis(n.max(0) as u64);
    Ok(Decision {
        allowed: allowed == 1,
        limit: limit.tokens,
        remaining: remaining.max(0) as u32,
        retry_after: ms(retry_ms),
        reset: ms(reset_ms),
    })
}
