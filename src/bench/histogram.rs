//! Latency histogram for `atb bench`: fixed memory, constant-time record,
//! mergeable, percentiles within 1% of the exact value.
//!
//! Design points:
//! - Log-linear buckets (as HdrHistogram with two significant digits):
//!   values below 256 ns have a bucket each; above, every power of two is
//!   split into 128 equal buckets, so a bucket is at most 1/128 (< 0.8%) of
//!   its values wide. About 7,400 counters (59 KB) cover every `u64`.
//! - Recording is an index computation and an increment: each load
//!   generator thread owns its histogram and they are merged after the
//!   timed phase, so there is no sharing on the hot path.
//! - A percentile is the upper edge of the bucket holding the rank
//!   `ceil(q * count)` (never optimistic), clipped to the largest value
//!   recorded.

/// Values below this have exact buckets.
const EXACT: u64 = 256;
/// Buckets per power of two above `EXACT`.
const SUB_BUCKETS: u64 = 128;
/// Powers of two above `EXACT` (up to 2^64).
const OCTAVES: usize = 56;
const BUCKETS: usize = EXACT as usize + OCTAVES * SUB_BUCKETS as usize;

/// A histogram of durations in nanoseconds.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.count)
            .field("min", &self.min)
            .field("max", &self.max)
            .finish()
    }
}

/// The bucket of `v`.
fn index(v: u64) -> usize {
    if v < EXACT {
        return v as usize;
    }
    // v >> shift lies in [128, 256): shift >= 1 as v >= 256.
    let shift = 63 - v.leading_zeros() as u64 - 7;
    let within = (v >> shift) - SUB_BUCKETS;
    (EXACT + (shift - 1) * SUB_BUCKETS + within) as usize
}

/// The largest value in bucket `i`.
fn upper_edge(i: usize) -> u64 {
    let i = i as u64;
    if i < EXACT {
        return i;
    }
    let shift = (i - EXACT) / SUB_BUCKETS + 1;
    let within = (i - EXACT) % SUB_BUCKETS + SUB_BUCKETS;
    // The bucket holds [within << shift, (within + 1) << shift).
    ((within + 1) << shift).wrapping_sub(1)
}

impl Histogram {
    pub fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    /// Records one value (nanoseconds).
    pub fn record(&mut self, nanos: u64) {
        self.counts[index(nanos)] += 1;
        self.count += 1;
        self.sum += u128::from(nanos);
        self.min = self.min.min(nanos);
        self.max = self.max.max(nanos);
    }

    /// Records a duration.
    pub fn record_duration(&mut self, d: std::time::Duration) {
        self.record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The largest value recorded (0 when empty).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The smallest value recorded (0 when empty).
    pub fn min(&self) -> u64 {
        if self.count == 0 {
            0
        } else {
            self.min
        }
    }

    /// The mean (0 when empty).
    pub fn mean(&self) -> u64 {
        if self.count == 0 {
            0
        } else {
            (self.sum / u128::from(self.count)) as u64
        }
    }

    /// The value at quantile `q` (0.0..=1.0): the upper edge of the bucket
    /// of rank `ceil(q * count)`, at most the largest value. 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let q = q.clamp(0.0, 1.0);
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return upper_edge(i).clamp(self.min, self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_narrow() {
        let mut last = 0;
        for v in (0..5000u64).chain((12..64).map(|s| (1u64 << s) + 12345)) {
            let i = index(v);
            assert!(i < BUCKETS, "{v}");
            assert!(i >= last, "monotonic at {v}");
            last = i;
            let hi = upper_edge(i);
            assert!(hi >= v, "{v} above its bucket's edge {hi}");
            assert!((hi - v) as f64 <= v as f64 / 128.0 + 1.0, "{v}: {hi}");
        }
        assert_eq!(index(u64::MAX), BUCKETS - 1);
        assert_eq!(upper_edge(BUCKETS - 1), u64::MAX);
        // Each bucket's upper edge is the value just below the next bucket.
        for i in 0..BUCKETS - 1 {
            assert_eq!(index(upper_edge(i)), i);
            assert_eq!(index(upper_edge(i) + 1), i + 1);
        }
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::new();
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.count(), 100);
        assert_eq!(h.quantile(0.5), 50);
        assert_eq!(h.quantile(0.9), 90);
        assert_eq!(h.quantile(0.99), 99);
        assert_eq!(h.quantile(1.0), 100);
        assert_eq!(h.quantile(0.0), 1);
        assert_eq!(h.min(), 1);
        assert_eq!(h.mean(), 50);
    }

    #[test]
    fn large_values_within_one_percent() {
        let mut h = Histogram::new();
        // 1..=100_000 microseconds, in nanoseconds.
        for v in 1..=100_000u64 {
            h.record(v * 1000);
        }
        for (q, exact) in [(0.5, 50_000_000u64), (0.9, 90_000_000), (0.99, 99_000_000)] {
            let got = h.quantile(q);
            assert!(got >= exact, "q {q}: {got} below {exact}");
            assert!(
                (got - exact) as f64 <= exact as f64 * 0.01,
                "q {q}: {got} vs {exact}"
            );
        }
        assert_eq!(h.quantile(0.999_999), 100_000_000, "clipped to the max");
        assert_eq!(h.max(), 100_000_000);
    }

    #[test]
    fn merge_equals_recording_everything_in_one() {
        let (mut a, mut b, mut all) = (Histogram::new(), Histogram::new(), Histogram::new());
        for v in 0..10_000u64 {
            let v = v * 7919 % 3_000_000;
            let part = if v % 3 == 0 { &mut a } else { &mut b };
            part.record(v);
            all.record(v);
        }
        a.merge(&b);
        assert_eq!(a.count(), all.count());
        for q in [0.0, 0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(a.quantile(q), all.quantile(q));
        }
        assert_eq!(
            (a.min(), a.max(), a.mean()),
            (all.min(), all.max(), all.mean())
        );
    }

    #[test]
    fn empty_histogram_reports_zeros() {
        let h = Histogram::new();
        assert_eq!(
            (h.count(), h.quantile(0.5), h.min(), h.max(), h.mean()),
            (0, 0, 0, 0, 0)
        );
        let mut m = Histogram::new();
        m.merge(&h);
        assert_eq!(m.min(), 0);
    }
}
