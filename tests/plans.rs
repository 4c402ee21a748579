//! The relay's statements stay on their indexes however small the table was
//! when they were planned. A prepared statement switches to a generic plan
//! after five executions; fixed just after autovacuum analyzed a young
//! table (a fresh deployment), that plan was a sequential scan, which the
//! mark statement kept after the table had grown to many retained rows
//! (without `enable_seqscan=off` this test reads 100,000 rows by scans).

mod common;

use common::*;
use outbox_relay::App;
use outbox_relay::relay::Outcome;
use std::time::Duration;

const GROWN: i64 = 20_000;

#[tokio::test]
async fn statements_planned_on_a_young_table_do_not_scan_it_once_it_has_grown() {
    let env = TestEnv::new("plans").await;
    let app = App::build(env.run_args(&["--batch-size", "1"]))
        .await
        .unwrap();
    let mut relay = app.relay();
    // A young table that autovacuum has just analyzed (a few rows, one
    // page), then more one-row batches than the five executions after which
    // a prepared statement's generic plan is fixed.
    for round in 0..2 {
        if round == 1 {
            env.pg
                .batch_execute(&format!("VACUUM ANALYZE {}", env.table()))
                .await
                .unwrap();
        }
        for _ in 0..8 {
            env.insert_rows(1).await;
            let outcome = relay.relay_batch().await.unwrap();
            assert!(matches!(outcome, Outcome::Relayed(_)), "{outcome:?}");
        }
    }
    let grow = format!(
        "INSERT INTO {} (routing_key, payload, sent_at) SELECT 'gone', 'x', now() FROM generate_series(1, {GROWN})",
        env.table()
    );
    env.pg.batch_execute(&grow).await.unwrap();
    for _ in 0..5 {
        env.insert_rows(1).await;
        let outcome = relay.relay_batch().await.unwrap();
        assert!(matches!(outcome, Outcome::Relayed(_)), "{outcome:?}");
    }
    // The relay's backend reports its statistics some seconds after it
    // goes idle: wait until its 21 marks are counted.
    let stats = |column: &str| {
        format!(
            "SELECT {column} FROM pg_stat_user_tables WHERE schemaname = '{}' AND relname = 'outbox'",
            env.schema
        )
    };
    let counted = wait_until(Duration::from_secs(30), || async {
        env.scalar(&stats("n_tup_upd")).await >= 21
    })
    .await;
    assert!(
        counted,
        "the relay's statistics reached pg_stat_user_tables"
    );
    let read = env.scalar(&stats("seq_tup_read")).await;
    assert!(
        read < GROWN,
        "the relay read {read} rows by sequential scans of a {GROWN}-row table"
    );
    env.drop_schema().await;
}
