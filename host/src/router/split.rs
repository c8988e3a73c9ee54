//! Weighted cluster choice for canary and A/B splits.

/// Picks a cluster from `(name, weight)` pairs. `point` is any u64: a hash of
/// the sticky key (so a key always lands on the same cluster) or a random number.
pub fn pick_weighted(clusters: &[(String, u32)], point: u64) -> &str {
    let total: u64 = clusters.iter().map(|c| u64::from(c.1)).sum();
    if total == 0 {
        return &clusters[0].0;
    }
    let mut at = point % total;
    for (name, weight) in clusters {
        let w = u64::from(*weight);
        if at < w {
            return name;
        }
        at -= w;
    }
    &clusters[clusters.len() - 1].0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_divide_the_space() {
        let c = vec![
            ("a".to_string(), 90),
            ("b".to_string(), 10),
            ("z".to_string(), 0),
        ];
        let b = (0..1000u64)
            .filter(|p| pick_weighted(&c, *p) == "b")
            .count();
        assert_eq!(b, 100);
        assert!((0..1000u64).all(|p| pick_weighted(&c, p) != "z"));
    }
}
