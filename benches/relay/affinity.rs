//! `--pin`: the broker on a CPU of its own, as if it ran on its own machine.
//! RabbitMQ's Erlang VM (`beam.smp` and its children, every thread) goes on
//! the first CPU; this process (and so the relays it spawns) and PostgreSQL
//! (the postmaster and every backend: new backends inherit the postmaster's
//! mask) on the others. The baseline and the relay are both measured so.
//!
//! Invariant: every mask changed is put back, by the guard's `Drop` (also
//! when a panic unwinds) or, on SIGINT, SIGTERM or SIGHUP, by the handler
//! before the process exits. Masks are saved per thread, not per process:
//! the Erlang VM binds each scheduler thread to a CPU of its own, which one
//! mask per process (what `taskset -p` shows) would not restore. A thread
//! or process started while pinned gets its root process's saved mask.

use crate::procfs::{self, Stat};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

/// Whether to pin (`--pin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PinMode {
    /// Pinned and unpinned rows (unpinned only, and said so, where pinning
    /// is impossible: one CPU, no permission, a service not on this machine).
    On,
    /// Unpinned rows only.
    Off,
}

/// A CPU mask, as `sched_{get,set}affinity` take it (1024 CPUs).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CpuMask([u64; 16]);

impl CpuMask {
    const EMPTY: Self = Self([0; 16]);

    fn of(cpus: impl IntoIterator<Item = usize>) -> Self {
        let mut mask = Self::EMPTY;
        for cpu in cpus {
            mask.0[cpu / 64] |= 1 << (cpu % 64);
        }
        mask
    }

    fn cpus(&self) -> impl Iterator<Item = usize> + '_ {
        (0..1024).filter(|cpu| self.0[cpu / 64] & (1 << (cpu % 64)) != 0)
    }

    /// The mask of one thread (`tid` 0: the calling thread).
    fn get(tid: i32) -> std::io::Result<Self> {
        let mut mask = Self::EMPTY;
        // SAFETY: the buffer is as large as the size passed.
        let rc = unsafe {
            libc::sched_getaffinity(
                tid,
                std::mem::size_of::<Self>(),
                mask.0.as_mut_ptr().cast::<libc::cpu_set_t>(),
            )
        };
        if rc == 0 {
            Ok(mask)
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    fn set(&self, tid: i32) -> std::io::Result<()> {
        // SAFETY: the buffer is as large as the size passed; the kernel only reads it.
        let rc = unsafe {
            libc::sched_setaffinity(
                tid,
                std::mem::size_of::<Self>(),
                self.0.as_ptr().cast::<libc::cpu_set_t>(),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

/// As `taskset -c` writes it: `0`, `1-3`, `0,2`.
impl fmt::Display for CpuMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cpus: Vec<usize> = self.cpus().collect();
        let mut parts = Vec::new();
        let mut i = 0;
        while i < cpus.len() {
            let mut j = i;
            while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
                j += 1;
            }
            parts.push(if i == j {
                cpus[i].to_string()
            } else {
                format!("{}-{}", cpus[i], cpus[j])
            });
            i = j + 1;
        }
        f.write_str(&parts.join(","))
    }
}

/// What was changed, to be put back.
#[derive(Default)]
struct Saved {
    /// Per root process (pinned in this order): the root's own mask, for
    /// threads and processes that appeared under it while pinned, and each
    /// thread's mask as it was.
    roots: Vec<(i32, CpuMask, HashMap<i32, CpuMask>)>,
    /// Set by the signal handler: pin no more, the process is exiting.
    exiting: bool,
}

impl Saved {
    /// Puts every saved mask back, roots in the order they were pinned and
    /// each one's parents before its children. Never fails: a thread that
    /// has gone needs nothing.
    fn restore(&mut self) {
        let all = procfs::processes();
        for (root, root_mask, threads) in self.roots.drain(..) {
            for (tid, mask) in &threads {
                let _ = mask.set(*tid);
            }
            for pid in procfs::trees(&[root], &all) {
                for tid in procfs::threads(pid) {
                    if !threads.contains_key(&tid) {
                        let _ = root_mask.set(tid);
                    }
                }
            }
        }
    }
}

/// Why the run is not pinned.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("--pin off")]
    Off,
    #[error("only CPU {0} is available, pinning needs two")]
    OneCpu(String),
    #[error("no beam.smp process (RabbitMQ) on this machine")]
    NoBroker,
    #[error("no postgres process on this machine")]
    NoPostgres,
    #[error("cannot set the CPU affinity of {comm} (pid {pid}): {source}")]
    Denied {
        comm: String,
        pid: i32,
        source: std::io::Error,
    },
    #[error("the benchmark is being interrupted")]
    Exiting,
    #[error("already pinned (one guard at a time: a second would save pinned masks)")]
    AlreadyPinned,
}

impl fmt::Debug for CpuMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CpuMask({self})")
    }
}

/// Pins on demand; restores on drop of each [`Pinned`] and on signals.
pub struct Pinner {
    broker: CpuMask,
    rest: CpuMask,
    saved: Arc<Mutex<Saved>>,
}

impl Pinner {
    /// A pinner that has shown it can pin (it pins once and restores), or
    /// why there is none. Installs the signal handler that restores before
    /// exiting; it stays for the life of the process, as the signals' default
    /// action does not come back once a handler is installed.
    pub fn new(mode: PinMode) -> Result<Self, PinError> {
        if mode == PinMode::Off {
            return Err(PinError::Off);
        }
        let allowed = CpuMask::get(0).map_err(|source| PinError::Denied {
            comm: "this process".into(),
            pid: std::process::id() as i32,
            source,
        })?;
        let mut cpus = allowed.cpus();
        let (Some(first), Some(_)) = (cpus.next(), cpus.next()) else {
            return Err(PinError::OneCpu(allowed.to_string()));
        };
        let pinner = Self {
            broker: CpuMask::of([first]),
            rest: CpuMask::of(allowed.cpus().filter(|c| *c != first)),
            saved: Arc::default(),
        };
        drop(pinner.pin()?);
        tokio::spawn(restore_on_signal(pinner.saved.clone()));
        Ok(pinner)
    }

    /// What the run is pinned to, for the report's header.
    pub fn describe(&self) -> String {
        format!(
            "pinned: RabbitMQ on CPU {}, PostgreSQL and the relays on CPU {}",
            self.broker, self.rest
        )
    }

    /// Pins until the returned guard is dropped.
    pub fn pin(&self) -> Result<Pinned, PinError> {
        let mut saved = lock(&self.saved);
        if saved.exiting {
            return Err(PinError::Exiting);
        }
        if !saved.roots.is_empty() {
            return Err(PinError::AlreadyPinned);
        }
        let all = procfs::processes();
        let brokers = roots(&all, |p| p.comm == "beam.smp");
        let postmasters = roots(&all, |p| p.comm == "postgres");
        if brokers.is_empty() {
            return Err(PinError::NoBroker);
        }
        if postmasters.is_empty() {
            return Err(PinError::NoPostgres);
        }
        let me = [std::process::id() as i32];
        let plan = [
            (brokers, self.broker),
            (postmasters, self.rest),
            (me.to_vec(), self.rest),
        ];
        for (roots, mask) in plan {
            for root in roots {
                if let Err(e) = pin_tree(root, mask, &mut saved) {
                    saved.restore();
                    return Err(e);
                }
            }
        }
        Ok(Pinned {
            saved: self.saved.clone(),
        })
    }
}

/// While alive, the processes are pinned.
pub struct Pinned {
    saved: Arc<Mutex<Saved>>,
}

impl Drop for Pinned {
    fn drop(&mut self) {
        lock(&self.saved).restore();
    }
}

/// A poisoned lock still holds the masks to restore.
fn lock(saved: &Mutex<Saved>) -> MutexGuard<'_, Saved> {
    saved.lock().unwrap_or_else(|e| e.into_inner())
}

/// The processes matching `is` whose parent does not match it: the
/// postmaster, not its backends; the Erlang VM.
fn roots(all: &[Stat], is: impl Fn(&Stat) -> bool) -> Vec<i32> {
    let parent_is = |p: &Stat| all.iter().any(|q| q.pid == p.ppid && is(q));
    all.iter()
        .filter(|p| is(p) && !parent_is(p))
        .map(|p| p.pid)
        .collect()
}

/// Pins every thread of `root` and of the processes below it, saving each
/// thread's mask before changing it. The root's threads go first, and the
/// processes below are listed only then: whatever the root starts from then
/// on inherits the new mask, so no backend forked meanwhile is missed.
fn pin_tree(root: i32, mask: CpuMask, saved: &mut Saved) -> Result<(), PinError> {
    let Ok(root_mask) = CpuMask::get(root) else {
        return Ok(()); // gone
    };
    saved.roots.push((root, root_mask, HashMap::new()));
    let threads = &mut saved.roots.last_mut().expect("just pushed").2;
    pin_threads(root, mask, threads)?;
    for pid in procfs::trees(&[root], &procfs::processes())
        .into_iter()
        .skip(1)
    {
        pin_threads(pid, mask, threads)?;
    }
    Ok(())
}

fn pin_threads(
    pid: i32,
    mask: CpuMask,
    threads: &mut HashMap<i32, CpuMask>,
) -> Result<(), PinError> {
    for tid in procfs::threads(pid) {
        let Ok(before) = CpuMask::get(tid) else {
            continue; // gone
        };
        threads.entry(tid).or_insert(before);
        match mask.set(tid) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(source) => {
                let comm = Stat::of(pid).map_or_else(|| "?".into(), |s| s.comm);
                return Err(PinError::Denied { comm, pid, source });
            }
        }
    }
    Ok(())
}

/// On SIGINT, SIGTERM or SIGHUP: restore, then exit as the signal would
/// have (128 + its number). The relays die with the process (they are
/// spawned with a parent-death signal).
async fn restore_on_signal(saved: Arc<Mutex<Saved>>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        eprintln!("bench: cannot handle signals; an interrupted run may leave CPUs pinned");
        return;
    };
    let code = tokio::select! {
        _ = term.recv() => 128 + libc::SIGTERM,
        _ = int.recv() => 128 + libc::SIGINT,
        _ = hup.recv() => 128 + libc::SIGHUP,
    };
    let mut saved = lock(&saved);
    saved.restore();
    saved.exiting = true;
    eprintln!("bench: interrupted; CPU affinity restored");
    std::process::exit(code);
}
