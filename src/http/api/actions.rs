//! What an operator changes, dead rows only: `POST
//! /api/messages/{key}/replay`, `POST /api/dead/replay` (by the list's
//! filters) and `DELETE /api/messages/{key}`. Replays run the CLI's own
//! `replay` statement; pending and sent rows belong to the relay and are
//! refused with 409. Every change is logged at info with who asked (audit).
//! A replay also makes the relay ask the broker again about exchanges it
//! found missing (`Broker::recheck_unusable_exchanges`): replays follow
//! fixes, which a cached answer must not hide.

use super::error::ApiError;
use super::messages::not_found;
use super::params::{replay_query, row_key};
use super::{ApiState, json};
use crate::outbox::{Change, RowKey};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;

/// Most dead rows one bulk replay takes; `more` says to call again.
pub const REPLAY_BATCH: i64 = 10_000;

type Api = State<Arc<ApiState>>;

/// The row id behind `key` (a message_id is looked up).
async fn resolve(api: &ApiState, key: &str) -> Result<i64, ApiError> {
    let key = row_key(key)?;
    match key {
        RowKey::Id(id) => Ok(id),
        RowKey::MessageId(_) => match api.outbox.detail(&key, 0).await? {
            Some(found) => Ok(found.row.id),
            None => Err(not_found(&key)),
        },
    }
}

/// The answer to a change of one row that did not happen.
fn refused(id: i64, change: Change, what: &str) -> ApiError {
    match change {
        Change::Missing => not_found(&RowKey::Id(id)),
        Change::NotDead(state) => ApiError::conflict(format!(
            "row {id} is {}, not dead: only dead rows can be {what}",
            state.as_str()
        )),
        Change::Done => unreachable!("a change that happened is not refused"),
    }
}

pub async fn replay_one(
    State(api): Api,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    let id = resolve(&api, &key).await?;
    match api.outbox.replay_one(id).await? {
        Change::Done => {
            api.broker.recheck_unusable_exchanges();
            api.wake.notify_one();
            tracing::info!(action = "replay", %peer, id, "API: dead row made pending again");
            Ok(json(StatusCode::OK, &json!({ "replayed": [id] })))
        }
        other => Err(refused(id, other, "replayed")),
    }
}

pub async fn replay_dead(
    State(api): Api,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let filter = replay_query(uri.query())?;
    let mut ids = api.outbox.dead_ids(&filter, REPLAY_BATCH + 1).await?;
    let more = ids.len() as i64 > REPLAY_BATCH;
    ids.truncate(REPLAY_BATCH as usize);
    let replayed = if ids.is_empty() {
        Vec::new()
    } else {
        api.outbox.replay(Some(&ids)).await?
    };
    if !replayed.is_empty() {
        api.broker.recheck_unusable_exchanges();
        api.wake.notify_one();
    }
    tracing::info!(action = "replay_dead", %peer, filter = ?filter, count = replayed.len(), more,
        "API: dead rows made pending again");
    Ok(json(
        StatusCode::OK,
        &json!({ "replayed": replayed, "count": replayed.len(), "more": more }),
    ))
}

pub async fn delete(
    State(api): Api,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    let id = resolve(&api, &key).await?;
    match api.outbox.delete_dead(id).await? {
        Change::Done => {
            tracing::info!(action = "delete", %peer, id, "API: dead row deleted");
            Ok(json(StatusCode::OK, &json!({ "deleted": id })))
        }
        other => Err(refused(id, other, "deleted")),
    }
}
