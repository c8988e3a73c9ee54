//! Load balancing: which endpoint of a cluster takes a request.
//!
//! The endpoint list and the hash tables built from it live together in one
//! [`EndpointSet`], swapped as a whole when DNS changes the endpoints, so a
//! request never sees a ring built for another list.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rand::Rng;
use xxhash_rust::xxh3::xxh3_64;

use crate::config::LbPolicy;

/// One upstream address.
#[derive(Debug)]
pub struct Endpoint {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The host as written in the config (a DNS name or an IP), used for TLS SNI.
    pub host: String,
    /// `ip:port` as a URI authority.
    pub authority: http::uri::Authority,
    /// Requests in flight to this endpoint.
    pub active: AtomicUsize,
}

impl Endpoint {
    /// An endpoint at `addr`, named `host` in the config.
    pub fn new(addr: SocketAddr, host: &str) -> Endpoint {
        let authority = addr
            .to_string()
            .parse()
            .expect("a socket address is a valid authority");
        Endpoint {
            addr,
            host: host.to_string(),
            authority,
            active: AtomicUsize::new(0),
        }
    }
}

/// Keeps an endpoint's in-flight count up while it lives.
pub struct ActiveGuard(Arc<Endpoint>);

impl ActiveGuard {
    /// Counts a request on `ep` until the guard drops.
    pub fn new(ep: Arc<Endpoint>) -> ActiveGuard {
        ep.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(ep)
    }

    /// The endpoint's address.
    pub fn addr(&self) -> SocketAddr {
        self.0.addr
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

const RING_POINTS_PER_ENDPOINT: usize = 160;
const MAGLEV_TABLE_SIZE: usize = 65537;

/// A cluster's endpoints and the hash tables over them.
#[derive(Debug, Default)]
pub struct EndpointSet {
    /// The endpoints, in a stable order.
    pub endpoints: Vec<Arc<Endpoint>>,
    ring: Vec<(u64, u32)>,
    maglev: Vec<u32>,
}

impl EndpointSet {
    /// Builds the set and whatever table `policy` needs.
    pub fn new(endpoints: Vec<Arc<Endpoint>>, policy: LbPolicy) -> EndpointSet {
        let mut set = EndpointSet {
            endpoints,
            ring: Vec::new(),
            maglev: Vec::new(),
        };
        match policy {
            LbPolicy::RingHash => set.ring = build_ring(&set.endpoints),
            LbPolicy::Maglev => set.maglev = build_maglev(&set.endpoints),
            LbPolicy::RoundRobin | LbPolicy::LeastRequest | LbPolicy::Random => {}
        }
        set
    }

    /// The addresses, to tell whether a DNS refresh changed anything.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.endpoints.iter().map(|e| e.addr).collect()
    }
}

/// Picks endpoints by a policy.
#[derive(Debug)]
pub struct Balancer {
    policy: LbPolicy,
    next: AtomicUsize,
}

impl Balancer {
    /// A balancer for `policy`.
    pub fn new(policy: LbPolicy) -> Balancer {
        Balancer {
            policy,
            next: AtomicUsize::new(0),
        }
    }

    /// Picks an endpoint; `hash` is the request's hash key for hash policies
    /// (without one they pick at random).
    pub fn pick(&self, set: &EndpointSet, hash: Option<u64>) -> Option<Arc<Endpoint>> {
        let eps = &set.endpoints;
        let n = eps.len();
        if n <= 1 {
            return eps.first().cloned();
        }
        let i = match self.policy {
            LbPolicy::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % n,
            LbPolicy::Random => rand::rng().random_range(0..n),
            LbPolicy::LeastRequest => {
                let mut rng = rand::rng();
                let a = rng.random_range(0..n);
                let b = (a + rng.random_range(1..n)) % n;
                let load = |i: usize| eps[i].active.load(Ordering::Relaxed);
                if load(b) < load(a) { b } else { a }
            }
            LbPolicy::RingHash => {
                let h = hash.unwrap_or_else(|| rand::rng().random());
                let pos = set.ring.partition_point(|p| p.0 < h);
                set.ring[pos % set.ring.len()].1 as usize
            }
            LbPolicy::Maglev => {
                let h = hash.unwrap_or_else(|| rand::rng().random());
                set.maglev[(h % set.maglev.len() as u64) as usize] as usize
            }
        };
        Some(eps[i].clone())
    }
}

fn build_ring(eps: &[Arc<Endpoint>]) -> Vec<(u64, u32)> {
    let mut ring = Vec::with_capacity(eps.len() * RING_POINTS_PER_ENDPOINT);
    for (i, ep) in eps.iter().enumerate() {
        for k in 0..RING_POINTS_PER_ENDPOINT {
            ring.push((xxh3_64(format!("{}_{k}", ep.addr).as_bytes()), i as u32));
        }
    }
    ring.sort_unstable();
    ring
}

/// Maglev's table population (Eisenbud et al., NSDI 2016): each endpoint takes
/// slots in its own permutation order, in turns, until the table is full.
fn build_maglev(eps: &[Arc<Endpoint>]) -> Vec<u32> {
    let m = MAGLEV_TABLE_SIZE as u64;
    let prefs: Vec<(u64, u64)> = eps
        .iter()
        .map(|ep| {
            let name = ep.addr.to_string();
            let offset = xxh3_64(name.as_bytes()) % m;
            let skip = xxh3_64(format!("{name}#skip").as_bytes()) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; eps.len()];
    let mut table = vec![u32::MAX; MAGLEV_TABLE_SIZE];
    let mut filled = 0;
    'fill: loop {
        for (i, (offset, skip)) in prefs.iter().enumerate() {
            let mut slot = (offset + next[i] * skip) % m;
            while table[slot as usize] != u32::MAX {
                next[i] += 1;
                slot = (offset + next[i] * skip) % m;
            }
            table[slot as usize] = i as u32;
            next[i] += 1;
            filled += 1;
            if filled == MAGLEV_TABLE_SIZE {
                break 'fill;
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: u16, policy: LbPolicy) -> EndpointSet {
        let eps = (0..n)
            .map(|i| {
                Arc::new(Endpoint::new(
                    SocketAddr::from(([127, 0, 0, 1], 9000 + i)),
                    "127.0.0.1",
                ))
            })
            .collect();
        EndpointSet::new(eps, policy)
    }

    #[test]
    fn round_robin_takes_turns() {
        let s = set(3, LbPolicy::RoundRobin);
        let b = Balancer::new(LbPolicy::RoundRobin);
        let ports: Vec<u16> = (0..6)
            .map(|_| b.pick(&s, None).unwrap().addr.port())
            .collect();
        assert_eq!(ports, [9000, 9001, 9002, 9000, 9001, 9002]);
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        let s = set(2, LbPolicy::LeastRequest);
        let _busy = ActiveGuard::new(s.endpoints[0].clone());
        let b = Balancer::new(LbPolicy::LeastRequest);
        assert!((0..50).all(|_| b.pick(&s, None).unwrap().addr.port() == 9001));
    }

    #[test]
    fn hash_policies_are_sticky_and_spread() {
        for policy in [LbPolicy::RingHash, LbPolicy::Maglev] {
            let s = set(4, policy);
            let b = Balancer::new(policy);
            let mut counts = [0usize; 4];
            for key in 0..4000u64 {
                let h = xxh3_64(&key.to_le_bytes());
                let first = b.pick(&s, Some(h)).unwrap().addr.port();
                assert_eq!(first, b.pick(&s, Some(h)).unwrap().addr.port());
                counts[(first - 9000) as usize] += 1;
            }
            assert!(counts.iter().all(|c| *c > 600), "{policy:?}: {counts:?}");
        }
    }

    #[test]
    fn maglev_moves_few_keys_when_an_endpoint_goes() {
        let four = set(4, LbPolicy::Maglev);
        let three = EndpointSet::new(four.endpoints[..3].to_vec(), LbPolicy::Maglev);
        let b = Balancer::new(LbPolicy::Maglev);
        let moved = (0..3000u64)
            .map(|k| xxh3_64(&k.to_le_bytes()))
            .filter(|h| {
                let before = b.pick(&four, Some(*h)).unwrap().addr;
                before.port() != 9003 && before != b.pick(&three, Some(*h)).unwrap().addr
            })
            .count();
        assert!(moved < 300, "{moved} keys moved");
    }
}
