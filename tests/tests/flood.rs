//! Connection floods (issue 10, "anonymous denial of service"): idle sockets must not lock
//! everyone out of the parent, nor pile up threads in the enclave.
//!
//! Every socket here is on loopback: the "other source" is 127.0.0.2 (the whole of 127.0.0.0/8
//! is the loopback interface on Linux), which a socket is bound to before it connects. Every
//! loop is bounded, and every process and socket goes when the test ends.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use cosigner_client::session::Session;
use cosigner_client::trust::Trust;
use cosigner_protocol::wire::{Request, Response};
use cosigner_tests::Deployment;
use serde_bytes::ByteBuf;

/// The parent's default `max_connections_per_source`.
const DEFAULT_QUOTA: usize = 32;
/// Longest any wait for the other side to act may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(30);

/// A TCP connection to `to` from `from` (port chosen by the kernel), nothing sent.
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    use socket2::{Domain, SockAddr, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&SockAddr::from(SocketAddr::from((from, 0))))
        .unwrap();
    // Bounded: a full accept backlog only delays the handshake (SYN retries), never for ever.
    socket
        .connect_timeout(&SockAddr::from(to), Duration::from_secs(20))
        .unwrap();
    socket.into()
}

/// Whether the other side has closed `s` (EOF or reset): a non-blocking read that does not
/// block. Nothing is ever sent to these sockets, so any byte would be a failure too.
trait Closed {
    fn closed(&mut self) -> bool;
}

macro_rules! closed {
    ($t:ty) => {
        impl Closed for $t {
            fn closed(&mut self) -> bool {
                self.set_nonblocking(true).unwrap();
                let mut byte = [0u8; 1];
                match self.read(&mut byte) {
                    Ok(0) => true,
                    Ok(_) => panic!("the peer sent a byte to a silent connection"),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => false,
                    Err(e) if e.kind() == ErrorKind::ConnectionReset => true,
                    Err(e) => panic!("reading a flood socket: {e}"),
                }
            }
        }
    };
}
closed!(TcpStream);
closed!(UnixStream);

/// Waits (bounded) until `want(closed, open)` holds for `sockets`; returns (closed, open).
fn wait_for<S: Closed>(
    sockets: &mut [S],
    what: &str,
    want: impl Fn(usize, usize) -> bool,
) -> (usize, usize) {
    let started = Instant::now();
    loop {
        let closed = sockets
            .iter_mut()
            .map(|s| s.closed())
            .filter(|c| *c)
            .count();
        let open = sockets.len() - closed;
        if want(closed, open) {
            return (closed, open);
        }
        assert!(
            started.elapsed() < PATIENCE,
            "{what}: still {closed} closed, {open} open after {PATIENCE:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Opens `n` connections with `connect` to a server that keeps `held` of them: the others must be
/// closed at once, before the `handshake` timeout could have closed them (a refusal, not a
/// timeout). Returns the connections and when they were opened.
fn flood_over_limit<S: Closed>(
    n: usize,
    mut connect: impl FnMut() -> S,
    what: &str,
    held: usize,
    handshake: Duration,
) -> (Vec<S>, Instant) {
    let connected = Instant::now();
    let mut conns: Vec<S> = (0..n).map(|_| connect()).collect();
    let (closed, open) = wait_for(&mut conns, what, |closed, _| closed >= n - held);
    assert!(
        connected.elapsed() < handshake,
        "{what}: too slow to tell refusals from timeouts ({:?}); the machine is overloaded",
        connected.elapsed()
    );
    assert_eq!((closed, open), (n - held, held), "{what}");
    (conns, connected)
}

/// Waits until all of `silent` are closed, and checks it was the `handshake` timeout (counted from
/// `connected`) that closed them, not something before it; returns how long that took.
fn closed_at_handshake<S: Closed>(
    silent: &mut [S],
    what: &str,
    connected: Instant,
    handshake: Duration,
) -> Duration {
    wait_for(silent, what, |_, open| open == 0);
    let after = connected.elapsed();
    assert!(
        after >= handshake - Duration::from_millis(100),
        "{what}: closed after {after:?}, before the {handshake:?} handshake timeout"
    );
    after
}

/// The sum of `N` over the lines of `log` that contain `marker` and say `<verb> N connection`.
fn counted(log: &str, verb: &str, marker: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains(marker))
        .flat_map(|l| l.split(", "))
        .filter(|part| part.contains(marker))
        .filter_map(|part| {
            let after = part.split(verb).nth(1)?;
            after.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

/// Waits (bounded) until the summed count of `marker` in `logs()` reaches `n`; returns the
/// number of lines carrying it.
fn wait_for_count(logs: impl Fn() -> String, verb: &str, marker: &str, n: u64) -> usize {
    let started = Instant::now();
    loop {
        let log = logs();
        let got = counted(&log, verb, marker);
        if got >= n {
            assert_eq!(got, n, "more `{marker}` than expected:\n{log}");
            let lines: Vec<&str> = log.lines().filter(|l| l.contains(marker)).collect();
            eprintln!("{}", lines.join("\n"));
            return lines.len();
        }
        assert!(
            started.elapsed() < PATIENCE,
            "only {got} of {n} `{marker}` logged:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn create_and_sign(d: &Deployment, name: &str) {
    let w = cosigner_tests::wallets::create(d, name);
    cosigner_tests::wallets::signs(d, &w.home, &w);
}

/// 1024 idle sockets from one address (what used to fill the parent's global cap) take only that
/// address's quota; everyone else still gets attestation, a new wallet and a signature, and the
/// refusals are logged as counts, not a line each.
#[test]
fn one_source_with_1024_idle_sockets_does_not_lock_out_the_others() {
    // A handshake timeout longer than the test: the flood is held throughout.
    let d =
        Deployment::start_configured("", "\n[client_limits]\nhandshake_timeout_seconds = 300\n")
            .unwrap();
    let parent: SocketAddr = ([127, 0, 0, 1], d.provider.port).into();
    let started = Instant::now();
    let mut flood: Vec<TcpStream> = (0..1024)
        .map(|_| connect_from(Ipv4Addr::new(127, 0, 0, 2), parent))
        .collect();
    eprintln!("1024 connections from 127.0.0.2 in {:?}", started.elapsed());
    let (closed, open) = wait_for(&mut flood, "the flood beyond the quota", |closed, _| {
        closed >= 1024 - DEFAULT_QUOTA
    });
    assert_eq!(
        (closed, open),
        (1024 - DEFAULT_QUOTA, DEFAULT_QUOTA),
        "the parent keeps exactly the per-source quota of a silent source"
    );

    // From 127.0.0.1, while the flood holds its 32 slots.
    let status = d.cosigner(["status"]);
    status.ok();
    create_and_sign(&d, "alice");
    assert_eq!(
        wait_for(&mut flood, "the flood's quota", |_, open| open
            == DEFAULT_QUOTA)
        .1,
        DEFAULT_QUOTA,
        "the flood's sockets were held throughout"
    );

    let lines = wait_for_count(
        || d.provider.logs(),
        "refused ",
        "over the per-source quota",
        (1024 - DEFAULT_QUOTA) as u64,
    );
    let log = d.provider.logs();
    assert!(
        log.contains("(latest from 127.0.0.2)"),
        "the source is named:\n{log}"
    );
    // One line a second at most: the flood took a few seconds, not hundreds.
    let bound = usize::try_from(started.elapsed().as_secs()).unwrap() + 2;
    assert!(
        lines <= bound,
        "{lines} refusal lines in {:?}:\n{log}",
        started.elapsed()
    );
    eprintln!("{lines} refusal line(s) for 992 refusals");
}

/// A source at its quota is refused at once; its silent connections are closed by the handshake
/// timeout (not before), and then the source is served again. A connection that said something
/// and then fell silent is closed by the idle timeout.
#[test]
fn silent_connections_are_closed_and_a_flooding_source_recovers() {
    let handshake = Duration::from_secs(2);
    let idle = Duration::from_secs(3);
    let d = Deployment::start_configured(
        "",
        &format!(
            "\n[client_limits]\nmax_connections_per_source = 8\nhandshake_timeout_seconds = {}\n\
             idle_timeout_seconds = {}\n",
            handshake.as_secs(),
            idle.as_secs()
        ),
    )
    .unwrap();
    let parent: SocketAddr = ([127, 0, 0, 1], d.provider.port).into();

    // From 127.0.0.1 itself: 8 held, the rest closed at once.
    let (flood, connected) = flood_over_limit(
        64,
        || connect_from(Ipv4Addr::LOCALHOST, parent),
        "the flood beyond the quota",
        8,
        handshake,
    );

    // The 8 go at the handshake timeout, not before.
    let mut held: Vec<TcpStream> = Vec::new();
    for mut s in flood {
        if !s.closed() {
            held.push(s);
        }
    }
    let after = closed_at_handshake(&mut held, "the silent connections", connected, handshake);
    eprintln!("silent connections closed after {after:?}");

    // The source is served again.
    d.cosigner(["status"]).ok();

    // Some bytes (half a TLS record header), then silence: relayed to the enclave, which waits
    // for the rest; the parent's idle timeout ends it (before the enclave's 10 s handshake
    // timeout would).
    let mut quiet = TcpStream::connect(parent).unwrap();
    quiet.write_all(&[0x16, 0x03]).unwrap();
    let spoke = Instant::now();
    quiet.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut rest = Vec::new();
    match quiet.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty()),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
    }
    let after = spoke.elapsed();
    assert!(
        after >= idle - Duration::from_millis(100) && after < Duration::from_secs(9),
        "closed after {after:?}; the idle timeout is {idle:?}"
    );
    eprintln!("idle connection closed after {after:?}");

    let logs = || d.provider.logs();
    wait_for_count(logs, "refused ", "over the per-source quota of 8", 56);
    wait_for_count(
        logs,
        "closed ",
        "sent nothing within the handshake timeout 2 s",
        8,
    );
    wait_for_count(logs, "closed ", "idle for the idle timeout 3 s", 1);
}

/// The enclave, reached directly on its socket (as a hostile parent could): connections over its
/// cap are closed at once, silent ones at its handshake timeout, and an attested session that
/// falls silent at its idle timeout; the slots come back.
#[test]
fn the_enclave_caps_connections_and_closes_silent_and_idle_ones() {
    let handshake = Duration::from_secs(2);
    let idle = Duration::from_secs(2);
    let d = Deployment::start_configured(
        &format!(
            "\n[limits]\nmax_connections = 4\nhandshake_timeout_seconds = {}\n\
             idle_timeout_seconds = {}\n",
            handshake.as_secs(),
            idle.as_secs()
        ),
        "",
    )
    .unwrap();
    let socket = d.provider.hsm.dir().join("enclave.sock");

    // The enclave serves at most its cap.
    let (mut conns, connected) = flood_over_limit(
        10,
        || UnixStream::connect(&socket).unwrap(),
        "connections over the cap",
        4,
        handshake,
    );
    // The first four are the ones held (accepted in order).
    assert!(conns[..4].iter_mut().all(|c| !c.closed()));
    closed_at_handshake(&mut conns, "silent connections", connected, handshake);

    // The slots came back: a client gets a session; silent for longer than the idle timeout
    // (the parent's is 120 s), the enclave has ended it.
    let trust = Trust::load(&d.dir.path().join("trust.toml")).unwrap();
    let mut session = Session::connect(&d.provider.addr(), &trust).unwrap();
    let attest = Request::Attest {
        nonce: ByteBuf::from(vec![7u8; 32]),
    };
    assert!(matches!(
        session.call(&attest).unwrap(),
        Response::Attested { .. }
    ));
    std::thread::sleep(idle + Duration::from_secs(1));
    let e = session.call(&attest).unwrap_err();
    assert!(
        matches!(e, cosigner_client::ClientError::Connection { .. }),
        "{e}"
    );
    drop(session);
    d.cosigner(["status"]).ok();

    let logs = || d.provider.logs();
    wait_for_count(logs, "closed ", "at the cap of 4 open connections", 6);
    wait_for_count(logs, "closed ", "without a TLS handshake within 2 s", 4);
    wait_for_count(logs, "closed ", "idle for 2 s", 1);
}
