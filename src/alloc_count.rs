//! Counting allocations: a thin [`GlobalAlloc`] wrapper that counts what
//! a process allocates, for issue 16's "allocations per request".
//!
//! Design points:
//! * [`Counting`] wraps another allocator (mimalloc in the `atb` binary)
//!   and only adds counting: allocations (`alloc`, `alloc_zeroed`),
//!   reallocations, and bytes allocated (the sizes asked for by
//!   allocations plus the growth asked for by reallocations; a shrinking
//!   reallocation adds none). Frees are not counted. A failed call (null)
//!   counts nothing.
//! * The counters are sharded, not per call site and not one atomic: 16
//!   cache-line-aligned shards of relaxed atomics, each thread bound to one
//!   shard (round robin, on its first allocation) through a `const`
//!   thread-local of a plain `Cell`, which needs no allocation and no
//!   destructor (on targets with native TLS, such as Linux, which the
//!   broker runs on) — so counting never re-enters the allocator, and threads
//!   on different shards never share a cache line. Reading
//!   ([`totals`]) sums the shards: not an atomic snapshot, but every shard
//!   only grows, so a later read is never below an earlier one, which is
//!   all a before/after difference needs.
//! * The type and its counters live in the library, so the broker's
//!   `/metrics` can read them and a bench or example can install its own
//!   instance; only the `atb` binary built with the cargo feature
//!   `count-allocations` installs it (`src/main.rs`), and only then does
//!   the broker export `atb_allocations_total`,
//!   `atb_reallocations_total` and `atb_allocated_bytes_total`
//!   ([`Collector`], read at every scrape). The totals are the process's:
//!   under `atb dev` (one process) they include AgentAuth and the demo
//!   upstream. The normal build keeps plain mimalloc and exports none.
//! * Nothing here allocates, locks or panics inside the allocator
//!   (a `GlobalAlloc` must not unwind).

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Shards of the counters (more than the threads that allocate a lot).
const SHARDS: usize = 16;

#[repr(align(128))]
struct Shard {
    allocations: AtomicU64,
    reallocations: AtomicU64,
    bytes: AtomicU64,
}

impl Shard {
    const fn new() -> Self {
        Self {
            allocations: AtomicU64::new(0),
            reallocations: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }
}

static COUNTERS: [Shard; SHARDS] = [const { Shard::new() }; SHARDS];
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's shard; `usize::MAX` until its first allocation.
    static MY_SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn shard() -> &'static Shard {
    let i = MY_SHARD
        .try_with(|s| {
            let mut i = s.get();
            if i == usize::MAX {
                i = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
                s.set(i);
            }
            i
        })
        // A thread being torn down: any shard will do.
        .unwrap_or(0);
    &COUNTERS[i % SHARDS]
}

/// What the process has allocated since it started (through [`Counting`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub allocations: u64,
    pub reallocations: u64,
    pub bytes: u64,
}

impl Totals {
    /// `self - earlier`, per field (0 rather than below).
    pub fn since(&self, earlier: &Totals) -> Totals {
        Totals {
            allocations: self.allocations.saturating_sub(earlier.allocations),
            reallocations: self.reallocations.saturating_sub(earlier.reallocations),
            bytes: self.bytes.saturating_sub(earlier.bytes),
        }
    }
}

/// The sums over every shard.
pub fn totals() -> Totals {
    let mut t = Totals::default();
    for s in &COUNTERS {
        t.allocations += s.allocations.load(Ordering::Relaxed);
        t.reallocations += s.reallocations.load(Ordering::Relaxed);
        t.bytes += s.bytes.load(Ordering::Relaxed);
    }
    t
}

/// Whether a [`Counting`] allocator is at work in this process (it has
/// counted something: any Rust process allocates before `main`'s work).
pub fn active() -> bool {
    totals().allocations > 0
}

/// `A`, counting (see the module header).
pub struct Counting<A> {
    inner: A,
}

impl<A> Counting<A> {
    pub const fn new(inner: A) -> Self {
        Self { inner }
    }
}

fn counted_allocation(size: usize) {
    let s = shard();
    s.allocations.fetch_add(1, Ordering::Relaxed);
    s.bytes.fetch_add(size as u64, Ordering::Relaxed);
}

// SAFETY: every call is forwarded unchanged to `inner`, a `GlobalAlloc`;
// counting touches only atomics and a const thread-local (no allocation).
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = self.inner.alloc(layout);
        if !p.is_null() {
            counted_allocation(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = self.inner.alloc_zeroed(layout);
        if !p.is_null() {
            counted_allocation(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.inner.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = self.inner.realloc(ptr, layout, new_size);
        if !p.is_null() {
            let s = shard();
            s.reallocations.fetch_add(1, Ordering::Relaxed);
            let grown = new_size.saturating_sub(layout.size());
            if grown > 0 {
                s.bytes.fetch_add(grown as u64, Ordering::Relaxed);
            }
        }
        p
    }
}

/// Metric names (SPEC §8: `atb_` prefix, `_total` for counters).
pub const ALLOCATIONS_METRIC: &str = "atb_allocations_total";
pub const REALLOCATIONS_METRIC: &str = "atb_reallocations_total";
pub const ALLOCATED_BYTES_METRIC: &str = "atb_allocated_bytes_total";

/// The Prometheus collector of [`totals`], read at every scrape.
pub struct Collector {
    /// Templates: their descriptions (values unused).
    templates: [prometheus::IntCounter; 3],
}

const SERIES: [(&str, &str); 3] = [
    (
        ALLOCATIONS_METRIC,
        "Heap allocations by the process since it started (build feature count-allocations)",
    ),
    (
        REALLOCATIONS_METRIC,
        "Heap reallocations by the process since it started (build feature count-allocations)",
    ),
    (
        ALLOCATED_BYTES_METRIC,
        "Bytes asked for by heap allocations and reallocation growth since the process started (build feature count-allocations)",
    ),
];

impl Collector {
    pub fn new() -> prometheus::Result<Self> {
        let [a, r, b] = SERIES;
        Ok(Self {
            templates: [
                prometheus::IntCounter::new(a.0, a.1)?,
                prometheus::IntCounter::new(r.0, r.1)?,
                prometheus::IntCounter::new(b.0, b.1)?,
            ],
        })
    }
}

impl prometheus::core::Collector for Collector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.templates.iter().flat_map(|t| t.desc()).collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let t = totals();
        let values = [t.allocations, t.reallocations, t.bytes];
        SERIES
            .iter()
            .zip(values)
            .filter_map(|((name, help), v)| {
                // The names and helps are constants that `new` accepted.
                let c = prometheus::IntCounter::new(*name, *help).ok()?;
                c.inc_by(v);
                Some(c.collect())
            })
            .flatten()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::System;

    static COUNTING: Counting<System> = Counting::new(System);

    // These tests call the wrapper directly (the lib's test binary keeps
    // the system allocator as its global one), so nothing else moves the
    // counters while they run... except each other: one test does it all.
    #[test]
    fn counts_allocations_reallocations_and_bytes_across_threads() {
        let before = totals();
        let layout = Layout::from_size_align(100, 8).unwrap();
        unsafe {
            let p = COUNTING.alloc(layout);
            assert!(!p.is_null());
            let z = COUNTING.alloc_zeroed(layout);
            assert!(!z.is_null() && *z == 0);
            // Growth counts its difference, shrinking nothing.
            let p = COUNTING.realloc(p, layout, 250);
            assert!(!p.is_null());
            let grown = Layout::from_size_align(250, 8).unwrap();
            let p = COUNTING.realloc(p, grown, 40);
            assert!(!p.is_null());
            COUNTING.dealloc(p, Layout::from_size_align(40, 8).unwrap());
            COUNTING.dealloc(z, layout);
        }
        let d = totals().since(&before);
        assert_eq!(
            d,
            Totals {
                allocations: 2,
                reallocations: 2,
                bytes: 100 + 100 + 150,
            }
        );

        // Many threads, each on its shard: the sum loses nothing.
        let before = totals();
        std::thread::scope(|s| {
            for t in 0..24usize {
                s.spawn(move || {
                    for i in 0..1000usize {
                        let l = Layout::from_size_align(1 + (t + i) % 64, 1).unwrap();
                        unsafe {
                            let p = COUNTING.alloc(l);
                            assert!(!p.is_null());
                            COUNTING.dealloc(p, l);
                        }
                    }
                });
            }
        });
        let d = totals().since(&before);
        assert_eq!(d.allocations, 24_000);
        assert_eq!(d.reallocations, 0);
        let bytes: u64 = (0..24u64)
            .flat_map(|t| (0..1000u64).map(move |i| 1 + (t + i) % 64))
            .sum();
        assert_eq!(d.bytes, bytes);
        assert!(active());

        // The collector renders the totals under their metric names.
        let registry = prometheus::Registry::new();
        registry
            .register(Box::new(Collector::new().unwrap()))
            .unwrap();
        let families = registry.gather();
        let value = |name: &str| {
            families
                .iter()
                .find(|f| f.name() == name)
                .map(|f| f.get_metric()[0].get_counter().get_value() as u64)
                .unwrap()
        };
        let now = totals();
        assert!(value(ALLOCATIONS_METRIC) >= 24_002);
        assert!(value(ALLOCATIONS_METRIC) <= now.allocations);
        assert!(value(REALLOCATIONS_METRIC) >= 2);
        assert!(value(ALLOCATED_BYTES_METRIC) >= bytes + 350);
    }

    #[test]
    fn since_never_goes_below_zero() {
        let a = Totals {
            allocations: 5,
            reallocations: 1,
            bytes: 10,
        };
        let b = Totals {
            allocations: 7,
            reallocations: 1,
            bytes: 4,
        };
        assert_eq!(
            b.since(&a),
            Totals {
                allocations: 2,
                reallocations: 0,
                bytes: 0
            }
        );
    }
}
