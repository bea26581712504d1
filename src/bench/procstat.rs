//! What `atb bench` reads of a process from Linux's /proc: its CPU time
//! (`/proc/<pid>/stat`, utime + stime of all its threads) and its memory
//! (`/proc/<pid>/status`, VmRSS and the peak VmHWM), and for `--soak` its
//! open file descriptors (the entries of `/proc/<pid>/fd`), and its
//! threads' voluntary context switches (`/proc/<pid>/task/*/status`): each
//! one is a thread that went to sleep and was woken again, so their count
//! per request is the broker's thread wake-ups per request.
//!
//! Design points:
//! - Parsing is plain functions over the files' text, tested on captured
//!   samples; reading is a thin wrapper.
//! - The command name in `stat` may hold spaces and parentheses: the
//!   fields are counted from the last `)`.
//! - CPU time is in clock ticks; the tick rate comes from
//!   `sysconf(_SC_CLK_TCK)` (100 on Linux), so the resolution is 10 ms: a
//!   timed phase must run long enough (seconds) for CPU per request to mean
//!   anything.

use std::path::PathBuf;

/// A process's /proc files could not be read or understood.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("cannot read {path}: {source}", path = .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: unexpected format ({what})", path = .path.display())]
    Format { path: PathBuf, what: &'static str },
}

/// User + system CPU time in clock ticks, from the text of `/proc/<pid>/stat`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // Fields after the name, from field 3 (state): utime is field 14 and
    // stime field 15 (proc(5)).
    let mut fields = after_comm.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Memory of a process, from `/proc/<pid>/status`, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Memory {
    /// Resident set size now (VmRSS).
    pub rss_bytes: u64,
    /// Peak resident set size (VmHWM).
    pub peak_rss_bytes: u64,
}

/// VmRSS and VmHWM from the text of `/proc/<pid>/status`.
pub fn parse_status_memory(status: &str) -> Option<Memory> {
    let kb = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let rest = line[name.len()..].trim_start_matches(':').trim();
        let number = rest.strip_suffix("kB").unwrap_or(rest).trim();
        number.parse::<u64>().ok().map(|k| k * 1024)
    };
    Some(Memory {
        rss_bytes: kb("VmRSS")?,
        peak_rss_bytes: kb("VmHWM")?,
    })
}

/// `voluntary_ctxt_switches` from the text of a `/proc/.../status` file.
pub fn parse_status_voluntary_switches(status: &str) -> Option<u64> {
    let line = status
        .lines()
        .find(|l| l.starts_with("voluntary_ctxt_switches"))?;
    line.split(':').nth(1)?.trim().parse().ok()
}

/// Clock ticks per second.
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions; it returns -1 on error.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

fn read(pid: u32, file: &str) -> Result<(PathBuf, String), ProcError> {
    let path = PathBuf::from(format!("/proc/{pid}/{file}"));
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok((path, text)),
        Err(source) => Err(ProcError::Read { path, source }),
    }
}

/// The CPU time (user + system, all threads) process `pid` has used, in
/// seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64, ProcError> {
    let (path, text) = read(pid, "stat")?;
    let ticks = parse_stat_cpu_ticks(&text).ok_or(ProcError::Format {
        path,
        what: "utime/stime",
    })?;
    Ok(ticks as f64 / ticks_per_second() as f64)
}

/// The resident memory of process `pid`.
pub fn memory(pid: u32) -> Result<Memory, ProcError> {
    let (path, text) = read(pid, "status")?;
    parse_status_memory(&text).ok_or(ProcError::Format {
        path,
        what: "VmRSS/VmHWM",
    })
}

/// The voluntary context switches of every thread process `pid` has now
/// (a thread that exited meanwhile takes its count with it: compare
/// readings of a process whose threads live as long as the phase).
pub fn voluntary_switches(pid: u32) -> Result<u64, ProcError> {
    let path = PathBuf::from(format!("/proc/{pid}/task"));
    let tasks = std::fs::read_dir(&path).map_err(|source| ProcError::Read {
        path: path.clone(),
        source,
    })?;
    let mut total = 0;
    for task in tasks.flatten() {
        // A thread that ends while listed is not counted.
        if let Ok(text) = std::fs::read_to_string(task.path().join("status")) {
            total += parse_status_voluntary_switches(&text).ok_or(ProcError::Format {
                path: task.path(),
                what: "voluntary_ctxt_switches",
            })?;
        }
    }
    Ok(total)
}

/// The open file descriptors of process `pid` (entries of
/// `/proc/<pid>/fd`; another user's process needs privileges).
pub fn open_fds(pid: u32) -> Result<u64, ProcError> {
    let path = PathBuf::from(format!("/proc/{pid}/fd"));
    match std::fs::read_dir(&path) {
        // An entry that vanishes while listed was closed: not counted.
        Ok(entries) => Ok(entries.filter(|e| e.is_ok()).count() as u64),
        Err(source) => Err(ProcError::Read { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from a running `atb broker` (fields 14/15: 1234 and 567).
    const STAT: &str = "4242 (atb) S 4100 4242 4100 34816 4242 4194560 5108 0 0 0 \
        1234 567 0 0 20 0 9 0 1520 1207377920 6312 18446744073709551615 1 1 0 0 0 0 0 \
        4096 17987 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n";

    #[test]
    fn voluntary_switches_from_status() {
        let status = "Name:\tactix-rt|system\nState:\tS (sleeping)\n\
            voluntary_ctxt_switches:\t4711\nnonvoluntary_ctxt_switches:\t12\n";
        assert_eq!(parse_status_voluntary_switches(status), Some(4711));
        assert_eq!(parse_status_voluntary_switches("Name:\tx\n"), None);
        // The process's sum is read (other test threads may exit between
        // two reads and take their counts with them, so it is not compared);
        // this thread's own count grows across a sleep.
        assert!(voluntary_switches(std::process::id()).unwrap() > 0);
        let mine = || {
            let text = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            parse_status_voluntary_switches(&text).unwrap()
        };
        let before = mine();
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(mine() > before);
    }

    #[test]
    fn stat_cpu_is_utime_plus_stime() {
        assert_eq!(parse_stat_cpu_ticks(STAT), Some(1801));
    }

    #[test]
    fn stat_name_with_spaces_and_parens() {
        let s = STAT.replace("(atb)", "(a b) (c))");
        assert_eq!(parse_stat_cpu_ticks(&s), Some(1801));
    }

    #[test]
    fn stat_truncated_or_garbled_is_none() {
        assert_eq!(parse_stat_cpu_ticks("4242 (atb) S 1 2 3"), None);
        assert_eq!(parse_stat_cpu_ticks("no parenthesis at all"), None);
        let s = STAT.replace(" 1234 ", " x ");
        assert_eq!(parse_stat_cpu_ticks(&s), None);
    }

    #[test]
    fn status_memory_in_bytes() {
        let status = "Name:\tatb\nVmPeak:\t 1200000 kB\nVmHWM:\t   51200 kB\nVmRSS:\t   40960 kB\nThreads:\t9\n";
        assert_eq!(
            parse_status_memory(status),
            Some(Memory {
                rss_bytes: 40960 * 1024,
                peak_rss_bytes: 51200 * 1024
            })
        );
        assert_eq!(parse_status_memory("Name:\tatb\nVmRSS:\t 1 kB\n"), None);
        assert_eq!(parse_status_memory("VmHWM:\tlots kB\nVmRSS:\t1 kB\n"), None);
    }

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        let before = cpu_seconds(pid).unwrap();
        // Burn a little CPU; the reading never goes backwards.
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(cpu_seconds(pid).unwrap() >= before);
        let m = memory(pid).unwrap();
        assert!(m.rss_bytes > 0 && m.peak_rss_bytes >= m.rss_bytes);
        assert!(matches!(cpu_seconds(u32::MAX), Err(ProcError::Read { .. })));
    }

    #[test]
    fn open_fds_counts_this_process_descriptors() {
        let pid = std::process::id();
        // Other test threads open and close files too: hold 8 and see at
        // least those (and stdin/stdout/stderr).
        let held: Vec<_> = (0..8)
            .map(|_| std::fs::File::open("/proc/self/stat").unwrap())
            .collect();
        let with = open_fds(pid).unwrap();
        drop(held);
        assert!(with >= 8 + 3, "{with}");
        assert!(matches!(open_fds(u32::MAX), Err(ProcError::Read { .. })));
    }
}
