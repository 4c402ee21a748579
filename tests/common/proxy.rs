//! A TCP fault proxy the tests put between the relay and a service, to break
//! its connections without touching anyone else's: cut (FIN), reset (RST),
//! refuse new connections, stall, delay every chunk, or cut each new
//! connection after N bytes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
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
    delay_ms: AtomicU64,
    /// 0: off; otherwise each new connection closes after this many bytes
    /// in either direction.
    cut_after: AtomicUsize,
    reset: Notify,
    accepted: AtomicUsize,
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
            delay_ms: AtomicU64::new(0),
            cut_after: AtomicUsize::new(0),
            reset: Notify::new(),
            accepted: AtomicUsize::new(0),
            links: Mutex::new(Vec::new()),
        });
        let accept = tokio::spawn(accept_loop(listener, state.clone()));
        Self {
            addr,
            state,
            accept,
        }
    }

    /// Closes every open connection (new ones are still accepted).
    pub async fn cut(&self) {
        for link in self.state.links.lock().await.drain(..) {
            link.abort();
        }
    }

    /// Resets every open connection with a TCP RST.
    pub async fn reset(&self) {
        self.state.reset.notify_waiters();
        self.state.links.lock().await.clear();
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

    /// Connections accepted and forwarded so far.
    pub fn connections(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Delays every forwarded chunk by `delay` (zero turns it off).
    pub fn delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Each connection opened from now on is closed after `bytes` bytes in
    /// either direction (`None` turns it off).
    pub fn cut_after(&self, bytes: Option<usize>) {
        self.state
            .cut_after
            .store(bytes.unwrap_or(0), Ordering::SeqCst);
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
        state.accepted.fetch_add(1, Ordering::SeqCst);
        let link = tokio::spawn(pipe(client, server, state.clone()));
        state.links.lock().await.push(link);
    }
}

async fn pipe(mut client: TcpStream, mut server: TcpStream, state: Arc<State>) {
    let limit = match state.cut_after.load(Ordering::SeqCst) {
        0 => usize::MAX,
        n => n,
    };
    let reset = {
        let (cr, cw) = client.split();
        let (sr, sw) = server.split();
        tokio::select! {
            _ = copy(cr, sw, &state, limit) => false,
            _ = copy(sr, cw, &state, limit) => false,
            () = state.reset.notified() => true,
        }
    };
    if reset {
        // Linger zero: closing sends RST instead of FIN.
        let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
        let _ = socket2::SockRef::from(&server).set_linger(Some(Duration::ZERO));
    }
}

async fn copy(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    state: &State,
    mut budget: usize,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n.min(budget),
        };
        while state.stalled.load(Ordering::SeqCst) {
            let resumed = state.resumed.notified();
            if !state.stalled.load(Ordering::SeqCst) {
                break;
            }
            resumed.await;
        }
        let delay = state.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        budget -= n;
        if budget == 0 {
            return;
        }
    }
}
