//! What the benchmark reads from /proc: each process's parent, command name
//! and CPU time (`/proc/<pid>/stat`), and its threads (`/proc/<pid>/task`).
//! Processes come and go while they are read: one that is gone is skipped.

use std::time::Duration;

/// The fields of `/proc/<pid>/stat` the benchmark uses.
#[derive(Debug, Clone)]
pub struct Stat {
    pub pid: i32,
    pub ppid: i32,
    pub comm: String,
    /// utime + stime, in clock ticks.
    pub own_ticks: u64,
    /// cutime + cstime: children this process has waited for.
    pub children_ticks: u64,
}

impl Stat {
    pub fn of(pid: i32) -> Option<Self> {
        let line = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Self::parse(pid, &line)
    }

    /// The command name is parenthesised and may itself hold spaces or
    /// parentheses: the fields start after the last `)`.
    fn parse(pid: i32, line: &str) -> Option<Self> {
        let open = line.find('(')?;
        let close = line.rfind(')')?;
        let comm = line.get(open + 1..close)?.to_owned();
        // Fields 3.. of the line: state, ppid, ...; utime, stime, cutime and
        // cstime are fields 14-17, i.e. 11-14 here.
        let fields: Vec<&str> = line.get(close + 2..)?.split_whitespace().collect();
        let num = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        Some(Self {
            pid,
            ppid: fields.get(1)?.parse().ok()?,
            comm,
            own_ticks: num(11)? + num(12)?,
            children_ticks: num(13)? + num(14)?,
        })
    }
}

/// Every process now running.
pub fn processes() -> Vec<Stat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(Stat::of)
        .collect()
}

/// The thread ids of a process (empty when it is gone).
pub fn threads(pid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// `roots` and every process below them, each parent before its children.
pub fn trees(roots: &[i32], all: &[Stat]) -> Vec<i32> {
    let mut found: Vec<i32> = roots.to_vec();
    let mut next = 0;
    while next < found.len() {
        let parent = found[next];
        for p in all {
            if p.ppid == parent && !found.contains(&p.pid) {
                found.push(p.pid);
            }
        }
        next += 1;
    }
    found
}

/// Clock ticks as time.
pub fn ticks(ticks: u64) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Duration::from_secs_f64(ticks as f64 / per_sec)
}

/// CPU time of every PostgreSQL process, including the backends that have
/// exited since they were started: the postmaster waits for each one, which
/// adds its time to the postmaster's children's time.
pub fn postgres_cpu() -> Duration {
    ticks(
        processes()
            .iter()
            .filter(|p| p.comm == "postgres")
            .map(|p| p.own_ticks + p.children_ticks)
            .sum(),
    )
}

/// One CPU's clock ticks since boot, from its `cpuN` line of `/proc/stat`.
#[derive(Debug, Clone, Copy)]
pub struct CpuTicks {
    /// Everything but idle and iowait.
    busy: u64,
    /// Idle with disk I/O outstanding.
    iowait: u64,
    total: u64,
}

/// Each CPU's ticks now.
pub fn cpu_ticks() -> Vec<CpuTicks> {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return Vec::new();
    };
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .filter_map(|l| {
            let n: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .map_while(|f| f.parse().ok())
                .collect();
            let total: u64 = n.iter().take(8).sum();
            let (idle, iowait) = (*n.get(3)?, *n.get(4)?);
            Some(CpuTicks {
                busy: total - idle - iowait,
                iowait,
                total,
            })
        })
        .collect()
}

/// How each CPU spent the time between two [`cpu_ticks`] readings: the
/// busy share and the iowait share, each 0 to 1.
pub fn cpu_busy(before: &[CpuTicks], after: &[CpuTicks]) -> Vec<(f64, f64)> {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| {
            let total = a.total.saturating_sub(b.total).max(1) as f64;
            let share = |x: u64, y: u64| x.saturating_sub(y) as f64 / total;
            (share(a.busy, b.busy), share(a.iowait, b.iowait))
        })
        .collect()
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
