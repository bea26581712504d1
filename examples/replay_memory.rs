//! Memory of the in-memory replay store for N live entries (issue 16's
//! target: at most 150 MB for 1,000,000), measured with a counting global
//! allocator: bytes held by the store after N inserts, and per entry.
//!
//! `cargo run --release --example replay_memory [N]` (default 1,000,000).
//! The jtis are 36-character UUID strings (as AgentAuth mints them), spread
//! over 4 tenants.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use atb::broker::replay::{MemoryReplay, Verdict};

/// Counts the bytes currently allocated (and the peak).
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        System.dealloc(p, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = System.realloc(p, layout, new_size);
        if !q.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let tenants: Vec<Arc<str>> = ["acme", "globex", "initech", "umbrella"]
        .into_iter()
        .map(Arc::from)
        .collect();
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let cache = MemoryReplay::new(n);
    let mut jti = String::with_capacity(36);
    for i in 0..n {
        jti.clear();
        let x = (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
        use std::fmt::Write;
        let _ = write!(
            jti,
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            (x >> 96) as u32,
            (x >> 80) as u16,
            (x >> 68) as u16 & 0xfff,
            (x >> 56) as u16 & 0xfff,
            x as u64 & 0xffff_ffff_ffff
        );
        let verdict = cache.mark(&tenants[i % tenants.len()], &jti, 2_000_000_000, 1, n);
        assert_eq!(verdict, Ok(Verdict::Fresh), "entry {i}");
    }
    assert_eq!(cache.len(), n);
    let held = LIVE.load(Ordering::Relaxed) - base;
    let peak = PEAK.load(Ordering::Relaxed) - base;
    println!("entries        {n}");
    println!(
        "bytes          {held} ({:.1} MB)",
        held as f64 / 1_000_000.0
    );
    println!("bytes/entry    {:.1}", held as f64 / n as f64);
    println!(
        "peak bytes     {peak} ({:.1} MB, while the table grew)",
        peak as f64 / 1_000_000.0
    );
    drop(cache);
}
