//! A stand-in for the EC2 instance metadata service (IMDSv2) on loopback, for the parent's
//! credentials client: `PUT /latest/api/token` hands out a session token, and the
//! `iam/security-credentials` paths answer only requests carrying it, like the real service.
//! Every request line is recorded, so tests can check what the client asked.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// How the stand-in behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Like IMDS with an instance role attached.
    Normal,
    /// No role attached: the listing answers 404.
    NoRole,
    /// IMDSv2 tokens refused (the `PUT` answers 403, as with the metadata service disabled).
    NoToken,
    /// Accepts connections and never answers.
    Silent,
    /// Answers 200 with an endless body.
    Flood,
}

#[derive(Debug)]
struct State {
    behaviour: Behaviour,
    document: String,
    requests: Vec<String>,
}

/// The stand-in; stops when dropped.
#[derive(Debug)]
pub struct FakeImds {
    /// Its address (`[aws_credentials] imds_endpoint`).
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

/// The session token it hands out.
pub const TOKEN: &str = "AQAEAFakeImdsSessionToken0123456789==";
/// The role it lists.
pub const ROLE: &str = "cosigner-parent";

impl FakeImds {
    /// Starts serving `document` (the credentials JSON) for [`ROLE`].
    ///
    /// # Panics
    /// If no loopback port can be bound.
    pub fn start(behaviour: Behaviour, document: &str) -> FakeImds {
        let listener = match TcpListener::bind("127.0.0.1:0") {
            Ok(l) => l,
            Err(e) => panic!("binding the fake IMDS: {e}"),
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => panic!("{e}"),
        };
        let state = Arc::new(Mutex::new(State {
            behaviour,
            document: document.to_owned(),
            requests: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (Arc::clone(&state), Arc::clone(&stop));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let s = Arc::clone(&s);
                std::thread::spawn(move || serve(conn, &s));
            }
        });
        FakeImds { addr, state, stop }
    }

    /// `METHOD PATH token=<yes|no>` of every request so far.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// Replaces the credentials document (a rotation).
    pub fn set_document(&self, document: &str) {
        document.clone_into(&mut self.lock().document);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for FakeImds {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(mut conn: TcpStream, state: &Mutex<State>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        match conn.read(&mut byte) {
            Ok(1) => head.extend_from_slice(&byte),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let (method, path) = (
        first.next().unwrap_or_default().to_owned(),
        first.next().unwrap_or_default().to_owned(),
    );
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    let token_ok = header("x-aws-ec2-metadata-token").as_deref() == Some(TOKEN);
    let (behaviour, document) = {
        let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
        s.requests.push(format!(
            "{method} {path} token={}",
            if token_ok { "yes" } else { "no" }
        ));
        (s.behaviour, s.document.clone())
    };
    let listing = "/latest/meta-data/iam/security-credentials/";
    let (status, body) = match behaviour {
        Behaviour::Silent => {
            std::thread::sleep(Duration::from_secs(10));
            return;
        }
        Behaviour::Flood => {
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\n\r\n");
            let chunk = [b'a'; 4096];
            for _ in 0..10_000 {
                if conn.write_all(&chunk).is_err() {
                    return;
                }
            }
            return;
        }
        Behaviour::NoToken if method == "PUT" => (403, String::new()),
        _ if method == "PUT" && path == "/latest/api/token" => {
            if header("x-aws-ec2-metadata-token-ttl-seconds").is_some() {
                (200, TOKEN.to_owned())
            } else {
                (400, String::new())
            }
        }
        _ if !token_ok => (401, String::new()),
        Behaviour::NoRole if path.starts_with(listing) => (404, String::new()),
        _ if path == listing => (200, format!("{ROLE}\n")),
        _ if path == format!("{listing}{ROLE}") => (200, document),
        _ => (404, String::new()),
    };
    let reason = if status == 200 { "OK" } else { "Error" };
    let _ = conn.write_all(
        format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
}
