//! The relay through a real PgBouncer in transaction pooling mode, with
//! fewer server connections than the relay has clients, so that every
//! transaction may land on another server session.

use super::{WITHIN, relays_each_row_once};
use crate::common::*;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// Debian's `pgbouncer` package (installed by deploy/local/services.sh).
const PGBOUNCER: &str = "/usr/sbin/pgbouncer";

/// A PgBouncer of this test's own, on a free port; killed when dropped.
struct PgBouncer {
    port: u16,
    dir: PathBuf,
    child: Child,
}

impl PgBouncer {
    async fn start() -> Self {
        let dir = std::env::temp_dir().join(unique("pgbouncer"));
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::fs::write(dir.join("users.txt"), "\"root\" \"\"\n").unwrap();
        std::fs::write(
            dir.join("pgbouncer.ini"),
            format!(
                "[databases]
test = host=127.0.0.1 port=5432 dbname=test user=root
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {users}
pool_mode = transaction
default_pool_size = 2
max_client_conn = 100
logfile = {log}
",
                users = dir.join("users.txt").display(),
                log = dir.join("pgbouncer.log").display(),
            ),
        )
        .unwrap();
        let mut cmd = Command::new(PGBOUNCER);
        // PgBouncer refuses to run as root; it drops to `postgres` itself.
        if unsafe { libc::geteuid() } == 0 {
            cmd.args(["-u", "postgres"]);
            let _ = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&dir)
                .status();
        }
        let child = cmd
            .arg(dir.join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pgbouncer (run deploy/local/services.sh)");
        let bouncer = Self { port, dir, child };
        let url = bouncer.url();
        let up = wait_until(WITHIN, || async {
            match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                Ok((client, conn)) => {
                    tokio::spawn(conn);
                    client.simple_query("SELECT 1").await.is_ok()
                }
                Err(_) => false,
            }
        })
        .await;
        assert!(up, "pgbouncer answers on port {port}");
        bouncer
    }

    fn url(&self) -> String {
        format!(
            "postgres://root@127.0.0.1:{}/test?sslmode=disable",
            self.port
        )
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn a_relay_behind_pgbouncer_in_transaction_mode_drains_each_row_once() {
    let bouncer = PgBouncer::start().await;
    let env = TestEnv::new("pgbouncer").await;
    // Four workers (six pool connections) over two server connections; no
    // LISTEN, which a transaction pooler cannot carry.
    let args = env.run_args_with(
        &bouncer.url(),
        AMQP_URL,
        &[
            "--concurrency",
            "4",
            "--batch-size",
            "100",
            "--wakeup",
            "off",
            "--grpc-addr",
            "none",
        ],
    );
    relays_each_row_once(&env, 2_000, args).await;
    assert!(
        bouncer.log().contains("login attempt: db=test user=root"),
        "the relay went through PgBouncer: {}",
        bouncer.log()
    );
    env.drop_schema().await;
}
