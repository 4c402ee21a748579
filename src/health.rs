//! The process's own view of whether its workers work: each worker's last
//! completed iteration, the systemic fault that pauses it, and its restarts
//! after a panic; and, with `--worker-addr`, the state of delivery to the
//! worker application ([`DeliveryHealth`]). Read by gRPC health and the
//! HTTP probes (invariant 9: a fault that is not a row's never hides).

use crate::deliver::health::DeliveryHealth;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Shared by the workers (writers) and the health endpoints (readers).
#[derive(Debug)]
pub struct Health {
    started: Instant,
    workers: Vec<WorkerHealth>,
    restarts: AtomicU64,
    /// When the last systemic fault was logged: at most one a minute.
    fault_logged: Mutex<Option<Instant>>,
    /// Delivery to the worker application, with `--worker-addr`.
    delivery: Option<Arc<DeliveryHealth>>,
}

#[derive(Debug, Default)]
struct WorkerHealth {
    /// Milliseconds since `started` of the last completed loop iteration.
    beat_ms: AtomicU64,
    /// Why the worker is paused, when it is.
    fault: Mutex<Option<String>>,
    /// The last panic's message, while the worker waits to be restarted.
    down: Mutex<Option<String>>,
}

/// How often a persisting systemic fault is logged again.
pub const FAULT_LOG_EVERY: Duration = Duration::from_secs(60);

impl Health {
    pub fn new(workers: usize) -> Self {
        Self {
            started: Instant::now(),
            workers: (0..workers).map(|_| WorkerHealth::default()).collect(),
            restarts: AtomicU64::new(0),
            fault_logged: Mutex::new(None),
            delivery: None,
        }
    }

    /// Also reports `delivery`'s state (readiness, not liveness: a worker
    /// application that is down is no reason to restart the sidecar).
    pub fn with_delivery(mut self, delivery: Option<Arc<DeliveryHealth>>) -> Self {
        self.delivery = delivery;
        self
    }

    /// The state of delivery to the worker application, with `--worker-addr`.
    pub fn delivery(&self) -> Option<&Arc<DeliveryHealth>> {
        self.delivery.as_ref()
    }

    /// Worker `worker` completed an iteration (or is waiting, with a live
    /// timeout, on a service it has reported).
    pub fn beat(&self, worker: usize) {
        if let Some(w) = self.workers.get(worker) {
            w.beat_ms
                .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
    }

    /// Sets or clears the systemic fault that pauses `worker`; true if it
    /// had one.
    pub fn set_fault(&self, worker: usize, fault: Option<String>) -> bool {
        self.workers.get(worker).is_some_and(|w| {
            std::mem::replace(&mut *w.fault.lock().expect("poisoned"), fault).is_some()
        })
    }

    /// Clears every worker's fault (a batch went through: the fault is
    /// gone for all of them); true if there was one.
    pub fn clear_faults(&self) -> bool {
        let mut had = false;
        for worker in 0..self.workers.len() {
            had |= self.set_fault(worker, None);
        }
        had
    }

    /// Records a panic of `worker` (`Some`) or its restart (`None`).
    pub fn set_down(&self, worker: usize, panic: Option<String>) {
        if panic.is_some() {
            self.restarts.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(w) = self.workers.get(worker) {
            *w.down.lock().expect("poisoned") = panic;
        }
    }

    /// Worker restarts after a panic, since start.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// Workers currently paused by a systemic fault.
    pub fn faulted(&self) -> usize {
        self.workers
            .iter()
            .filter(|w| w.fault.lock().expect("poisoned").is_some())
            .count()
    }

    /// True when a systemic fault should be logged now (one a minute).
    pub fn should_log_fault(&self) -> bool {
        let mut last = self.fault_logged.lock().expect("poisoned");
        if last.is_some_and(|at| at.elapsed() < FAULT_LOG_EVERY) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    /// Lets the next systemic fault be logged at once (after a recovery).
    pub fn reset_fault_log(&self) {
        *self.fault_logged.lock().expect("poisoned") = None;
    }

    /// What keeps the workers from relaying: faults, dead workers, and
    /// workers with no iteration within `window`. Empty when all is well.
    pub fn problems(&self, window: Duration) -> Vec<String> {
        let now_ms = self.started.elapsed().as_millis() as u64;
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        let mut problems = Vec::new();
        for (index, w) in self.workers.iter().enumerate() {
            if let Some(panic) = w.down.lock().expect("poisoned").as_ref() {
                problems.push(format!(
                    "worker {index} panicked and awaits restart: {panic}"
                ));
            }
            if let Some(fault) = w.fault.lock().expect("poisoned").as_ref() {
                problems.push(format!("worker {index} paused: {fault}"));
            }
            let beat = w.beat_ms.load(Ordering::Relaxed);
            if now_ms.saturating_sub(beat) > window_ms {
                problems.push(format!(
                    "worker {index} completed no iteration in the last {window:?}"
                ));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_is_a_problem_until_cleared() {
        let health = Health::new(2);
        health.beat(0);
        health.beat(1);
        assert!(health.problems(Duration::from_secs(60)).is_empty());
        health.set_fault(1, Some("permission denied".into()));
        let problems = health.problems(Duration::from_secs(60));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("permission denied"));
        assert_eq!(health.faulted(), 1);
        health.set_fault(1, None);
        assert!(health.problems(Duration::from_secs(60)).is_empty());
    }

    #[test]
    fn a_silent_worker_is_a_problem() {
        let health = Health::new(1);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(health.problems(Duration::from_millis(1)).len(), 1);
        health.beat(0);
        assert!(health.problems(Duration::from_secs(1)).is_empty());
    }

    #[test]
    fn faults_are_logged_once_a_minute() {
        let health = Health::new(1);
        assert!(health.should_log_fault());
        assert!(!health.should_log_fault());
        health.reset_fault_log();
        assert!(health.should_log_fault());
    }
}
