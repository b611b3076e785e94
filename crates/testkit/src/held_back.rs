//! A key service that answers `200` with the headers and the first half of a document, then
//! holds the rest back for a while: a fetch stays in flight, and a test can see what happens
//! meanwhile (a configuration replaced, a refusal before the end). Every connection gets
//! the same answer. It listens on 127.0.0.1 and ends by itself: when dropped, or after 60 s.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub struct HeldBack {
    pub addr: SocketAddr,
    begun: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HeldBack {
    /// Serves `doc`, its second half `hold` after the first.
    pub fn start(doc: Vec<u8>, hold: Duration) -> HeldBack {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (begun, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let thread = {
            let (begun, stop) = (Arc::clone(&begun), Arc::clone(&stop));
            std::thread::spawn(move || serve(&listener, &doc, hold, &begun, &stop))
        };
        HeldBack {
            addr,
            begun,
            stop,
            thread: Some(thread),
        }
    }

    /// How many answers it has begun (headers and first half sent).
    pub fn begun(&self) -> usize {
        self.begun.load(Ordering::SeqCst)
    }
}

impl Drop for HeldBack {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(
    listener: &TcpListener,
    doc: &[u8],
    hold: Duration,
    begun: &AtomicUsize,
    stop: &AtomicBool,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let Ok((mut client, _)) = listener.accept() else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        client.set_nonblocking(false).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut request = [0u8; 4096];
        let _ = client.read(&mut request);
        let half = doc.len() / 2;
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            doc.len()
        );
        let _ = client.write_all(head.as_bytes());
        let _ = client.write_all(&doc[..half]);
        let _ = client.flush();
        begun.fetch_add(1, Ordering::SeqCst);
        // The rest comes late, if the client is still there to take it.
        let held = Instant::now();
        while !stop.load(Ordering::Relaxed) && held.elapsed() < hold {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = client.write_all(&doc[half..]);
    }
}
