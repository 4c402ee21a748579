//! Connecting to what production runs: real TLS to both services (the test
//! PKI and listeners of `deploy/local/tls.sh`), client certificates,
//! secrets from files, and a real PgBouncer in transaction pooling mode.

mod pgbouncer;

use super::{output, relay};
use crate::common::*;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

/// Where `deploy/local/tls.sh` leaves the test PKI.
const TLS_DIR: &str = "/etc/outbox-relay-test/tls";
const WITHIN: Duration = Duration::from_secs(30);
const LINGER: Duration = Duration::from_millis(500);

fn pki(file: &str) -> String {
    format!("{TLS_DIR}/{file}")
}

/// The TLS-only role `outbox_tls` (pg_hba: `hostssl ... cert`), verified
/// against the test CA, logging in with its client certificate.
fn pg_tls_url(host: &str, extra: &str) -> String {
    format!(
        "postgres://outbox_tls@{host}:5432/test?sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}{extra}",
        pki("ca.pem"),
        pki("client-pg.pem"),
        pki("client-pg.key")
    )
}

fn amqps_url(extra: &str) -> String {
    format!(
        "amqps://guest:guest@localhost:5671/%2f?cacertfile={}{extra}",
        pki("ca.pem")
    )
}

/// Lets the TLS-only role work on this test's schema.
async fn grant_tls_role(env: &TestEnv) {
    let s = &env.schema;
    env.pg
        .batch_execute(&format!(
            "GRANT USAGE ON SCHEMA \"{s}\" TO outbox_tls;
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA \"{s}\" TO outbox_tls;
             GRANT USAGE ON ALL SEQUENCES IN SCHEMA \"{s}\" TO outbox_tls"
        ))
        .await
        .expect("grant the TLS role");
}

/// Relays `n` rows with `args` and checks each arrived exactly once and
/// was marked sent.
async fn relays_each_row_once(env: &TestEnv, n: usize, args: outbox_relay::config::RunArgs) {
    env.insert_rows(n).await;
    let running = Running::start(args).await;
    let got = env.consume(n, WITHIN, LINGER).await;
    let counts = tally(&got);
    assert_eq!(counts.len(), n, "every row arrived");
    assert!(counts.values().all(|&c| c == 1), "and only once");
    assert!(
        wait_until(WITHIN, || async { env.count_sent().await == n as i64 }).await,
        "every row marked sent"
    );
    running.stop().await.expect("stops cleanly");
}

#[tokio::test]
async fn relaying_over_verified_tls_to_both_services_delivers_each_row_once() {
    let env = TestEnv::new("tls_e2e").await;
    grant_tls_role(&env).await;
    let app_name = unique("tls_app");
    let args = env.run_args_with(
        &pg_tls_url("localhost", &format!("&application_name={app_name}")),
        &amqps_url(""),
        &[],
    );
    relays_each_row_once(&env, 300, args).await;
    // The server saw only encrypted sessions from the relay (it also
    // refuses the role in plaintext, see pg_hba.conf).
    let sessions = env
        .scalar(&format!(
            "SELECT count(*) FILTER (WHERE NOT s.ssl) * 1000 + count(*) FROM pg_stat_activity a
             JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = '{app_name}'"
        ))
        .await;
    assert_eq!(sessions / 1000, 0, "no plaintext session");
    env.drop_schema().await;
}

#[tokio::test]
async fn a_client_certificate_logs_in_to_rabbitmq_with_external() {
    let env = TestEnv::new("tls_external").await;
    grant_tls_role(&env).await;
    // No user or password in the URL: the certificate (CN=outbox_external)
    // is the identity.
    let amqp = format!(
        "amqps://localhost:5671/%2f?cacertfile={}&certfile={}&keyfile={}&auth_mechanism=external",
        pki("ca.pem"),
        pki("client-amqp.pem"),
        pki("client-amqp.key")
    );
    let args = env.run_args_with(&pg_tls_url("localhost", ""), &amqp, &[]);
    relays_each_row_once(&env, 50, args).await;
    env.drop_schema().await;
}

/// `cmd` after `edit`, for `output`.
fn with(
    mut cmd: std::process::Command,
    edit: impl FnOnce(&mut std::process::Command),
) -> std::process::Command {
    edit(&mut cmd);
    cmd
}

/// A one-shot command against a misconfigured TLS connection fails with
/// a non-zero exit and an error that names the cause.
async fn refused(args: &[&str], cause: &str) {
    let out = output(relay(args)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(
        stderr.contains(cause),
        "{args:?} should say {cause:?}: {stderr}"
    );
}

#[tokio::test]
async fn wrong_ca_wrong_host_and_tls_mismatches_are_clear_errors_of_one_shot_commands() {
    let other_ca = format!(
        "postgres://outbox_tls@localhost:5432/test?sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        pki("other-ca.pem"),
        pki("client-pg.pem"),
        pki("client-pg.key")
    );
    refused(&["stats", "--database-url", &other_ca], "UnknownIssuer").await;
    // Connects to 127.0.0.1 but expects the certificate of wrong.example.
    let wrong_host = pg_tls_url("wrong.example", "&hostaddr=127.0.0.1");
    refused(
        &["stats", "--database-url", &wrong_host],
        "certificate not valid for name",
    )
    .await;
    // A server that requires TLS, asked for none.
    refused(
        &[
            "stats",
            "--database-url",
            "postgres://outbox_tls@localhost:5432/test?sslmode=disable",
        ],
        "no encryption",
    )
    .await;
    let queue = ["tail", "--queue", "q_tls_refused", "--count", "1"];
    let with = |url: String| {
        let mut args: Vec<String> = queue.iter().map(|s| s.to_string()).collect();
        args.extend(["--amqp-url".into(), url]);
        args
    };
    for (url, cause) in [
        (
            amqps_url("").replace("ca.pem", "other-ca.pem"),
            "UnknownIssuer",
        ),
        (
            amqps_url("&server_name_indication=wrong.example"),
            "certificate not valid for name",
        ),
        // A plaintext server behind an amqps URL: never a silent downgrade.
        (amqps_url("").replace(":5671", ":5672"), "TLS handshake"),
        // A TLS server behind an amqp URL.
        (
            "amqp://guest:guest@localhost:5671/%2f".to_owned(),
            "use amqps://",
        ),
    ] {
        let args = with(url);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&args, cause).await;
    }
}

/// Serves TLS with `cert` on a free port of 127.0.0.1; with `postgres`,
/// first answers PostgreSQL's SSLRequest with 'S' as a server does.
async fn tls_server(cert: &str, key: &str, postgres: bool) -> std::net::SocketAddr {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let certs = CertificateDer::pem_file_iter(pki(cert))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(pki(key)).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if postgres {
                    let mut request = [0u8; 8];
                    if tcp.read_exact(&mut request).await.is_err()
                        || tcp.write_all(b"S").await.is_err()
                    {
                        return;
                    }
                }
                // The client is expected to give up during the handshake.
                let _ = acceptor.accept(tcp).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_expired_certificate_is_refused_by_both_clients() {
    let pg = tls_server("expired.pem", "expired.key", true).await;
    let url = format!(
        "postgres://outbox_tls@localhost:{}/test?sslmode=verify-full&sslrootcert={}",
        pg.port(),
        pki("ca.pem")
    );
    refused(&["stats", "--database-url", &url], "certificate expired").await;
    let mq = tls_server("expired.pem", "expired.key", false).await;
    let url = amqps_url("").replace(":5671", &format!(":{}", mq.port()));
    refused(
        &[
            "tail",
            "--queue",
            "q_expired",
            "--count",
            "1",
            "--amqp-url",
            &url,
        ],
        "certificate expired",
    )
    .await;
}

#[tokio::test]
async fn run_keeps_retrying_a_broker_it_cannot_verify_logs_why_and_publishes_nothing() {
    let env = TestEnv::new("tls_retry").await;
    env.insert_rows(20).await;
    let mut child = relay(&[
        "run",
        "--schema",
        &env.schema,
        "--amqp-url",
        &amqps_url("").replace("ca.pem", "other-ca.pem"),
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let log = watch_stderr(&mut child);
    let failures = || log.lock().unwrap().matches("UnknownIssuer").count();
    let retried = wait_until(WITHIN, || async { failures() >= 2 }).await;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    let log = log.lock().unwrap().clone();
    assert!(retried, "the cause is logged on each retry: {log}");
    assert!(status.success(), "and SIGTERM still stops it: {log}");
    assert_eq!(env.count_sent().await, 0, "nothing marked sent");
    let got = env.consume(1, LINGER, Duration::ZERO).await;
    assert!(got.is_empty(), "nothing published");
    env.drop_schema().await;
}

#[tokio::test]
async fn secrets_come_from_files_with_trailing_newlines_trimmed() {
    let env = TestEnv::new("secret_files").await;
    env.insert_rows(3).await;
    let dir = std::env::temp_dir().join(unique("secrets"));
    std::fs::create_dir_all(&dir).unwrap();
    let db_file = dir.join("database-url");
    std::fs::write(&db_file, format!("{PG_URL}\n")).unwrap();
    let out = output(with(relay(&["stats", "--schema", &env.schema]), |c| {
        c.env("OUTBOX_DATABASE_URL_FILE", &db_file);
    }))
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"pending\":3"), "{stdout}");

    // Both a value and its file: refused, naming both, showing neither.
    let out = output(with(
        relay(&[
            "stats",
            "--database-url",
            "postgres://root:Sup3rS3cret@127.0.0.1/test",
        ]),
        |c| {
            c.env("OUTBOX_DATABASE_URL_FILE", &db_file);
        },
    ))
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--database-url-file") && stderr.contains("--database-url"),
        "{stderr}"
    );
    assert!(!stderr.contains("Sup3rS3cret"), "{stderr}");

    // A file whose content is invalid: the file is named, its content not.
    let bad = dir.join("amqp-url");
    std::fs::write(&bad, "amqp://guest:Pw1#Secret2@127.0.0.1:5672/%2f\n").unwrap();
    let out = output(with(
        relay(&["tail", "--queue", "q", "--amqp-url-file"]),
        |c| {
            c.arg(&bad);
        },
    ))
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&bad.display().to_string()), "{stderr}");
    assert!(!stderr.contains("Secret2"), "{stderr}");
    let out = output(relay(&[
        "stats",
        "--database-url-file",
        "/nonexistent/db-url",
    ]))
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/db-url"));

    // The token file feeds --grpc-token.
    let token = dir.join("token");
    std::fs::write(&token, "t0ken-from-file\r\n").unwrap();
    let cli = outbox_relay::config::Cli::try_parse_with_files([
        "outbox-relay".as_ref(),
        "run".as_ref(),
        "--grpc-token-file".as_ref(),
        token.as_os_str(),
    ])
    .unwrap();
    let outbox_relay::config::Command::Run(args) = cli.command else {
        unreachable!()
    };
    assert_eq!(args.grpc.grpc_token.unwrap().expose(), "t0ken-from-file");
    std::fs::remove_dir_all(&dir).unwrap();
    env.drop_schema().await;
}

#[tokio::test]
async fn a_default_url_beyond_loopback_is_warned_about() {
    let schema = unique("default_url");
    let run = |addr: &str| {
        let mut cmd = relay(&["run", "--schema", &schema, "--grpc-addr", addr]);
        cmd.env("OUTBOX_DATABASE_URL", PG_URL);
        cmd
    };
    // The table is missing, so `run` stops right after its start checks.
    let out = output(run("0.0.0.0:0")).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("built-in local quickstart URL"), "{stderr}");
    assert!(
        stderr.contains("OUTBOX_AMQP_URL"),
        "the broker's default: {stderr}"
    );
    assert!(
        !stderr.contains("OUTBOX_DATABASE_URL_FILE"),
        "the database URL was set: {stderr}"
    );
    let out = output(run("127.0.0.1:0")).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("quickstart"),
        "loopback is a local setup: {stderr}"
    );
}
