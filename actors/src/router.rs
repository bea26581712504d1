//! Key → shard routing. Plain logic, no actors.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

/// Maps keys onto `hashed` shared shards, plus one dedicated shard for each
/// explicitly named hot key. Routing is stable for a given configuration.
#[derive(Debug, Clone)]
pub struct ShardRouter {
    hashed: usize,
    dedicated: HashMap<String, usize>,
}

impl ShardRouter {
    /// `hashed` must be at least 1; each entry of `dedicated` gets its own
    /// shard after the hashed ones (duplicates share the first one).
    pub fn new(hashed: usize, dedicated: &[String]) -> Self {
        let hashed = hashed.max(1);
        let mut map = HashMap::with_capacity(dedicated.len());
        for key in dedicated {
            let next = hashed + map.len();
            map.entry(key.clone()).or_insert(next);
        }
        Self {
            hashed,
            dedicated: map,
        }
    }

    /// Total number of shards (hashed + dedicated).
    pub fn shard_count(&self) -> usize {
        self.hashed + self.dedicated.len()
    }

    /// The shard that owns `key`.
    pub fn route(&self, key: &str) -> usize {
        if let Some(&idx) = self.dedicated.get(key) {
            return idx;
        }
        // SipHash with fixed (zero) keys: stable across processes and
        // replicas, which keeps per-shard metrics comparable.
        let mut h = std::hash::DefaultHasher::new();
        key.hash(&mut h);
        (h.finish() % self.hashed as u64) as usize
    }

    /// Whether shard `idx` is dedicated to a single key.
    pub fn is_dedicated(&self, idx: usize) -> bool {
        idx >= self.hashed && idx < self.shard_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_stable_and_bounded() {
        let r = ShardRouter::new(4, &[]);
        for i in 0..1000 {
            let key = format!("tenant-{i}");
            let a = r.route(&key);
            assert!(a < 4);
            assert_eq!(a, r.route(&key));
        }
    }

    #[test]
    fn spreads_keys_over_all_hashed_shards() {
        let r = ShardRouter::new(4, &[]);
        let mut seen = [0usize; 4];
        for i in 0..400 {
            seen[r.route(&format!("t{i}"))] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "uneven spread: {seen:?}");
    }

    #[test]
    fn dedicated_keys_get_their_own_shard() {
        let r = ShardRouter::new(2, &["hot".into(), "hotter".into(), "hot".into()]);
        assert_eq!(r.shard_count(), 4);
        assert_eq!(r.route("hot"), 2);
        assert_eq!(r.route("hotter"), 3);
        assert!(r.is_dedicated(2) && r.is_dedicated(3));
        assert!(!r.is_dedicated(0) && !r.is_dedicated(4));
        for i in 0..200 {
            assert!(r.route(&format!("t{i}")) < 2);
        }
    }

    #[test]
    fn zero_hashed_shards_is_clamped_to_one() {
        let r = ShardRouter::new(0, &[]);
        assert_eq!(r.shard_count(), 1);
        assert_eq!(r.route("x"), 0);
    }
}
