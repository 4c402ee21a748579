//! The loop around a worker's step ([`Step`]: the pipelined step of the
//! relay's own table, [`Pipeline`], or the o5 table's, [`super::O5Relay`]):
//! adaptive polling, wake-ups,
//! backoff after infrastructure errors, systemic-fault pauses, a supervisor
//! that restarts a panicked worker, and cooperative shutdown.
//!
//! Cancellation is checked between batches only (invariant 6): a batch that
//! has started is finished — published, confirmed and marked — before the
//! worker exits. Each step is bounded by `step_timeout` so that a hung
//! dependency cannot hold a claim forever (invariant 4).
//!
//! A systemic fault (invariant 9: a missing privilege, a read-only database,
//! a missing column) pauses *every* worker of the relay, with a backoff that
//! grows to [`SYSTEMIC_BACKOFF_MAX`]: a batch that was published but could
//! not be marked is published again at most once per pause, not in a loop.
//! The fault is logged once a minute with its fix, and reported to
//! [`Health`] until a step succeeds again.

use super::{ErrorBackoff, Outcome, Pipeline, RelayError};
use crate::health::Health;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Longest pause after a systemic fault.
pub const SYSTEMIC_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Timing of one worker.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Idle wait when nothing is due (a wake-up cuts it short).
    pub poll_interval: Duration,
    /// Upper bound on one claim → mark cycle.
    pub step_timeout: Duration,
    /// Backoff after infrastructure errors.
    pub error_backoff_max: Duration,
}

/// What the workers of one relay share.
#[derive(Clone)]
pub struct Shared {
    pub health: Arc<Health>,
    pub wake: Arc<Notify>,
    /// Until when every worker holds off after a systemic fault, and the
    /// backoff that grows while the fault persists, whichever worker meets it.
    pause: Arc<Mutex<(Option<Instant>, ErrorBackoff)>>,
    /// When a worker of this relay last claimed rows (never: long ago):
    /// the idle poll of every worker follows it ([`Idle`]).
    last_work: Arc<Mutex<Option<Instant>>>,
    /// The relay's one looker while idle ([`Looker`]).
    looker: Arc<Looker>,
}

/// While the relay is idle, one worker looks for due rows and the others
/// wait for it: an idle relay costs one cheap look per poll step, not one
/// per worker. The looker hands the role on (`free`, one waiter) when it
/// finds rows and goes to claim them, so the next rows that arrive while
/// its batch is held up are still looked for; a full batch (more rows
/// due) wakes every waiting worker (`burst`). A waiter also wakes on a
/// wake-up, and after [`PARKED_MAX`] at the latest, so that a looker that
/// died with the role cannot leave the others waiting.
#[derive(Debug, Default)]
struct Looker {
    /// The worker holding the role, plus one; 0: nobody.
    holder: std::sync::atomic::AtomicUsize,
    free: Notify,
    burst: Notify,
}

/// The longest a waiting worker waits for the looker before it looks.
const PARKED_MAX: Duration = Duration::from_secs(5);

impl Looker {
    /// Takes the role, or says that another worker holds it.
    fn take(&self, worker: usize) -> bool {
        use std::sync::atomic::Ordering::AcqRel;
        let me = worker + 1;
        match self
            .holder
            .compare_exchange(0, me, AcqRel, std::sync::atomic::Ordering::Acquire)
        {
            Ok(_) => true,
            Err(holder) => holder == me,
        }
    }

    /// Gives the role up (if held), to the next waiting worker.
    fn give(&self, worker: usize) {
        use std::sync::atomic::Ordering::{AcqRel, Acquire};
        if self
            .holder
            .compare_exchange(worker + 1, 0, AcqRel, Acquire)
            .is_ok()
        {
            self.free.notify_one();
        }
    }
}

impl Shared {
    pub fn new(health: Arc<Health>, wake: Arc<Notify>) -> Self {
        Self {
            health,
            wake,
            pause: Arc::new(Mutex::new((
                None,
                ErrorBackoff::new(Duration::from_secs(1), SYSTEMIC_BACKOFF_MAX),
            ))),
            last_work: Arc::new(Mutex::new(None)),
            looker: Arc::default(),
        }
    }

    /// A worker claimed rows: every idle worker looks again soon.
    fn worked(&self) {
        *self.last_work.lock().expect("poisoned") = Some(Instant::now());
    }

    /// A relay that has found no rows since it started counts as idle for
    /// long: its first empty claim is followed by a poll interval's wait.
    fn since_work(&self) -> Duration {
        self.last_work
            .lock()
            .expect("poisoned")
            .map_or(Duration::MAX, |at| at.elapsed())
    }

    fn paused_until(&self) -> Option<Instant> {
        let until = self.pause.lock().expect("poisoned").0;
        until.filter(|at| *at > Instant::now())
    }

    /// Pauses every worker for the next step of the shared backoff.
    fn pause(&self) -> Duration {
        let mut pause = self.pause.lock().expect("poisoned");
        let delay = pause.1.next_delay();
        pause.0 = Some(Instant::now() + delay);
        delay
    }

    fn reset_pause(&self) {
        self.pause.lock().expect("poisoned").1.reset();
    }
}

/// What the worker loop drives: one table's relay step.
pub trait Step: Send + 'static {
    /// Claims, publishes and settles (some of) what is due.
    fn step(&mut self) -> impl Future<Output = Result<Outcome, RelayError>> + Send;
    /// Whether any row is due, without claiming (while idle).
    fn has_due(&mut self) -> impl Future<Output = Result<bool, RelayError>> + Send;
    /// Settles what is in flight (at shutdown).
    fn drain(&mut self) -> impl Future<Output = ()> + Send;
    /// Forgets what is in flight and the channel, after a step was
    /// abandoned at its deadline: its claims are released at once.
    fn abandon(&mut self);
    /// Closes the worker's channel.
    fn close(&mut self) -> impl Future<Output = ()> + Send;
}

impl Step for Pipeline {
    fn step(&mut self) -> impl Future<Output = Result<Outcome, RelayError>> + Send {
        Pipeline::step(self)
    }
    fn has_due(&mut self) -> impl Future<Output = Result<bool, RelayError>> + Send {
        Pipeline::has_due(self)
    }
    async fn drain(&mut self) {
        Pipeline::drain(self).await;
    }
    fn abandon(&mut self) {
        Pipeline::abandon(self);
    }
    fn close(&mut self) -> impl Future<Output = ()> + Send {
        Pipeline::close(self)
    }
}

/// Runs a worker until `stop`, restarting it with a fresh [`Step`] from
/// `make` when it panics (counted, logged, reported to health meanwhile).
pub async fn supervise<S: Step>(
    make: impl Fn() -> S + Send + 'static,
    worker: usize,
    options: WorkerOptions,
    shared: Shared,
    stop: CancellationToken,
) {
    let mut restarts = ErrorBackoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        let run = tokio::spawn(run_worker(
            make(),
            worker,
            options.clone(),
            shared.clone(),
            stop.clone(),
        ));
        let panic = match run.await {
            Ok(()) => return,
            Err(e) if e.is_panic() => panic_message(e.into_panic()),
            Err(e) => e.to_string(),
        };
        shared.health.set_down(worker, Some(panic.clone()));
        let retry_in = restarts.next_delay();
        tracing::error!(
            worker,
            panic,
            restarts = shared.health.restarts(),
            ?retry_in,
            "relay worker panicked; its claim was released, restarting it"
        );
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(retry_in) => {}
        }
        shared.health.set_down(worker, None);
    }
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    match panic.downcast::<String>() {
        Ok(text) => *text,
        Err(panic) => panic.downcast_ref::<&str>().map_or_else(
            || "a panic without a message".to_owned(),
            |s| (*s).to_owned(),
        ),
    }
}

/// Runs `relay` until `stop` is cancelled.
pub async fn run_worker<S: Step>(
    mut relay: S,
    worker: usize,
    options: WorkerOptions,
    shared: Shared,
    stop: CancellationToken,
) {
    let mut errors = ErrorBackoff::new(Duration::from_millis(100), options.error_backoff_max);
    let mut healthy = true;
    let mut idle = Idle::new(options.poll_interval);
    let mut overdue = false;
    while !stop.is_cancelled() {
        if let Some(until) = shared.paused_until() {
            shared.health.beat(worker);
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep_until(until) => {}
            }
            continue;
        }
        fail_point_block();
        if idle.is_idle() && !overdue && !shared.looker.take(worker) {
            // Another worker looks for the relay: wait for it.
            shared.health.beat(worker);
            let parked = PARKED_MAX.min(options.poll_interval.saturating_mul(4));
            tokio::select! {
                () = stop.cancelled() => break,
                () = shared.looker.free.notified() => {}
                () = shared.looker.burst.notified() => idle.reset(),
                () = shared.wake.notified() => idle.reset(),
                // The looker is gone (or wedged): look anyway, once.
                () = tokio::time::sleep(parked) => overdue = true,
            }
            continue;
        }
        overdue = false;
        if idle.is_idle() {
            // Idle: one indexed existence check instead of a claim's
            // transaction. If it fails, the step below says why.
            let due = tokio::time::timeout(options.step_timeout, relay.has_due()).await;
            if let Ok(Ok(false)) = due {
                shared.health.beat(worker);
                let pause = idle.next_wait(shared.since_work());
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(pause) => {}
                    () = shared.wake.notified() => idle.reset(),
                }
                continue;
            }
        }
        // Claiming: the next idle worker looks in this one's stead.
        shared.looker.give(worker);
        let step = tokio::time::timeout(options.step_timeout, relay.step()).await;
        shared.health.beat(worker);
        let pause = match step {
            Ok(Ok(outcome)) => {
                // Only a batch that was marked and committed proves a fault
                // gone: an empty claim succeeds under a missing DELETE grant.
                let proven = matches!(outcome, Outcome::Relayed(_));
                if proven && shared.health.clear_faults() {
                    shared.health.reset_fault_log();
                    shared.reset_pause();
                }
                if !healthy {
                    tracing::info!(worker, "relay step succeeded again");
                }
                healthy = true;
                errors.reset();
                match outcome {
                    Outcome::Relayed(report) => {
                        tracing::debug!(worker, claimed = report.claimed, sent = report.sent,
                            retried = report.retried, dead = report.dead,
                            claim = ?report.timings[0], publish = ?report.timings[1],
                            mark = ?report.timings[2], "batch relayed");
                        shared.worked();
                        if report.full {
                            // More are probably due: claim again at once,
                            // and so do the workers waiting for the looker.
                            idle.reset();
                            shared.looker.burst.notify_waiters();
                        } else {
                            // Look first (no wait): a claim after a short
                            // one would mostly come back empty.
                            idle.look();
                        }
                        continue;
                    }
                    // Sent: the next step claims more and settles it.
                    Outcome::InFlight => {
                        idle.reset();
                        shared.worked();
                        continue;
                    }
                    Outcome::Empty => idle.next_wait(shared.since_work()),
                }
            }
            Ok(Err(e)) if e.is_systemic() => {
                let delay = shared.pause();
                on_systemic_fault(&shared, worker, &e, delay);
                healthy = false;
                continue;
            }
            Ok(Err(e)) => {
                let delay = errors.next_delay();
                if healthy {
                    tracing::warn!(worker, error = %e, retry_in = ?delay, "relay step failed; backing off");
                } else {
                    tracing::debug!(worker, error = %e, retry_in = ?delay, "relay step failed again");
                }
                healthy = false;
                delay
            }
            Err(_) => {
                relay.abandon();
                let delay = errors.next_delay();
                tracing::warn!(worker, bound = ?options.step_timeout, retry_in = ?delay,
                    "relay step exceeded its time bound and was abandoned; its claims were released");
                healthy = false;
                delay
            }
        };
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(pause) => {}
            () = shared.wake.notified() => idle.reset(),
        }
    }
    shared.looker.give(worker);
    // The batch in flight is finished, not dropped (invariant 6).
    if tokio::time::timeout(options.step_timeout, relay.drain())
        .await
        .is_err()
    {
        relay.abandon();
        tracing::warn!(worker, bound = ?options.step_timeout,
            "the batch in flight at shutdown was not confirmed in time; its rows stay pending");
    }
    relay.close().await;
    tracing::debug!(worker, "worker stopped");
}

/// Reports a systemic fault to health, and logs it once a minute with its fix.
fn on_systemic_fault(shared: &Shared, worker: usize, error: &RelayError, pause: Duration) {
    let fix = match error {
        RelayError::Store(e) => e.fix(),
        RelayError::Broker(_) => "check the broker",
    };
    shared
        .health
        .set_fault(worker, Some(format!("{error}; fix: {fix}")));
    if shared.health.should_log_fault() {
        tracing::error!(worker, error = %error, fix, ?pause,
            "relaying is paused by a fault that retrying cannot cure; \
             every worker holds off and health reports NOT_SERVING until it is fixed");
    }
}

/// The fault suite's way to wedge or panic a worker: `FAILPOINTS` set to
/// `relay_worker_loop=panic` or `relay_worker_loop=sleep(60000)`.
fn fail_point_block() {
    #[cfg(feature = "failpoints")]
    fail::fail_point!("relay_worker_loop");
}

/// The adaptive poll, one for the whole relay. After an empty claim the
/// relay looks again within [`IDLE_FIRST`], or an eighth of the time it has
/// found no work (no worker claimed a row), up to the poll interval; while
/// idle it looks with an existence check, not a claim. So a row committed
/// while rows keep coming waits a few milliseconds, not a poll interval,
/// without the wake-up trigger; after a quiet spell of 4 s (and from the
/// start until the relay first finds rows) the looks are a poll interval
/// apart, and an idle relay costs a few cheap queries a second.
///
/// The clock is the relay's, not the worker's: while one worker carries the
/// traffic, the others' claims come back empty (its rows are locked) yet
/// they keep looking, so rows that arrive while its batch is held up (a
/// slow commit, a late confirm) are taken by another worker instead of
/// waiting for it. With a clock per worker, theirs backed off to the poll
/// interval and such rows waited up to that long (p99 200 ms at 1,000
/// msg/s with 2 workers and the trigger off).
///
/// The workers share the looking: one of them looks while the relay is idle
/// ([`Looker`]), the others wait for it, so an idle relay costs one look
/// per step however many workers it has (a look costs a round trip and a
/// plan on PostgreSQL: four workers looking each cost more than the
/// messages did at 100 msg/s, and 10 ms of CPU per idle second). A worker
/// that has just relayed a short batch looks at once, without a wait. Each
/// wait is a random 50-100% of its length.
struct Idle {
    idle: bool,
    max: Duration,
}

/// The first wait after an empty claim.
pub const IDLE_FIRST: Duration = Duration::from_millis(5);

impl Idle {
    fn new(max: Duration) -> Self {
        Self { idle: false, max }
    }

    fn is_idle(&self) -> bool {
        self.idle
    }

    fn reset(&mut self) {
        self.idle = false;
    }

    /// The next turn looks with the existence check before it claims.
    fn look(&mut self) {
        self.idle = true;
    }

    /// The wait before the next look, `since_work` after the relay last
    /// claimed rows.
    fn next_wait(&mut self, since_work: Duration) -> Duration {
        self.idle = true;
        let step = (since_work / 8).clamp(IDLE_FIRST.min(self.max), self.max);
        step.mul_f64(0.5 + 0.5 * fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_idle_wait_follows_how_long_the_relay_has_found_no_work() {
        let max = Duration::from_millis(500);
        let mut idle = Idle::new(max);
        assert!(!idle.is_idle());
        let first = idle.next_wait(Duration::ZERO);
        assert!(idle.is_idle());
        assert!(first >= IDLE_FIRST / 2 && first <= IDLE_FIRST, "{first:?}");
        let later = idle.next_wait(Duration::from_millis(800));
        assert!(
            later >= Duration::from_millis(50) && later <= Duration::from_millis(100),
            "{later:?}"
        );
        let long = idle.next_wait(Duration::from_secs(60));
        assert!(long >= max / 2 && long <= max, "{long:?}");
        let never = idle.next_wait(Duration::MAX);
        assert!(never >= max / 2 && never <= max, "{never:?}");
        idle.reset();
        assert!(!idle.is_idle());
    }

    #[test]
    fn one_worker_looks_at_a_time_and_hands_the_role_on() {
        let looker = Looker::default();
        assert!(looker.take(0));
        assert!(looker.take(0), "the holder keeps it");
        assert!(!looker.take(1), "another worker waits");
        looker.give(1);
        assert!(!looker.take(2), "only the holder gives it up");
        looker.give(0);
        assert!(looker.take(2));
    }

    #[tokio::test]
    async fn giving_the_role_up_wakes_one_waiting_worker() {
        let looker = Looker::default();
        assert!(looker.take(0));
        let first = looker.free.notified();
        let second = looker.free.notified();
        tokio::pin!(first, second);
        first.as_mut().enable();
        second.as_mut().enable();
        looker.give(0);
        let woke = tokio::time::timeout(Duration::from_secs(5), &mut first).await;
        assert!(woke.is_ok(), "the first waiter is woken");
        let other = tokio::time::timeout(Duration::from_millis(50), &mut second).await;
        assert!(other.is_err(), "one waiter, not all");
    }

    #[test]
    fn a_poll_interval_below_the_first_wait_is_kept() {
        let max = Duration::from_millis(2);
        let mut idle = Idle::new(max);
        assert!(idle.next_wait(Duration::ZERO) <= max);
    }
}
