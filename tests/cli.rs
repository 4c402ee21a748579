//! The `outbox-relay` binary as an operator runs it: signals, exit codes,
//! configuration errors, migrations; what it says about itself
//! (`packaging`).

mod common;
mod observe;
mod packaging;
mod secure;

use common::*;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_outbox-relay");

fn relay(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env("OUTBOX_LOG_FORMAT", "text");
    for (key, _) in std::env::vars() {
        if key.starts_with("OUTBOX_") && key != "OUTBOX_LOG_FORMAT" {
            cmd.env_remove(key);
        }
    }
    // Tests run relays side by side: each takes free ports for gRPC and HTTP.
    cmd.env("OUTBOX_GRPC_ADDR", "127.0.0.1:0");
    cmd.env("OUTBOX_HTTP_ADDR", "127.0.0.1:0");
    cmd
}

async fn output(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("spawn outbox-relay"))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_backlog_exits_zero_in_time_with_every_published_row_marked() {
    let env = TestEnv::new("sigterm").await;
    env.insert_rows(30_000).await;
    let child = relay(&[
        "run",
        "--schema",
        &env.schema,
        "--batch-size",
        "200",
        "--concurrency",
        "4",
        "--confirm-timeout",
        "5s",
        "--shutdown-timeout",
        "10s",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || async {
            env.count_sent().await > 0
        })
        .await,
        "relay started draining"
    );
    let signalled = std::time::Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(
        status.status.success(),
        "exit 0, got {:?}: {stderr}",
        status.status
    );
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "within the shutdown timeout"
    );
    assert!(stderr.contains("stopped cleanly"), "{stderr}");

    let sent = env.count_sent().await;
    assert!(sent < 30_000, "stopped mid-backlog ({sent} sent)");
    // Nothing left claimed: every row can be locked by someone else now.
    let lockable = env
        .scalar("SELECT count(*) FROM (SELECT id FROM {t} FOR UPDATE SKIP LOCKED) s")
        .await;
    assert_eq!(lockable, 30_000);
    // Published exactly the marked rows: nothing in flight was abandoned.
    let got = env
        .consume(
            sent as usize,
            Duration::from_secs(30),
            Duration::from_millis(500),
        )
        .await;
    let counts = tally(&got);
    let marked: std::collections::HashSet<String> = env
        .pg
        .query(
            &format!(
                "SELECT message_id::text FROM {} WHERE sent_at IS NOT NULL",
                env.table()
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(counts.len(), marked.len(), "published == marked");
    assert!(counts.keys().all(|k| marked.contains(k)));
    assert!(counts.values().all(|&n| n == 1));
    env.drop_schema().await;
}

#[tokio::test]
async fn an_invalid_schema_identifier_is_refused_with_usage_exit_code() {
    let out = output(relay(&["run", "--schema", "app; DROP TABLE x"])).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("must start with a letter or '_'"),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_unreachable_database_fails_with_a_clear_error() {
    let out = output(relay(&[
        "run",
        "--database-url",
        "postgres://root@127.0.0.1:1/test",
        "--schema",
        "anything",
    ]))
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("127.0.0.1:1") && stderr.contains("database"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_missing_table_says_to_migrate_and_creates_nothing() {
    let schema = unique("unmigrated");
    let out = output(relay(&["run", "--schema", &schema])).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("outbox-relay migrate --schema {schema}")),
        "{stderr}"
    );
    let pg = pg_client().await;
    let exists: bool = pg
        .query_one("SELECT to_regnamespace($1) IS NOT NULL", &[&schema])
        .await
        .unwrap()
        .get(0);
    assert!(!exists, "a failed start creates nothing");
}

#[tokio::test]
async fn bad_urls_and_durations_are_refused_before_connecting() {
    for (args, expect) in [
        (vec!["run", "--database-url", "mysql://x/y"], "postgres://"),
        (vec!["run", "--amqp-url", "http://x/"], "amqp://"),
        (vec!["run", "--poll-interval", "soon"], "500ms"),
        (vec!["run", "--batch-size", "0"], "batch-size"),
    ] {
        let out = output(relay(&args)).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
    }
    let out = output(relay(&[
        "run",
        "--confirm-timeout",
        "30s",
        "--shutdown-timeout",
        "5s",
    ]))
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--confirm-timeout"));
}

#[tokio::test]
async fn the_password_never_appears_in_logs() {
    let schema = unique("secret");
    let out = output(relay(&[
        "run",
        "--schema",
        &schema,
        "--amqp-url",
        "amqp://guest:hunter2@127.0.0.1:5672/%2f",
        "--database-url",
        "postgres://root:hunter2@127.0.0.1:5432/test",
    ]))
    .await;
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains("hunter2"), "{all}");
    assert!(all.contains("***"), "the URL is shown redacted: {all}");
    // At every log level, through a broker login that fails and one that
    // works (the drivers' own trace output included).
    for (password, level) in [
        ("hunter2", "trace"),
        ("guest", "trace"),
        ("hunter2", "debug"),
    ] {
        let mut cmd = relay(&[
            "tail",
            "--queue",
            "q_no_such_queue_for_secrets",
            "--count",
            "1",
            "--amqp-url",
            &format!("amqp://guest:{password}@127.0.0.1:5672/%2f"),
        ]);
        cmd.env("OUTBOX_LOG", level);
        let out = output(cmd).await;
        let all = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{all}");
        assert!(!all.contains(&format!(":{password}@")), "{level}: {all}");
        assert!(!all.contains("\\0guest\\0"), "no SASL response: {all}");
    }
}

#[tokio::test]
async fn migrating_twice_is_a_no_op() {
    let schema = unique("migrate_twice");
    let first = output(relay(&["migrate", "--schema", &schema])).await;
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let pg = pg_client().await;
    let snapshot = "SELECT string_agg(c.relname || ':' || c.relkind::text || ':' || c.relfilenode::text, ',' ORDER BY c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1";
    let before: String = pg.query_one(snapshot, &[&schema]).await.unwrap().get(0);
    let applied_at: String = pg
        .query_one(
            &format!(
                "SELECT string_agg(applied_at::text, ',') FROM \"{schema}\".outbox_migrations"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);

    let second = output(relay(&["migrate", "--schema", &schema])).await;
    assert!(second.status.success());
    let report: serde_json::Value = serde_json::from_slice(&second.stdout).unwrap();
    assert_eq!(report["applied"], serde_json::json!([]));
    assert_eq!(
        report["already_applied"],
        serde_json::json!([
            "0001_outbox",
            "0002_wakeup",
            "0003_browse",
            "0004_text_message_id",
            "0005_route_indexes",
            "0006_claim_function",
            "0007_ordering_key"
        ])
    );
    let after: String = pg.query_one(snapshot, &[&schema]).await.unwrap().get(0);
    let applied_again: String = pg
        .query_one(
            &format!(
                "SELECT string_agg(applied_at::text, ',') FROM \"{schema}\".outbox_migrations"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(before, after);
    assert_eq!(applied_at, applied_again);
    pg.batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await
        .unwrap();
}

#[tokio::test]
async fn migrate_switches_the_wakeup_trigger_and_a_rerun_keeps_the_choice() {
    let schema = unique("trigger");
    let state = |extra: &'static [&'static str]| {
        let schema = schema.clone();
        async move {
            let mut args = vec!["migrate", "--schema", schema.as_str()];
            args.extend_from_slice(extra);
            let out = output(relay(&args)).await;
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            report["wakeup_trigger"]
                .as_bool()
                .expect("wakeup_trigger reported")
        }
    };
    assert!(!state(&[]).await, "created disabled");
    assert!(state(&["--wakeup-trigger", "enable"]).await);
    assert!(state(&[]).await, "a plain re-run keeps it enabled");
    assert!(!state(&["--wakeup-trigger", "disable"]).await);
    let bad = output(relay(&[
        "migrate",
        "--schema",
        &schema,
        "--wakeup-trigger",
        "maybe",
    ]))
    .await;
    assert_eq!(bad.status.code(), Some(2));
    pg_client()
        .await
        .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_sql_files_apply_with_psql_as_documented() {
    let schema = unique("psql");
    // Every file under sql/, in order, as the README says.
    let mut files: Vec<_> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/sql"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    assert!(files.len() >= 2);
    for _ in 0..2 {
        let out = output({
            let mut c = Command::new("psql");
            c.args([
                PG_URL,
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "--single-transaction",
                "-v",
                &format!("schema={schema}"),
            ]);
            for file in &files {
                c.arg("-f").arg(file);
            }
            c
        })
        .await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The relay accepts the psql-made table and sees the migration recorded.
    let out = output(relay(&["migrate", "--schema", &schema])).await;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["applied"], serde_json::json!([]));
    let out = output(relay(&["send", "--schema", &schema, "-k", "q", "hi"])).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    pg_client()
        .await
        .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await
        .unwrap();
}

#[tokio::test]
async fn send_show_stats_and_replay_work_from_the_command_line() {
    let env = TestEnv::new("admin").await;
    let id = "6f1c1d1e-0000-4000-8000-000000000001";
    let send = |extra: &[&str]| {
        let mut args = vec![
            "send",
            "--schema",
            &env.schema,
            "-k",
            &env.queue,
            "-H",
            "kind=test",
            "--message-id",
            id,
        ];
        args.extend_from_slice(extra);
        relay(&args)
    };
    let first = output(send(&["payload one"])).await;
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let again = output(send(&["payload two"])).await;
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(
        again["duplicate"], true,
        "a repeated message_id is stored once"
    );

    let shown = output(relay(&["show", "--schema", &env.schema, id])).await;
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["headers"]["kind"], "test");
    assert_eq!(shown["payload_bytes"], 11);
    assert!(shown["sent_at"].is_null());

    let stats = output(relay(&["stats", "--schema", &env.schema])).await;
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(
        (stats["pending"].as_i64(), stats["dead"].as_i64()),
        (Some(1), Some(0))
    );

    env.pg
        .execute(
            &format!("UPDATE {} SET dead_at = now(), attempts = 9", env.table()),
            &[],
        )
        .await
        .unwrap();
    let replay = output(relay(&["replay", "--schema", &env.schema, "--all"])).await;
    let replay: serde_json::Value = serde_json::from_slice(&replay.stdout).unwrap();
    assert_eq!(replay["replayed"].as_array().unwrap().len(), 1);
    assert_eq!(
        env.scalar("SELECT count(*) FROM {t} WHERE dead_at IS NULL AND attempts = 0")
            .await,
        1
    );
    env.drop_schema().await;
}

/// The schema of migrations 0001-0003, with rows in every state and ids
/// bound as uuid (as applications did): 0004 keeps every row and its id,
/// and from then on any text is an id, once.
#[tokio::test]
async fn migration_0004_keeps_every_row_and_makes_message_id_text() {
    use outbox_relay::outbox::{Identifier, migrate};
    let schema = unique("upgrade");
    let pg = pg_client().await;
    let ident = Identifier::parse(&schema).unwrap();
    for m in &migrate::MIGRATIONS[..3] {
        pg.batch_execute(&migrate::render(m.sql, &ident))
            .await
            .unwrap();
    }
    let t = format!("\"{schema}\".outbox");
    let given = uuid::Uuid::new_v4();
    pg.execute(
        &format!("INSERT INTO {t} (message_id, routing_key, payload) VALUES ($1, 'q', 'given')"),
        &[&given],
    )
    .await
    .unwrap();
    pg.batch_execute(&format!(
        "INSERT INTO {t} (routing_key, payload, sent_at, dead_at)
         SELECT 'q', convert_to('p' || g, 'UTF8'), CASE WHEN g % 3 = 1 THEN now() END,
                CASE WHEN g % 3 = 2 THEN now() END
         FROM generate_series(1, 500) g"
    ))
    .await
    .unwrap();
    let snapshot = format!(
        "SELECT count(*)::text || '|' || string_agg(concat_ws(':', id, message_id::text, payload,
                sent_at, dead_at, attempts), ',' ORDER BY id) FROM {t}"
    );
    let before: String = pg.query_one(&snapshot, &[]).await.unwrap().get(0);
    assert!(before.starts_with("501|"), "{before}");

    // A relay of this version refuses the old shape, saying what to do.
    let out = output(relay(&["run", "--schema", &schema])).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("0004_text_message_id"), "{stderr}");
    assert!(stderr.contains("outbox-relay migrate"), "{stderr}");

    let out = output(relay(&["migrate", "--schema", &schema])).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["applied"],
        serde_json::json!([
            "0004_text_message_id",
            "0005_route_indexes",
            "0006_claim_function",
            "0007_ordering_key"
        ])
    );
    let after: String = pg.query_one(&snapshot, &[]).await.unwrap().get(0);
    assert_eq!(before, after, "every row, id and state kept");
    let column: String = pg
        .query_one(
            "SELECT format_type(atttypid, NULL) FROM pg_attribute
             WHERE attrelid = to_regclass($1) AND attname = 'message_id'",
            &[&t],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(column, "text");
    let with = |id: &str| {
        let sql = format!("SELECT count(*) FROM {t} WHERE message_id = $1");
        let pg = &pg;
        let id = id.to_owned();
        async move { pg.query_one(&sql, &[&id]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(with(&given.to_string()).await, 1, "lowercase, hyphenated");

    // Still one row per id; the default is a UUID as text; the check holds.
    let insert = format!(
        "INSERT INTO {t} (message_id, routing_key, payload) VALUES ($1, 'q', 'again')
         ON CONFLICT (message_id) DO NOTHING"
    );
    let again = pg.execute(&insert, &[&given.to_string()]).await.unwrap();
    assert_eq!(again, 0, "a repeated id is stored once");
    // As CHANGELOG.md says: a uuid::Uuid no longer binds to the column (the
    // client checks it against the inferred type); `$1::uuid` still works.
    let e = pg.execute(&insert, &[&given]).await.unwrap_err();
    let cause = std::error::Error::source(&e).map(ToString::to_string);
    assert!(
        cause
            .as_deref()
            .is_some_and(|c| c.contains("cannot convert")),
        "{e:?}"
    );
    let cast = insert.replace("($1,", "($1::uuid,");
    assert_eq!(
        pg.execute(&cast, &[&uuid::Uuid::new_v4()]).await.unwrap(),
        1
    );
    let made: String = pg
        .query_one(
            &format!(
                "INSERT INTO {t} (routing_key, payload) VALUES ('q', 'x') RETURNING message_id"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(uuid::Uuid::parse_str(&made).is_ok(), "{made}");
    for bad in [String::new(), "m".repeat(256)] {
        let e = pg.execute(&insert, &[&bad]).await.unwrap_err();
        assert_eq!(
            e.code(),
            Some(&tokio_postgres::error::SqlState::CHECK_VIOLATION),
            "{e}"
        );
    }

    // `send` takes any text as the id, once; `show` finds it by that text.
    let text_id = "Order 7/v2: ünïcode";
    let send = || {
        relay(&[
            "send",
            "--schema",
            &schema,
            "-k",
            "q",
            "--message-id",
            text_id,
            "hi",
        ])
    };
    let first: serde_json::Value = serde_json::from_slice(&output(send()).await.stdout).unwrap();
    assert_eq!(first["message_id"], text_id);
    let second: serde_json::Value = serde_json::from_slice(&output(send()).await.stdout).unwrap();
    assert_eq!(second["duplicate"], true);
    let shown = output(relay(&["show", "--schema", &schema, text_id])).await;
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["message_id"], text_id);
    assert_eq!(shown["id"], first["id"]);
    let refused = output(relay(&[
        "send",
        "--schema",
        &schema,
        "-k",
        "q",
        "--message-id",
        &"m".repeat(256),
        "x",
    ]))
    .await;
    assert_eq!(refused.status.code(), Some(2), "refused as a bad argument");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("at most 255"));
    pg.batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await
        .unwrap();
}
