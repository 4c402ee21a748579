//! A destination's lane: its breaker, its metrics, and its sends running
//! on their own tasks.
//!
//! Invariants owned here:
//! - a send resolves to exactly one result per message, in order, and never
//!   later than its timeout (plus a grace for the task to report): a hung
//!   destination cannot hold a claim past the relay's step bound
//!   (invariant 4);
//! - while a destination's breaker is open, nothing is sent to it: its rows
//!   fail at once with [`SendError::Unreachable`] (not counted toward
//!   dead-lettering) and wait until [`Lane::retry_in`]; the first batch after
//!   that is the probe that closes it again;
//! - the breaker, like the relay's other fault reports, is logged when it
//!   opens and when it closes, not per row.

use super::{Destination, DestinationName, Message, Router, SendError};
use crate::metrics::{DestinationHandles, Metrics};
use crate::relay::ErrorBackoff;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// First and longest pause of a destination found down.
const BREAKER_FIRST: Duration = Duration::from_secs(1);
const BREAKER_MAX: Duration = Duration::from_secs(30);

/// A send that outlives its timeout by more than this is abandoned.
const REPORT_GRACE: Duration = Duration::from_secs(1);

/// One configured destination and its breaker.
pub struct Lane {
    name: DestinationName,
    destination: Arc<dyn Destination>,
    breaker: Mutex<Breaker>,
    metrics: DestinationHandles,
}

#[derive(Debug)]
struct Breaker {
    open_until: Option<Instant>,
    backoff: ErrorBackoff,
    last_error: Option<String>,
    since: Option<std::time::SystemTime>,
}

/// What health reports of a destination.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LaneState {
    pub name: String,
    pub kind: &'static str,
    /// False while its breaker is open.
    pub up: bool,
    /// Why it is down, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it went down (RFC 3339), when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub down_since: Option<String>,
}

/// A batch handed to a lane: its results come from a task, or at once.
#[derive(Debug)]
pub enum Dispatch {
    Running(JoinHandle<Vec<Result<(), SendError>>>),
    Failed(Vec<Result<(), SendError>>),
}

impl Dispatch {
    /// One result per message, in order.
    pub async fn results(self, count: usize) -> Vec<Result<(), SendError>> {
        match self {
            Self::Failed(results) => results,
            Self::Running(task) => match task.await {
                Ok(results) if results.len() == count => results,
                Ok(results) => {
                    let error = format!(
                        "the destination answered {} results for {count} messages",
                        results.len()
                    );
                    vec![Err(SendError::rejected(error)); count]
                }
                Err(e) => vec![Err(SendError::rejected(format!("the send failed: {e}"))); count],
            },
        }
    }
}

impl Lane {
    pub fn new(
        name: DestinationName,
        destination: Arc<dyn Destination>,
        metrics: &Metrics,
    ) -> Self {
        let metrics = metrics.destination(name.as_str());
        Self {
            name,
            destination,
            breaker: Mutex::new(Breaker {
                open_until: None,
                backoff: ErrorBackoff::new(BREAKER_FIRST, BREAKER_MAX),
                last_error: None,
                since: None,
            }),
            metrics,
        }
    }

    pub fn name(&self) -> &DestinationName {
        &self.name
    }

    /// How long until the breaker lets a call through (zero when closed).
    pub fn retry_in(&self) -> Duration {
        let breaker = self.breaker.lock().expect("poisoned");
        breaker.open_until.map_or(Duration::ZERO, |until| {
            until.saturating_duration_since(Instant::now())
        })
    }

    /// Sends `messages` on a task of its own, or fails them at once while
    /// the breaker is open.
    pub fn dispatch(self: &Arc<Self>, messages: Vec<Message>, timeout: Duration) -> Dispatch {
        let count = messages.len();
        let wait = self.retry_in();
        if !wait.is_zero() {
            let error = self.down_error(wait);
            self.metrics.record(0, count as u64, Duration::ZERO);
            return Dispatch::Failed(vec![Err(error); count]);
        }
        let lane = self.clone();
        let sending = self.destination.send(messages, timeout);
        Dispatch::Running(tokio::spawn(async move {
            let started = Instant::now();
            let results = match tokio::time::timeout(timeout + REPORT_GRACE, sending).await {
                Ok(results) => results,
                Err(_) => vec![Err(SendError::Timeout(timeout)); count],
            };
            lane.record(&results, started.elapsed());
            results
        }))
    }

    fn down_error(&self, wait: Duration) -> SendError {
        let breaker = self.breaker.lock().expect("poisoned");
        let cause = breaker.last_error.as_deref().unwrap_or("unreachable");
        SendError::Unreachable(format!(
            "destination {} is backed off after: {cause}; next try in {wait:?}",
            self.name
        ))
    }

    /// Counts a send and moves the breaker: any message accepted closes it;
    /// a send whose every failure says the destination is unwell opens it.
    fn record(&self, results: &[Result<(), SendError>], elapsed: Duration) {
        let confirmed = results.iter().filter(|r| r.is_ok()).count();
        self.metrics.record(
            confirmed as u64,
            (results.len() - confirmed) as u64,
            elapsed,
        );
        let unwell = results
            .iter()
            .find_map(|r| r.as_ref().err().filter(|e| e.opens_breaker()));
        let mut breaker = self.breaker.lock().expect("poisoned");
        match unwell {
            Some(error) if confirmed == 0 => {
                let pause = breaker.backoff.next_delay();
                if breaker.open_until.is_none() {
                    tracing::warn!(destination = %self.name, kind = self.destination.kind(),
                        error = %error, retry_in = ?pause,
                        "destination is down: its rows wait and retry, the others keep flowing");
                    breaker.since = Some(std::time::SystemTime::now());
                }
                breaker.open_until = Some(Instant::now() + pause);
                breaker.last_error = Some(error.to_string());
                self.metrics.set_up(false);
            }
            _ if confirmed > 0 && breaker.open_until.is_some() => {
                tracing::info!(destination = %self.name, "destination is back: its rows flow again");
                breaker.open_until = None;
                breaker.last_error = None;
                breaker.since = None;
                breaker.backoff.reset();
                self.metrics.set_up(true);
            }
            _ => {}
        }
    }

    pub fn state(&self) -> LaneState {
        let breaker = self.breaker.lock().expect("poisoned");
        let down = breaker.open_until.is_some();
        LaneState {
            name: self.name.to_string(),
            kind: self.destination.kind(),
            up: !down,
            error: breaker.last_error.clone().filter(|_| down),
            down_since: breaker.since.filter(|_| down).and_then(rfc3339),
        }
    }
}

fn rfc3339(at: std::time::SystemTime) -> Option<String> {
    let at = time::OffsetDateTime::from(at);
    at.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// Every configured destination, and the rules that route rows to them.
#[derive(Clone, Default)]
pub struct Lanes {
    router: Router,
    lanes: HashMap<DestinationName, Arc<Lane>>,
}

impl std::fmt::Debug for Lanes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lanes")
            .field("destinations", &self.lanes.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Lanes {
    /// `lanes` must hold every destination a rule of `router` names (but
    /// the default broker's); configuration validation makes sure of it.
    pub fn new(router: Router, lanes: Vec<Lane>) -> Self {
        let lanes = lanes
            .into_iter()
            .map(|lane| (lane.name.clone(), Arc::new(lane)))
            .collect();
        Self { router, lanes }
    }

    pub fn is_empty(&self) -> bool {
        self.lanes.is_empty()
    }

    /// The lane of a row routed by `exchange`; `None` for the default broker.
    pub fn route(&self, exchange: &str) -> Option<&Arc<Lane>> {
        if self.lanes.is_empty() {
            return None;
        }
        self.router
            .route(exchange)
            .and_then(|name| self.lanes.get(name))
    }

    /// The name of the destination `exchange` is routed to (the default
    /// broker's included), for the console and `show`.
    pub fn destination_of(&self, exchange: &str) -> &str {
        self.router
            .route(exchange)
            .map_or(DestinationName::DEFAULT, DestinationName::as_str)
    }

    pub fn states(&self) -> Vec<LaneState> {
        let mut states: Vec<LaneState> = self.lanes.values().map(|lane| lane.state()).collect();
        states.sort_by(|a, b| a.name.cmp(&b.name));
        states
    }

    /// Closes every destination's connections (shutdown).
    pub async fn close(&self) {
        let closing = self.lanes.values().map(|lane| lane.destination.close());
        futures::future::join_all(closing).await;
    }
}
