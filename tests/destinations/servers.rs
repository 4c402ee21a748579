//! A server of the test's own (nats-server with JetStream, redis-server) on
//! a free port with a data directory of its own, to kill and restart
//! without touching the shared servers other tests use.

use crate::common::wait_until;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const STARTS_WITHIN: Duration = Duration::from_secs(20);

pub struct Server {
    program: &'static str,
    args: Vec<String>,
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Server {
    /// nats-server with JetStream storing in a directory of its own.
    pub async fn nats(name: &str) -> Self {
        let (port, dir) = place(name);
        let args = ["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"]
            .iter()
            .map(|s| (*s).to_owned())
            .chain([dir.display().to_string()])
            .collect();
        Self::start(find("nats-server"), args, port, dir).await
    }

    /// redis-server writing every command to its append-only file before
    /// replying (`appendfsync always`): a reply is then on disk.
    pub async fn redis(name: &str) -> Self {
        let (port, dir) = place(name);
        let args = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            &dir.display().to_string(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        Self::start(find("redis-server"), args, port, dir).await
    }

    async fn start(program: &'static str, args: Vec<String>, port: u16, dir: PathBuf) -> Self {
        let mut server = Self {
            program,
            args,
            port,
            dir,
            child: None,
        };
        server.restart().await;
        server
    }

    /// Starts the server (again, on the same port and data) and waits until
    /// it accepts connections.
    pub async fn restart(&mut self) {
        let child = Command::new(self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {} ({e})", self.program));
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        let up = wait_until(STARTS_WITHIN, || async {
            tokio::net::TcpStream::connect(&addr).await.is_ok()
        })
        .await;
        assert!(up, "{} listens on {addr}", self.program);
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free port and a fresh data directory.
fn place(name: &str) -> (u16, PathBuf) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let dir = std::env::temp_dir().join(crate::common::unique(name));
    std::fs::create_dir_all(&dir).expect("a data directory");
    (port, dir)
}

/// The server's binary (Debian installs both under /usr/bin or /usr/sbin).
fn find(program: &'static str) -> &'static str {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/bin"] {
        let path = format!("{dir}/{program}");
        if std::path::Path::new(&path).exists() {
            return Box::leak(path.into_boxed_str());
        }
    }
    program
}
