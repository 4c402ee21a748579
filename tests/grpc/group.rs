//! Group commit, driven directly: calls queued together share one
//! transaction, and one whose values the database refuses fails alone.

use super::*;
use outbox_relay::grpc::group::GroupCommit;
use outbox_relay::grpc::status::IngressError;
use outbox_relay::outbox::{Identifier, NewMessage, Outbox, PoolOptions, connect_pool};
use tonic::Code;

fn message(env: &TestEnv, i: usize, poisoned: bool) -> NewMessage {
    let mut headers = serde_json::Map::new();
    if poisoned {
        // Neither text nor jsonb can hold a NUL character.
        headers.insert("note".into(), "nul\0here".into());
    }
    NewMessage {
        message_id: Some(outbox_relay::outbox::MessageId::generate()),
        exchange: String::new(),
        routing_key: env.queue.clone(),
        payload: format!("m{i}").into_bytes(),
        content_type: None,
        headers,
        delay: Duration::ZERO,
        ordering_key: None,
    }
}

/// One writer, and every call queued before it runs (this test's runtime
/// has one thread: the writer gets to run only once all calls wait), so the
/// calls form one group with the poisoned ones inside it.
#[tokio::test]
async fn a_group_with_a_refused_call_stores_every_other_call_of_the_group() {
    let env = TestEnv::new("group_commit").await;
    let url: outbox_relay::config::DatabaseUrl = PG_URL.parse().unwrap();
    let pool = connect_pool(
        url.config().clone(),
        url.tls(),
        PoolOptions {
            max_size: 2,
            timeout: WITHIN,
        },
    )
    .unwrap();
    let schema = Identifier::parse(&env.schema).unwrap();
    let group = GroupCommit::start(Outbox::new(pool, schema), 1);
    let calls = (0..40).map(|i| {
        let poisoned = i % 10 == 3;
        let (group, call) = (group.clone(), vec![message(&env, i, poisoned)]);
        async move { (poisoned, group.store(call).await) }
    });
    let batch = vec![message(&env, 100, false), message(&env, 101, false)];
    let (results, batch_result) =
        tokio::join!(futures::future::join_all(calls), group.store(batch));
    batch_result.expect("a two-message call in the group is stored");
    for (poisoned, result) in results {
        match (poisoned, result) {
            (false, Ok(())) => {}
            (true, Err(e)) => {
                let e = IngressError::from(e);
                assert_eq!(e.code(), Code::InvalidArgument, "{e}");
            }
            (poisoned, other) => panic!("poisoned {poisoned}: {other:?}"),
        }
    }
    assert_eq!(
        rows(&env).await,
        36 + 2,
        "every call but the four refused ones"
    );
    env.drop_schema().await;
}
