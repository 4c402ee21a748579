//! What the benchmark reads from /proc: a process's CPU time
//! (`/proc/<pid>/stat`) and its peak memory (`/proc/<pid>/status`).

use std::time::Duration;

/// The fields of `/proc/<pid>/stat` the benchmark uses.
#[derive(Debug, Clone)]
pub struct Stat {
    /// utime + stime, in clock ticks.
    pub own_ticks: u64,
}

impl Stat {
    pub fn of(pid: i32) -> Option<Self> {
        let line = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Self::parse(&line)
    }

    /// The command name is parenthesised and may itself hold spaces or
    /// parentheses: the fields start after the last `)`.
    fn parse(line: &str) -> Option<Self> {
        let close = line.rfind(')')?;
        // Fields 3.. of the line: state, ppid, ...; utime and stime are
        // fields 14 and 15, i.e. 11 and 12 here.
        let fields: Vec<&str> = line.get(close + 2..)?.split_whitespace().collect();
        let num = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        Some(Self {
            own_ticks: num(11)? + num(12)?,
        })
    }
}

/// Clock ticks as time.
pub fn ticks(ticks: u64) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Duration::from_secs_f64(ticks as f64 / per_sec)
}

/// Peak resident memory of a process, from `/proc/<pid>/status`.
pub fn peak_rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
