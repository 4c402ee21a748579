//! The state of delivery to the worker application, as the health
//! endpoints report it (`/readyz`, `/api/health`, gRPC health): written by
//! the delivery's supervisor at each change, read by the probes.
//!
//! Invariant owned here: delivery counts as ready only while it consumes,
//! and it consumes only after a connection to the worker succeeded; every
//! other state (starting, the worker unreachable, the broker down, halted,
//! stopped) fails readiness with its reason (invariant 9: a fault that is
//! not a message's never hides).

use std::error::Error;
use std::fmt::Write;
use std::time::SystemTime;
use tokio::sync::watch;

/// What delivery is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not consuming yet: `step` says what it is at.
    Starting { step: &'static str },
    /// Consumers on every planned queue, calling the worker.
    Consuming,
    /// A connection to the worker fails (refused, timed out, a TLS
    /// handshake refused): consuming is paused, probes back off.
    WorkerUnreachable,
    /// The broker failed (connecting, declaring, consuming): retried.
    BrokerDown,
    /// Delivery gave up: the worker's services cannot be delivered to.
    /// Needs a fix and a restart.
    Halted,
    /// The relay is stopping.
    Stopped,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting { .. } => "starting",
            Self::Consuming => "consuming",
            Self::WorkerUnreachable => "worker_unreachable",
            Self::BrokerDown => "broker_down",
            Self::Halted => "halted",
            Self::Stopped => "stopped",
        }
    }
}

/// One reading of the state.
#[derive(Debug, Clone)]
pub struct DeliveryState {
    pub phase: Phase,
    /// When `phase` began.
    pub since: SystemTime,
    /// The consumed queues, once planned.
    pub queues: Vec<String>,
    /// The latest failure (kept after a recovery, for the record).
    pub last_error: Option<String>,
}

/// The shared state: one writer (the delivery), any number of readers.
#[derive(Debug)]
pub struct DeliveryHealth {
    /// The worker's address, as configured (it carries no secret).
    addr: String,
    state: watch::Sender<DeliveryState>,
}

impl DeliveryHealth {
    pub fn new(addr: impl Into<String>) -> Self {
        let state = DeliveryState {
            phase: Phase::Starting {
                step: "not started yet",
            },
            since: SystemTime::now(),
            queues: Vec::new(),
            last_error: None,
        };
        Self {
            addr: addr.into(),
            state: watch::Sender::new(state),
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn snapshot(&self) -> DeliveryState {
        self.state.borrow().clone()
    }

    /// Sees each change (the gRPC health reporter re-checks on it).
    pub fn subscribe(&self) -> watch::Receiver<DeliveryState> {
        self.state.subscribe()
    }

    /// Moves to `phase` (its `since` restarts only on a change of phase)
    /// and records `error` as the latest failure when given.
    pub fn set(&self, phase: Phase, error: Option<String>) {
        self.state.send_if_modified(|state| {
            let moved = state.phase != phase;
            if moved {
                state.phase = phase;
                state.since = SystemTime::now();
            }
            let failed = error.is_some() && state.last_error != error;
            if failed {
                state.last_error = error;
            }
            moved || failed
        });
    }

    /// The queues delivery consumes (once it does).
    pub fn planned<'a>(&self, queues: impl IntoIterator<Item = &'a String>) {
        let queues: Vec<String> = queues.into_iter().cloned().collect();
        self.state.send_if_modified(|state| {
            let changed = state.queues != queues;
            state.queues = queues;
            changed
        });
    }

    /// Consuming `queues`.
    pub fn consuming<'a>(&self, queues: impl IntoIterator<Item = &'a String>) {
        self.planned(queues);
        self.set(Phase::Consuming, None);
    }

    /// Ready while consuming; otherwise why not, naming the worker.
    /// What `/readyz` takes from delivery: [`Self::readiness`], but a
    /// broker outage passes. In outbox mode `/readyz` never follows the
    /// broker (the outbox buffers what senders write meanwhile, and a pod
    /// taken out of its Service could not take their messages); delivery
    /// resumes by itself when the broker returns, and `/api/health` and
    /// the gRPC delivery service still say it is paused.
    pub fn pod_readiness(&self) -> Result<(), String> {
        let broker_down = matches!(self.state.borrow().phase, Phase::BrokerDown);
        if broker_down {
            return Ok(());
        }
        self.readiness()
    }

    pub fn readiness(&self) -> Result<(), String> {
        let state = self.state.borrow();
        let since = rfc3339(state.since);
        let error = state.last_error.as_deref().unwrap_or("none recorded");
        let addr = &self.addr;
        Err(match state.phase {
            Phase::Consuming => return Ok(()),
            Phase::Starting { step } => match &state.last_error {
                Some(e) => format!(
                    "delivery to {addr} not started ({step}) since {since}; last error: {e}"
                ),
                None => format!("delivery to {addr} not started ({step}) since {since}"),
            },
            Phase::WorkerUnreachable => {
                format!("the worker {addr} cannot be reached since {since}: {error}")
            }
            Phase::BrokerDown => {
                format!("delivery to {addr} paused by a broker failure since {since}: {error}")
            }
            Phase::Halted => format!("delivery to {addr} halted since {since}: {error}"),
            Phase::Stopped => format!("delivery to {addr} stopped (shutting down)"),
        })
    }
}

/// `time` as RFC 3339 (UTC), to the millisecond.
pub fn rfc3339(time: SystemTime) -> String {
    let time = time::OffsetDateTime::from(time);
    time.replace_millisecond(time.millisecond())
        .unwrap_or(time)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "?".to_owned())
}

/// An error with its causes, `a: b: c`, each said once: tonic's transport
/// error reads "transport error" alone, its cause (a refused connection, a
/// certificate the worker's TLS handshake was refused for) is the news.
pub fn describe(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let said = e.to_string();
        if !text.contains(&said) {
            let _ = write!(text, ": {said}");
        }
        cause = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_consuming_is_ready_and_the_reason_names_the_worker() {
        let health = DeliveryHealth::new("http://127.0.0.1:1");
        let e = health.readiness().unwrap_err();
        assert!(
            e.contains("http://127.0.0.1:1") && e.contains("not started"),
            "{e}"
        );
        health.set(Phase::WorkerUnreachable, Some("connection refused".into()));
        let e = health.readiness().unwrap_err();
        assert!(
            e.contains("cannot be reached") && e.contains("connection refused"),
            "{e}"
        );
        let since = health.snapshot().since;
        health.set(Phase::WorkerUnreachable, Some("timed out".into()));
        assert_eq!(
            health.snapshot().since,
            since,
            "the same phase keeps its since"
        );
        assert_eq!(health.snapshot().last_error.as_deref(), Some("timed out"));
        health.consuming(&["billing".to_owned()]);
        health.readiness().unwrap();
        assert_eq!(health.snapshot().queues, ["billing"]);
        health.set(Phase::BrokerDown, Some("connection reset".into()));
        health
            .pod_readiness()
            .expect("a broker outage does not fail the pod's readiness");
        let e = health.readiness().unwrap_err();
        assert!(
            e.contains("broker") && e.contains("connection reset"),
            "{e}"
        );
    }

    #[test]
    fn a_description_says_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot connect: {0}")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("refused"));
        assert_eq!(describe(&e), "cannot connect: refused");
    }
}
