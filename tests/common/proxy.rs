//! A TCP proxy the tests put between the relay and a service, to cut or stall
//! its connections without touching anyone else's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, Notify};
use tokio::task::JoinHandle;

pub struct FaultProxy {
    pub addr: SocketAddr,
    state: Arc<State>,
    accept: JoinHandle<()>,
}

struct State {
    target: SocketAddr,
    stalled: AtomicBool,
    resumed: Notify,
    refuse: AtomicBool,
    links: Mutex<Vec<JoinHandle<()>>>,
}

impl FaultProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            target,
            stalled: AtomicBool::new(false),
            resumed: Notify::new(),
            refuse: AtomicBool::new(false),
            links: Mutex::new(Vec::new()),
        });
        let accept = tokio::spawn(accept_loop(listener, state.clone()));
        Self {
            addr,
            state,
            accept,
        }
    }

    /// Resets every open connection (new ones are still accepted).
    pub async fn cut(&self) {
        for link in self.state.links.lock().await.drain(..) {
            link.abort();
        }
    }

    /// While refusing, new connections are closed at once.
    pub fn refuse(&self, on: bool) {
        self.state.refuse.store(on, Ordering::SeqCst);
    }

    /// Stops forwarding bytes in both directions until `resume`.
    pub fn stall(&self) {
        self.state.stalled.store(true, Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.state.stalled.store(false, Ordering::SeqCst);
        self.state.resumed.notify_waiters();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        if let Ok(mut links) = self.state.links.try_lock() {
            links.drain(..).for_each(|l| l.abort());
        }
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            return;
        };
        if state.refuse.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        let Ok(server) = TcpStream::connect(state.target).await else {
            continue;
        };
        let link = tokio::spawn(pipe(client, server, state.clone()));
        state.links.lock().await.push(link);
    }
}

async fn pipe(client: TcpStream, server: TcpStream, state: Arc<State>) {
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = copy(cr, sw, state.clone());
    let down = copy(sr, cw, state);
    tokio::select! { _ = up => {}, _ = down => {} }
}

async fn copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: Arc<State>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while state.stalled.load(Ordering::SeqCst) {
            let resumed = state.resumed.notified();
            if !state.stalled.load(Ordering::SeqCst) {
                break;
            }
            resumed.await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
