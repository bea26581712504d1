//! The open-file limit, and how many connections fit in it.
//!
//! Design points:
//! - **Raise first.** At start the soft `RLIMIT_NOFILE` is raised to the
//!   hard one (systemd and containers often start services at 1024 soft).
//! - **Never run out.** A live agent connection costs two descriptors (its
//!   socket and the duplicate kept to close it on demand), and the broker
//!   needs more for upstream connections, the audit file, listeners and
//!   Redis. When `broker.max_connections_per_worker` × workers would not
//!   fit, the per-worker bound is lowered so that a worker stops accepting
//!   (new connections wait in the backlog) before `accept` fails with
//!   EMFILE, which actix retries every 0.5 s while every handshake, of
//!   every tenant, times out.
//! - Plain logic apart from the two system calls.

/// Descriptors kept for everything that is not an agent connection:
/// upstream and Redis connections, files, listeners, the runtime.
pub fn reserve(open_files: u64) -> u64 {
    (open_files / 4).max(256)
}

/// The most live connections per worker that fit `open_files` with
/// `workers` workers (two descriptors each, after the [`reserve`]).
pub fn connections_that_fit(open_files: u64, workers: usize) -> usize {
    let usable = open_files.saturating_sub(reserve(open_files));
    let per_worker = usable / 2 / workers.max(1) as u64;
    usize::try_from(per_worker).unwrap_or(usize::MAX).max(1)
}

/// Raises the soft open-file limit to the hard one; the soft limit now in
/// force (`None` if it cannot be read).
pub fn raise_open_files() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        }
    }
    Some(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_fit_in_what_the_reserve_leaves() {
        // 20,000 descriptors, 2 workers: 5,000 kept, 7,500 two-descriptor
        // connections, 3,750 per worker.
        assert_eq!(connections_that_fit(20_000, 2), 3_750);
        assert_eq!(reserve(1_024), 256);
        assert_eq!(connections_that_fit(1_024, 2), 192);
        assert_eq!(connections_that_fit(100, 4), 1);
        assert_eq!(connections_that_fit(1_048_576, 1), 393_216);
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let now = raise_open_files().unwrap();
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: reads into a struct we own.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert_eq!(now, limit.rlim_cur);
        assert_eq!(limit.rlim_cur, limit.rlim_max);
    }
}
