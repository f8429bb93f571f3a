//! `cosigner-parent` in process: the blob store on real SQLite files and on a real PostgreSQL
//! server (the same tests on both engines, `on_both_engines!`; the cluster is
//! `cosigner_tests::postgres`'s), the store protocol over real unix sockets, the relay between a
//! TCP client and a fake enclave, and the configuration's refusals. PKCS#11 only in the last
//! test: the parent binary on PostgreSQL serving a real enclave through a wallet's life.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cosigner_parent::pg::{PgDatabase, PgStore, SCHEMA_VERSION as PG_SCHEMA_VERSION};
use cosigner_parent::store::database::{Database, PostgresConfig};
use cosigner_parent::store::{MAX_VALUE_LEN, check_key};
use cosigner_parent::store_server::serve_store;
use cosigner_parent::{
    Config, EnclaveAddr, Parent, ParentError, RunningParent, SqliteStore, Store,
};
use cosigner_protocol::frame::{MAX_FRAME_LEN, read_frame, write_frame};
use cosigner_protocol::wire::{
    ErrorKind, Request, StoreRequest, StoreResponse, WalletId, decode, encode,
};
use cosigner_tests::postgres::{Backend, database_for};
use serde_bytes::ByteBuf;
use tempfile::TempDir;

const TIMEOUT: Duration = Duration::from_secs(10);

fn tempdir() -> TempDir {
    TempDir::with_prefix("cosigner-parent-").unwrap()
}

fn put(key: &str, value: &[u8]) -> StoreRequest {
    StoreRequest::Put {
        key: key.into(),
        value: ByteBuf::from(value.to_vec()),
    }
}

fn get(key: &str) -> StoreRequest {
    StoreRequest::Get { key: key.into() }
}

/// Sends one request frame and reads one response frame.
fn ask(stream: &mut UnixStream, request: &StoreRequest) -> StoreResponse {
    write_frame(stream, &encode(request).unwrap()).unwrap();
    let frame = read_frame(stream).unwrap().expect("a response frame");
    decode(&frame).unwrap()
}

fn value(v: &[u8]) -> StoreResponse {
    StoreResponse::Value {
        value: Some(ByteBuf::from(v.to_vec())),
    }
}

fn assert_error(response: &StoreResponse, kind: ErrorKind) -> String {
    match response {
        StoreResponse::Error(e) if e.kind == kind => e.message.clone(),
        other => panic!("expected Error({kind:?}), got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The store on both engines

/// The store a parent configured with `database` opens.
fn open(database: &str) -> Arc<dyn Store> {
    match Config::from_toml(&config_text(Path::new("/run/unused"), database))
        .unwrap()
        .database
    {
        Database::Sqlite(path) => Arc::new(SqliteStore::open(&path).unwrap()),
        Database::Postgres(pg) => Arc::new(PgStore::open(&pg).unwrap()),
    }
}

/// A store on `backend`, and what keeps it.
fn store_on(backend: Backend) -> Option<(Box<dyn std::any::Any>, Arc<dyn Store>)> {
    let (keep, database) = database_for(backend)?;
    Some((keep, open(&database)))
}

cosigner_tests::on_both_engines!(
    store_puts_gets_deletes_and_lists,
    store_refuses_invalid_keys_and_oversized_values,
    store_keeps_data_across_reopen,
    keys_list_in_byte_order_and_the_later_of_two_pairs_wins,
    concurrent_writers_all_land_and_never_deadlock,
    store_server_answers_a_sequence_of_requests,
    running_parent_serves_the_store_socket_and_keeps_data_across_restarts,
);

fn store_puts_gets_deletes_and_lists(backend: Backend) {
    let Some((_db, store)) = store_on(backend) else {
        return;
    };
    assert_eq!(store.get("wallet/aa/share/2/0").unwrap(), None);

    store.put("wallet/aa/share/2/0", b"sealed-0").unwrap();
    store.put("wallet/aa/share/2/1", b"sealed-1").unwrap();
    store.put("wallet/aa/public", b"pkp").unwrap();
    store.put("wallet/bb/share/2/0", b"other").unwrap();
    store.put("audit/0001", b"").unwrap();
    assert_eq!(
        store.get("wallet/aa/share/2/0").unwrap().as_deref(),
        Some(&b"sealed-0"[..])
    );
    // The empty value is a value, not an absence.
    assert_eq!(store.get("audit/0001").unwrap(), Some(vec![]));

    // Replacing.
    store.put("wallet/aa/share/2/0", b"sealed-0-v2").unwrap();
    assert_eq!(
        store.get("wallet/aa/share/2/0").unwrap().as_deref(),
        Some(&b"sealed-0-v2"[..])
    );

    assert_eq!(
        store.list_prefix("wallet/aa/").unwrap(),
        [
            "wallet/aa/public",
            "wallet/aa/share/2/0",
            "wallet/aa/share/2/1"
        ]
    );
    assert_eq!(store.list_prefix("wallet/").unwrap().len(), 4);
    assert_eq!(store.list_prefix("").unwrap().len(), 5);
    assert!(store.list_prefix("nothing/").unwrap().is_empty());

    store.delete("wallet/aa/share/2/0").unwrap();
    assert_eq!(store.get("wallet/aa/share/2/0").unwrap(), None);
    // Deleting what is absent is fine.
    store.delete("wallet/aa/share/2/0").unwrap();
    assert_eq!(
        store.list_prefix("wallet/aa/").unwrap(),
        ["wallet/aa/public", "wallet/aa/share/2/1"]
    );
}

fn store_keeps_data_across_reopen(backend: Backend) {
    let Some((_db, database)) = database_for(backend) else {
        return;
    };
    {
        let store = open(&database);
        store.put("k/1", &[1, 2, 3]).unwrap();
        store.put("k/2", &[0xff; 1000]).unwrap();
        store.delete("k/2").unwrap();
        store.put("k/3", b"three").unwrap();
    }
    let store = open(&database);
    assert_eq!(store.get("k/1").unwrap(), Some(vec![1, 2, 3]));
    assert_eq!(store.get("k/2").unwrap(), None);
    assert_eq!(store.list_prefix("k/").unwrap(), ["k/1", "k/3"]);
    // A second store on the same database (another process, in practice) sees the same data.
    let again = open(&database);
    assert_eq!(again.get("k/3").unwrap(), Some(b"three".to_vec()));
}

fn keys_list_in_byte_order_and_the_later_of_two_pairs_wins(backend: Backend) {
    let Some((_db, store)) = store_on(backend) else {
        return;
    };
    let pair = |k: &str, v: &[u8]| (k.to_owned(), v.to_vec());
    // Keys whose byte order differs from a language's collation (capitals before `_` before
    // lower case); the later of two pairs with one key wins.
    store
        .put_many(&[
            pair("o/b", b"1"),
            pair("o/_", b"2"),
            pair("o/B", b"3"),
            pair("o/a", b"4"),
            pair("o/~", b"5"),
            pair("o/A", b"6"),
            pair("o/b", b"7"),
        ])
        .unwrap();
    assert_eq!(
        store.list_prefix("o/").unwrap(),
        ["o/A", "o/B", "o/_", "o/a", "o/b", "o/~"]
    );
    assert_eq!(store.get("o/b").unwrap(), Some(b"7".to_vec()));
}

/// Threads writing overlapping keys in opposite orders at once, as the enclave's connections
/// do: every write lands whole and none deadlocks (PostgreSQL locks rows in key order).
fn concurrent_writers_all_land_and_never_deadlock(backend: Backend) {
    let Some((_db, store)) = store_on(backend) else {
        return;
    };
    let (threads, rounds, keys) = (6usize, 10usize, 12usize);
    std::thread::scope(|scope| {
        for t in 0..threads {
            let store = &store;
            scope.spawn(move || {
                for r in 0..rounds {
                    let value = format!("{t}/{r}").into_bytes();
                    let mut entries: Vec<(String, Vec<u8>)> = (0..keys)
                        .map(|k| (format!("c/{k:02}"), value.clone()))
                        .collect();
                    if t % 2 == 1 {
                        entries.reverse();
                    }
                    store.put_many(&entries).unwrap();
                    store.put(&format!("own/{t}/{r}"), &value).unwrap();
                }
            });
        }
    });
    assert_eq!(store.list_prefix("c/").unwrap().len(), keys);
    assert_eq!(store.list_prefix("own/").unwrap().len(), threads * rounds);
    // Every shared key holds some thread's last round: each write was whole.
    for k in 0..keys {
        let v = store.get(&format!("c/{k:02}")).unwrap().unwrap();
        assert!(
            String::from_utf8(v)
                .unwrap()
                .ends_with(&format!("/{}", rounds - 1)),
            "c/{k:02}"
        );
    }
}

#[test]
fn sqlite_store_file_is_private() {
    let dir = tempdir();
    let path = dir.path().join("store.db");
    let store = SqliteStore::open(&path).unwrap();
    store.put("k/1", &[1, 2, 3]).unwrap();
    assert_eq!(store.path(), path);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "database mode {mode:o}");
}

fn store_refuses_invalid_keys_and_oversized_values(backend: Backend) {
    let Some((_db, store)) = store_on(backend) else {
        return;
    };
    let long = "k".repeat(257);
    for bad in [
        "",
        "with space",
        "tab\there",
        "newline\n",
        "é",
        "nul\0",
        long.as_str(),
    ] {
        let err = store.put(bad, b"v").unwrap_err();
        assert!(
            matches!(err, ParentError::InvalidKey { .. }),
            "{bad:?}: {err:?}"
        );
        assert!(store.get(bad).is_err(), "{bad:?}");
        assert!(store.delete(bad).is_err(), "{bad:?}");
        assert!(check_key(bad).is_err());
    }
    // Exactly 256 bytes is a key.
    store.put(&"k".repeat(256), b"v").unwrap();
    // Prefixes: empty is fine, anything no key could start with is not.
    assert!(store.list_prefix("a b").is_err());

    let err = store.put("big", &vec![0; MAX_VALUE_LEN + 1]).unwrap_err();
    assert!(
        matches!(err, ParentError::ValueTooLarge { len, max } if len == MAX_VALUE_LEN + 1 && max == MAX_VALUE_LEN),
        "{err:?}"
    );
    assert_eq!(store.get("big").unwrap(), None);
    store.put("big", &vec![7; MAX_VALUE_LEN]).unwrap();
    assert_eq!(store.get("big").unwrap().unwrap().len(), MAX_VALUE_LEN);
}

#[test]
fn sqlite_store_refuses_files_that_are_not_its_own() {
    let (dir, text) = cosigner_tests::file_in_tempdir(
        "notes.txt",
        "this is not a database, and it is long enough to be read as one",
    );
    let err = SqliteStore::open(&text).unwrap_err();
    assert!(matches!(err, ParentError::Schema { .. }), "{err:?}");
    // The file is untouched.
    assert!(
        std::fs::read_to_string(&text)
            .unwrap()
            .starts_with("this is not")
    );

    let err = SqliteStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, ParentError::Io { .. }), "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// The store protocol on a socket

/// A store served on one end of a socket pair, in a thread; returns the other end and the thread.
fn serve_pair(
    store: Arc<dyn Store>,
) -> (
    UnixStream,
    std::thread::JoinHandle<cosigner_parent::Result<()>>,
) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    ours.set_read_timeout(Some(TIMEOUT)).unwrap();
    let server = std::thread::spawn(move || serve_store(theirs, store.as_ref()));
    (ours, server)
}

fn store_server_answers_a_sequence_of_requests(backend: Backend) {
    let Some((_db, store)) = store_on(backend) else {
        return;
    };
    let (mut s, server) = serve_pair(Arc::clone(&store));

    assert_eq!(
        ask(&mut s, &get("w/1")),
        StoreResponse::Value { value: None }
    );
    assert_eq!(ask(&mut s, &put("w/1", b"one")), StoreResponse::Done);
    assert_eq!(ask(&mut s, &put("w/2", b"two")), StoreResponse::Done);
    assert_eq!(ask(&mut s, &put("x/1", b"")), StoreResponse::Done);
    assert_eq!(ask(&mut s, &get("w/1")), value(b"one"));
    assert_eq!(ask(&mut s, &get("x/1")), value(b""));
    assert_eq!(
        ask(
            &mut s,
            &StoreRequest::List {
                prefix: "w/".into()
            }
        ),
        StoreResponse::Keys {
            keys: vec!["w/1".into(), "w/2".into()]
        }
    );
    assert_eq!(
        ask(&mut s, &StoreRequest::Delete { key: "w/1".into() }),
        StoreResponse::Done
    );
    assert_eq!(
        ask(&mut s, &get("w/1")),
        StoreResponse::Value { value: None }
    );

    // Refusals of well-formed requests are answered, and the connection goes on.
    let message = assert_error(&ask(&mut s, &put("bad key", b"v")), ErrorKind::BadRequest);
    assert!(message.contains("invalid store key"), "{message}");
    assert_error(
        &ask(
            &mut s,
            &StoreRequest::List {
                prefix: "a b".into(),
            },
        ),
        ErrorKind::BadRequest,
    );
    assert_error(
        &ask(&mut s, &StoreRequest::Delete { key: String::new() }),
        ErrorKind::BadRequest,
    );
    assert_eq!(ask(&mut s, &get("w/2")), value(b"two"));

    // DeleteMany: every key in one write, absent ones no error; one bad key, or more keys than
    // the protocol allows, and nothing is removed.
    assert_eq!(ask(&mut s, &put("w/3", b"three")), StoreResponse::Done);
    assert_eq!(ask(&mut s, &put("w/4", b"four")), StoreResponse::Done);
    let delete_many = |keys: &[&str]| StoreRequest::DeleteMany {
        keys: keys.iter().map(|k| (*k).to_owned()).collect(),
    };
    assert_eq!(
        ask(&mut s, &delete_many(&["w/3", "w/4", "w/9"])),
        StoreResponse::Done
    );
    assert_eq!(
        ask(&mut s, &get("w/3")),
        StoreResponse::Value { value: None }
    );
    let message = assert_error(
        &ask(&mut s, &delete_many(&["w/2", "bad key"])),
        ErrorKind::BadRequest,
    );
    assert!(message.contains("invalid store key"), "{message}");
    let too_many: Vec<String> = (0..=cosigner_protocol::wire::MAX_PUT_MANY)
        .map(|i| format!("w/{i}"))
        .collect();
    let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
    assert_error(&ask(&mut s, &delete_many(&too_many)), ErrorKind::BadRequest);
    assert_eq!(ask(&mut s, &get("w/2")), value(b"two"));

    // The largest value fits a Put frame and comes back in one Value frame.
    let big = vec![0x5a; MAX_VALUE_LEN];
    assert_eq!(
        ask(&mut s, &put(&"b".repeat(256), &big)),
        StoreResponse::Done
    );
    assert_eq!(ask(&mut s, &get(&"b".repeat(256))), value(&big));

    // What the server stored is in the database.
    assert_eq!(store.get("w/2").unwrap(), Some(b"two".to_vec()));

    // A clean close ends the session without error.
    drop(s);
    server.join().unwrap().unwrap();
}

/// Sends raw bytes, expects one `Error(BadRequest)` frame, then the end of the stream, and the
/// server to have returned `BadRequest`.
fn garbage_is_refused(bytes: &[u8], close_write: bool) -> String {
    let dir = tempdir();
    let store = Arc::new(SqliteStore::open(&dir.path().join("store.db")).unwrap());
    let (mut s, server) = serve_pair(store);
    // A good request first: the session is live before the garbage.
    assert_eq!(ask(&mut s, &put("k", b"v")), StoreResponse::Done);
    s.write_all(bytes).unwrap();
    if close_write {
        s.shutdown(Shutdown::Write).unwrap();
    }
    let frame = read_frame(&mut s).unwrap().expect("an error frame");
    let response: StoreResponse = decode(&frame).unwrap();
    let message = assert_error(&response, ErrorKind::BadRequest);
    // Then the server closes the connection.
    assert!(read_frame(&mut s).unwrap().is_none());
    let err = server.join().unwrap().unwrap_err();
    assert!(matches!(err, ParentError::BadRequest { .. }), "{err:?}");
    message
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

#[test]
fn store_server_refuses_a_garbage_frame() {
    let message = garbage_is_refused(&framed(&[0xff, 0x00, 0x13, 0x37]), false);
    assert!(message.contains("undecodable"), "{message}");
}

#[test]
fn store_server_refuses_an_empty_frame() {
    garbage_is_refused(&framed(&[]), false);
}

#[test]
fn store_server_refuses_a_client_request_on_the_store_socket() {
    let request = encode(&Request::GetWallet {
        wallet_id: WalletId([1; 16]),
    })
    .unwrap();
    garbage_is_refused(&framed(&request), false);
}

#[test]
fn store_server_refuses_trailing_bytes_after_a_request() {
    let mut body = encode(&get("k")).unwrap();
    body.push(0);
    garbage_is_refused(&framed(&body), false);
}

#[test]
fn store_server_refuses_an_oversized_frame_before_reading_it() {
    let len = u32::try_from(MAX_FRAME_LEN + 1).unwrap();
    let message = garbage_is_refused(&len.to_be_bytes(), false);
    assert!(message.contains("exceeds"), "{message}");
}

#[test]
fn store_server_refuses_a_truncated_frame() {
    // Announces 100 bytes, sends 3, closes its side.
    let mut bytes = 100u32.to_be_bytes().to_vec();
    bytes.extend([1, 2, 3]);
    garbage_is_refused(&bytes, true);
}

// ---------------------------------------------------------------------------------------------
// The running parent: relay and store sockets

/// A fake enclave on a unix socket: for its one connection, answers every byte with its
/// complement (chunking by the relay does not change the answer), and when the client half-closes,
/// says "bye" and closes. Returns the socket path and the thread, which returns all it received.
fn fake_enclave(dir: &Path) -> (PathBuf, std::thread::JoinHandle<Vec<u8>>) {
    let path = dir.join("enclave.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let thread = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut received = Vec::new();
        let mut buf = [0u8; 64 * 1024];
        loop {
            let n = conn.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            received.extend_from_slice(&buf[..n]);
            let answer: Vec<u8> = buf[..n].iter().map(|b| !b).collect();
            conn.write_all(&answer).unwrap();
        }
        conn.write_all(b"bye").unwrap();
        received
    });
    (path, thread)
}

fn complement(bytes: &[u8]) -> Vec<u8> {
    bytes.iter().map(|b| !b).collect()
}

/// A parent's configuration: listening on any free port, relaying to `enclave`, its store
/// socket beside it, its store in `database`.
fn config_text(enclave: &Path, database: &str) -> String {
    let dir = enclave.parent().unwrap_or(Path::new("/")).display();
    format!(
        "listen = \"127.0.0.1:0\"\nenclave = \"unix:{}\"\nstore_socket = \"{dir}/store.sock\"\n\
         database = \"{database}\"\n",
        enclave.display()
    )
}

fn start_parent(dir: &Path, enclave: &Path) -> RunningParent {
    start_parent_on(enclave, &dir.join("store.db").display().to_string())
}

/// A parent relaying to `enclave` with its store in `database` (store socket beside `enclave`).
fn start_parent_on(enclave: &Path, database: &str) -> RunningParent {
    let config = Config::from_toml(&config_text(enclave, database)).unwrap();
    Parent::new(config).unwrap().start().unwrap()
}

fn connect(parent: &RunningParent) -> TcpStream {
    let client = TcpStream::connect(parent.client_addr()).unwrap();
    client.set_read_timeout(Some(TIMEOUT)).unwrap();
    client
}

fn read_exactly(stream: &mut impl Read, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    stream.read_exact(&mut buf).unwrap();
    buf
}

/// Everything up to the peer's close.
fn read_to_close(stream: &mut impl Read) -> Vec<u8> {
    let mut all = Vec::new();
    stream.read_to_end(&mut all).unwrap();
    all
}

/// A parent relaying to an enclave socket the test holds itself, a client that has sent `first`,
/// and the enclave's side of the relayed connection (the parent connects to the enclave only once
/// the client has sent something). The directory holds the sockets: keep it alive.
fn relayed_connection(first: &[u8]) -> (TempDir, RunningParent, TcpStream, UnixStream) {
    let dir = tempdir();
    let path = dir.path().join("enclave.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let parent = start_parent(dir.path(), &path);
    let mut client = connect(&parent);
    client.write_all(first).unwrap();
    let (conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
    (dir, parent, client, conn)
}

#[test]
fn relay_carries_bytes_both_ways_unchanged_and_closes_both_sides() {
    let dir = tempdir();
    let (enclave_path, enclave) = fake_enclave(dir.path());
    let parent = start_parent(dir.path(), &enclave_path);
    assert_ne!(parent.client_addr().port(), 0);

    let mut client = connect(&parent);
    // Interactive: each message is answered before the next is sent.
    let mut sent = Vec::new();
    for i in 0..5u8 {
        let msg: Vec<u8> = (0..=255u8).map(|b| b.wrapping_mul(i + 1)).collect();
        client.write_all(&msg).unwrap();
        assert_eq!(read_exactly(&mut client, msg.len()), complement(&msg));
        sent.extend(msg);
    }
    // Half-close: the enclave sees EOF, still answers, then closes; the client sees it all.
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_close(&mut client), b"bye");

    assert_eq!(
        enclave.join().unwrap(),
        sent,
        "the enclave got other bytes than sent"
    );
    parent.shutdown();
}

#[test]
fn relay_carries_a_megabyte_each_way() {
    let dir = tempdir();
    let (enclave_path, enclave) = fake_enclave(dir.path());
    let parent = start_parent(dir.path(), &enclave_path);
    let mut client = connect(&parent);

    let data: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(7) ^ (i >> 8)) as u8)
        .collect();
    let mut reader = client.try_clone().unwrap();
    let collected = std::thread::spawn(move || read_to_close(&mut reader));
    client.write_all(&data).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let back = collected.join().unwrap();
    assert!(
        enclave.join().unwrap() == data,
        "the enclave got other bytes"
    );
    let mut expected = complement(&data);
    expected.extend(b"bye");
    assert_eq!(back.len(), expected.len());
    assert!(
        back == expected,
        "the client got other bytes than the enclave wrote"
    );
    drop(parent);
}

#[test]
fn relay_closes_the_client_when_the_enclave_closes() {
    let (_dir, parent, mut client, mut conn) = relayed_connection(b"hi");
    conn.write_all(b"hello").unwrap();
    drop(conn);
    assert_eq!(read_to_close(&mut client), b"hello");
    drop(parent);
}

#[test]
fn relay_closes_the_enclave_side_when_the_client_goes() {
    let (_dir, parent, client, mut conn) = relayed_connection(b"last words");
    drop(client);
    assert_eq!(read_to_close(&mut conn), b"last words");
    drop(parent);
}

#[test]
fn shutdown_closes_open_relays_on_both_sides() {
    let (dir, parent, mut client, mut conn) = relayed_connection(b"x");
    let addr = parent.client_addr();
    assert_eq!(read_exactly(&mut conn, 1), b"x");
    // Neither side closes: the parent's shutdown must, and must not hang on them.
    parent.shutdown();
    let mut rest = Vec::new();
    assert_eq!(conn.read_to_end(&mut rest).unwrap(), 0);
    assert_eq!(client.read_to_end(&mut rest).unwrap_or(0), 0);
    // And nothing listens any more.
    assert!(UnixStream::connect(dir.path().join("store.sock")).is_err());
    assert!(TcpStream::connect(addr).is_err());
}

#[test]
fn relay_closes_the_client_when_the_enclave_is_unreachable() {
    let dir = tempdir();
    let parent = start_parent(dir.path(), &dir.path().join("nobody-listens.sock"));
    let mut client = connect(&parent);
    // The parent tries the enclave once the client has sent something.
    client.write_all(b"hello").unwrap();
    let mut got = Vec::new();
    // EOF or reset: either way the client is not left hanging, and nothing was sent to it.
    let _ = client.read_to_end(&mut got);
    assert!(got.is_empty());
}

fn running_parent_serves_the_store_socket_and_keeps_data_across_restarts(backend: Backend) {
    let Some((_db, database)) = database_for(backend) else {
        return;
    };
    let dir = tempdir();
    let (enclave_path, _enclave) = fake_enclave(dir.path());
    let parent = start_parent_on(&enclave_path, &database);
    let socket = parent.store_socket().to_path_buf();
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "store socket mode {mode:o}");

    // Two enclave connections at once.
    let mut a = UnixStream::connect(&socket).unwrap();
    let mut b = UnixStream::connect(&socket).unwrap();
    a.set_read_timeout(Some(TIMEOUT)).unwrap();
    b.set_read_timeout(Some(TIMEOUT)).unwrap();
    assert_eq!(ask(&mut a, &put("w/a", b"from a")), StoreResponse::Done);
    assert_eq!(ask(&mut b, &put("w/b", b"from b")), StoreResponse::Done);
    assert_eq!(ask(&mut b, &get("w/a")), value(b"from a"));

    // Shutdown closes open connections and removes the socket file.
    parent.shutdown();
    assert!(read_frame(&mut a).unwrap().is_none());
    assert!(!socket.exists(), "store socket left behind");

    let (enclave_path, _enclave) = fake_enclave(&dir.path().join("again").tap_mkdir());
    let parent = start_parent_on(&enclave_path, &database);
    let mut c = UnixStream::connect(parent.store_socket()).unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    assert_eq!(ask(&mut c, &get("w/b")), value(b"from b"));
    assert_eq!(
        ask(
            &mut c,
            &StoreRequest::List {
                prefix: "w/".into()
            }
        ),
        StoreResponse::Keys {
            keys: vec!["w/a".into(), "w/b".into()]
        }
    );
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

#[test]
fn store_socket_replaces_a_stale_socket_but_not_a_live_one_or_a_file() {
    let dir = tempdir();
    let enclave = dir.path().join("enclave.sock");
    let socket = dir.path().join("store.sock");

    // Stale: a socket file nobody listens on (the listener is dropped, the file stays).
    drop(UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let parent = start_parent(dir.path(), &enclave);

    // Live: a second parent on the same socket is refused, and the first keeps its socket.
    let config = Config::from_toml(&config_text(
        &enclave,
        &dir.path().join("second.db").display().to_string(),
    ))
    .unwrap();
    let err = Parent::new(config.clone()).unwrap().start().unwrap_err();
    assert!(matches!(err, ParentError::SocketInUse { .. }), "{err:?}");
    let mut s = UnixStream::connect(&socket).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    assert_eq!(ask(&mut s, &put("k", b"v")), StoreResponse::Done);
    drop(s);
    parent.shutdown();

    // A regular file where the socket should be is left alone.
    std::fs::write(&socket, "precious").unwrap();
    let err = Parent::new(config).unwrap().start().unwrap_err();
    assert!(matches!(err, ParentError::NotASocket { .. }), "{err:?}");
    assert_eq!(std::fs::read_to_string(&socket).unwrap(), "precious");
}

/// With the enclave on vsock the parent starts (the enclave may boot after it) and connects per
/// client. There is no vsock peer on the development machines: the connection fails (at once, or
/// after the kernel's 2 s vsock connect timeout) and the client is closed, not left hanging.
#[test]
fn an_enclave_on_vsock_that_is_not_there_closes_the_client() {
    let dir = tempdir();
    let config = Config::from_toml(&format!(
        "listen = \"127.0.0.1:0\"\nenclave = \"vsock:16:5000\"\nstore_socket = \"{}\"\n\
         database = \"{}\"\n",
        dir.path().join("store.sock").display(),
        dir.path().join("store.db").display()
    ))
    .unwrap();
    assert_eq!(
        config.enclave,
        EnclaveAddr::Vsock {
            cid: 16,
            port: 5000
        }
    );
    let parent = Parent::new(config).unwrap().start().unwrap();
    let mut client = connect(&parent);
    let _ = client.write_all(b"client hello");
    let mut rest = Vec::new();
    // EOF (or a reset) within the read timeout, never a hang.
    match client.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty()),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    parent.shutdown();
}

// ---------------------------------------------------------------------------------------------
// Configuration

const GOOD: &str = r#"
listen = "127.0.0.1:7000"
enclave = "unix:/run/cosigner/enclave.sock"
store_socket = "/run/cosigner/store.sock"
database = "/var/lib/cosigner/store.db"
"#;

#[test]
fn a_good_config_parses() {
    let config = Config::from_toml(GOOD).unwrap();
    assert_eq!(config.listen, "127.0.0.1:7000".parse().unwrap());
    assert_eq!(
        config.enclave,
        EnclaveAddr::Unix("/run/cosigner/enclave.sock".into())
    );
    assert_eq!(config.store_socket, Path::new("/run/cosigner/store.sock"));
    assert_eq!(
        config.database,
        Database::Sqlite("/var/lib/cosigner/store.db".into())
    );
    let v6 = GOOD.replace("127.0.0.1:7000", "[::1]:7000");
    assert!(Config::from_toml(&v6).unwrap().listen.is_ipv6());
}

#[test]
fn load_resolves_relative_paths_against_the_config_file() {
    let (dir, path) = cosigner_tests::file_in_tempdir(
        "parent.toml",
        "listen = \"127.0.0.1:0\"\nenclave = \"unix:run/enclave.sock\"\n\
         store_socket = \"run/store.sock\"\ndatabase = \"store.db\"\n",
    );
    let config = Config::load(&path).unwrap();
    assert_eq!(
        config.database,
        Database::Sqlite(dir.path().join("store.db"))
    );
    assert_eq!(config.store_socket, dir.path().join("run/store.sock"));
    assert_eq!(
        config.enclave,
        EnclaveAddr::Unix(dir.path().join("run/enclave.sock"))
    );
    let err = Config::load(&dir.path().join("missing.toml")).unwrap_err();
    assert!(matches!(err, ParentError::ConfigRead { .. }), "{err:?}");
}

/// A valid configuration, one key a line, for the bad ones below to spoil.
const BASE: &str = "listen = \"127.0.0.1:7000\"\nenclave = \"unix:/e.sock\"\n\
                    store_socket = \"/s.sock\"\ndatabase = \"/d.db\"\n";

/// [`BASE`] with `key`'s value replaced on its own line (errors name the line).
fn with(key: &str, value: &str) -> String {
    BASE.lines()
        .map(|line| match line.split_once(" = ") {
            Some((k, _)) if k == key => format!("{key} = {value}\n"),
            _ => format!("{line}\n"),
        })
        .collect()
}

/// Bad configurations, each with a word its error must contain.
fn bad() -> Vec<(&'static str, String, &'static str)> {
    let unix_path_max = format!("\"/{}.sock\"", "a".repeat(160));
    vec![
        (
            "unknown field",
            format!("{BASE}listen_backlog = 5\n"),
            "unknown field `listen_backlog`",
        ),
        (
            "misspelt field",
            BASE.replace("store_socket", "store_sock"),
            "store_sock",
        ),
        (
            "missing field",
            BASE.replace("database = \"/d.db\"\n", ""),
            "missing field `database`",
        ),
        ("empty file", String::new(), "missing field"),
        (
            "a table where a string belongs",
            format!("{BASE}[extra]\nx = 1\n"),
            "unknown field `extra`",
        ),
        (
            "listen is a number",
            with("listen", "7000"),
            "line 1 (listen = 7000): invalid type",
        ),
        (
            "listen is a host name",
            with("listen", "\"localhost:7000\""),
            "`listen`",
        ),
        (
            "listen has no port",
            with("listen", "\"127.0.0.1\""),
            "expected IP:PORT",
        ),
        (
            "enclave without scheme",
            with("enclave", "\"/e.sock\""),
            "expected unix:PATH, vsock:CID:PORT or hybrid-vsock:PATH:PORT",
        ),
        (
            "enclave over tcp",
            with("enclave", "\"tcp:127.0.0.1:5000\""),
            "expected unix:PATH, vsock:CID:PORT or hybrid-vsock:PATH:PORT",
        ),
        (
            "vsock without port",
            with("enclave", "\"vsock:16\""),
            "vsock:CID:PORT",
        ),
        (
            "vsock with a name for a CID",
            with("enclave", "\"vsock:parent:5000\""),
            "decimal",
        ),
        (
            "unix without path",
            with("enclave", "\"unix:\""),
            "empty socket path",
        ),
        (
            "empty store socket",
            with("store_socket", "\"\""),
            "`store_socket`",
        ),
        (
            "store socket path too long for a unix socket",
            with("store_socket", &unix_path_max),
            "at most 107",
        ),
        ("empty database", with("database", "\"\""), "`database`"),
        ("not TOML", "listen: 127.0.0.1:7000\n".to_owned(), "line 1"),
        (
            "duplicate key",
            BASE.replacen('\n', "\nlisten = \"127.0.0.1:7001\"\n", 1),
            "line 2",
        ),
    ]
}

#[test]
fn bad_configs_are_refused_with_clear_one_line_errors() {
    for (name, text, needle) in bad() {
        let err = match Config::from_toml(&text) {
            Ok(config) => panic!("{name}: accepted as {config:?}"),
            Err(e) => e,
        };
        let message = err.to_string();
        assert!(
            message.contains(needle),
            "{name}: {message:?} does not mention {needle:?}"
        );
        assert!(
            !message.contains('\n'),
            "{name}: multi-line error {message:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL: schema, migration, connection failures, and the parent binary on it

/// The PostgreSQL settings of a test database's URL (pool of 4).
fn pg_config(db: &cosigner_tests::postgres::TestDatabase) -> PostgresConfig {
    PostgresConfig::new(&db.url(), None, 4).unwrap()
}

#[test]
fn postgres_schema_is_created_by_the_parent_and_versioned() {
    let Some(db) = cosigner_tests::postgres::database() else {
        return;
    };
    let pg = PgDatabase::connect(&pg_config(&db)).unwrap();
    assert_eq!(pg.schema_version().unwrap(), PG_SCHEMA_VERSION);
    let mut client = db.connect().unwrap();
    let tables: Vec<String> = client
        .query(
            "SELECT table_name::text FROM information_schema.tables
             WHERE table_schema = current_schema() ORDER BY table_name",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        tables,
        [
            "blobs",
            "cosigner_parent_schema",
            "mailbox_members",
            "mailbox_messages",
            "mailbox_senders",
            "mailbox_topics"
        ]
    );
    // Keys compare byte by byte whatever the database's collation.
    let collation: String = client
        .query_one(
            "SELECT collation_name::text FROM information_schema.columns
             WHERE table_name = 'blobs' AND column_name = 'key'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(collation, "C");
    // A second parent (or a restart) finds the schema made: nothing is created twice, data stays.
    PgStore::new(std::sync::Arc::new(pg))
        .put("k/1", b"v")
        .unwrap();
    let again = PgStore::open(&pg_config(&db)).unwrap();
    assert_eq!(
        again.database().schema_version().unwrap(),
        PG_SCHEMA_VERSION
    );
    assert_eq!(again.get("k/1").unwrap(), Some(b"v".to_vec()));
    // Two parents starting at once on an empty database: one makes the schema, both run.
    let fresh = cosigner_tests::postgres::database().unwrap();
    let config = pg_config(&fresh);
    std::thread::scope(|scope| {
        let starts: Vec<_> = (0..3)
            .map(|_| scope.spawn(|| PgDatabase::connect(&config).map(|d| d.schema_version())))
            .collect();
        for s in starts {
            assert_eq!(s.join().unwrap().unwrap().unwrap(), PG_SCHEMA_VERSION);
        }
    });
}

#[test]
fn postgres_refuses_a_newer_schema_and_another_applications_database() {
    let Some(db) = cosigner_tests::postgres::database() else {
        return;
    };
    drop(PgDatabase::connect(&pg_config(&db)).unwrap());
    let mut client = db.connect().unwrap();
    client
        .batch_execute("UPDATE cosigner_parent_schema SET version = version + 1")
        .unwrap();
    let err = PgDatabase::connect(&pg_config(&db)).unwrap_err();
    assert!(
        matches!(
            &err,
            ParentError::SchemaTooNew { found, supported, database }
                if *found == PG_SCHEMA_VERSION + 1
                    && *supported == PG_SCHEMA_VERSION
                    && *database == db.url()
        ),
        "{err:?}"
    );
    // Refused, not downgraded: the version is as it was.
    let version: i64 = client
        .query_one("SELECT version FROM cosigner_parent_schema", &[])
        .unwrap()
        .get(0);
    assert_eq!(version, PG_SCHEMA_VERSION + 1);

    // Another application's tables and no schema table: refused and left alone.
    let other = cosigner_tests::postgres::database().unwrap();
    let mut client = other.connect().unwrap();
    client
        .batch_execute("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('keep');")
        .unwrap();
    let err = PgDatabase::connect(&pg_config(&other)).unwrap_err();
    assert!(
        matches!(err, ParentError::ForeignDatabase { .. }),
        "{err:?}"
    );
    let tables: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(tables, 1);
}

#[test]
fn an_unreachable_database_is_one_line_naming_the_url_without_its_password() {
    let dir = tempdir();
    let nowhere = dir.path().display();
    // Nothing listens: a socket directory without a server, a TCP port without one.
    for url in [
        format!("postgres://cosigner:s3cret@/cosigner?host={nowhere}"),
        "postgres://cosigner:s3cret@127.0.0.1:1/cosigner?connect_timeout=5".to_owned(),
    ] {
        let config = Config::from_toml(&config_text(&dir.path().join("e.sock"), &url)).unwrap();
        let err = match Parent::new(config) {
            Ok(_) => panic!("{url}: a parent without its database"),
            Err(e) => e,
        };
        let message = err.to_string();
        assert!(
            matches!(&err, ParentError::DatabaseConnect { url: shown, .. }
                if shown.starts_with("postgres://cosigner:***@")),
            "{err:?}"
        );
        assert!(!message.contains("s3cret"), "{message}");
        assert!(!message.contains('\n'), "{message}");
    }
    // Through the binary: exit 1, one line on stderr, no password.
    let file = dir.path().join("parent.toml");
    std::fs::write(
        &file,
        config_text(
            &dir.path().join("e.sock"),
            &format!("postgres://cosigner:s3cret@/cosigner?host={nowhere}"),
        ),
    )
    .unwrap();
    let out = cosigner_tests::run(
        "cosigner-parent",
        ["run".as_ref(), "--config".as_ref(), file.as_os_str()],
        &[],
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("cannot connect to database postgres://cosigner:***@")
    );
    assert!(!out.stderr.contains("s3cret"), "{}", out.stderr);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
}

#[test]
fn postgres_configurations_parse_and_resolve() {
    let url = "postgres://cosigner@/cosigner?host=/run/postgresql";
    let c = Config::from_toml(&GOOD.replace("/var/lib/cosigner/store.db", url)).unwrap();
    assert_eq!(
        c.database,
        Database::Postgres(PostgresConfig::new(url, None, 16).unwrap())
    );
    assert_eq!(c.database.display().to_string(), url);
    let (dir, path) = cosigner_tests::file_in_tempdir(
        "parent.toml",
        "listen = \"127.0.0.1:0\"\nenclave = \"unix:run/enclave.sock\"\n\
         store_socket = \"run/store.sock\"\n\
         [database]\nurl = \"postgres://cosigner@db.internal/cosigner\"\n\
         password_file = \"db-password\"\npool_size = 4\n",
    );
    let c = Config::load(&path).unwrap();
    assert_eq!(
        c.database,
        Database::Postgres(
            PostgresConfig::new(
                "postgres://cosigner@db.internal/cosigner",
                Some(dir.path().join("db-password")),
                4
            )
            .unwrap()
        )
    );
}

#[test]
fn bad_database_settings_are_refused_by_field_without_the_password() {
    let table = |body: &str| {
        format!(
            "{}[database]\n{body}",
            BASE.replace("database = \"/d.db\"\n", "")
        )
    };
    for (text, field, why) in [
        (
            with("database", "\"mysql://u:s3cret@h/d\""),
            "database",
            "postgres://",
        ),
        (
            with("database", "\"postgres://u:s3cret@h:port/d\""),
            "database",
            "client library",
        ),
        (
            with("database", "\"postgres://u:s3cret@/d\""),
            "database",
            "no host",
        ),
        (
            with("database", "\"postgres:///d?host=/run/pg\""),
            "database",
            "no user",
        ),
        (
            table("url = \"/var/lib/store.db\"\n"),
            "database.url",
            "PostgreSQL's",
        ),
        (
            table("url = \"postgres://u@h/d\"\npool_size = 0\n"),
            "database.pool_size",
            "1..=256",
        ),
        (
            table("url = \"postgres://u:s3cret@h/d\"\npassword_file = \"/pw\"\n"),
            "database",
            "one of them",
        ),
    ] {
        let err = Config::from_toml(&text).unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(&err, ParentError::InvalidAddress { field: f, .. }
                | ParentError::InvalidLimit { field: f, .. } if *f == field),
            "{text}: {err:?}"
        );
        assert!(message.contains(why), "{text}: {message}");
        assert!(!message.contains("s3cret"), "{message}");
        assert!(!message.contains('\n'), "{message}");
    }
    for (body, why) in [
        (
            "pool = 4\nurl = \"postgres://u@h/d\"\n",
            "unknown field `pool`",
        ),
        ("password_file = \"/pw\"\n", "missing field `url`"),
    ] {
        let err = Config::from_toml(&table(body)).unwrap_err();
        assert!(matches!(err, ParentError::Config { .. }), "{err:?}");
        assert!(err.to_string().contains(why), "{err}");
    }
}

/// The parent binary with `database = "postgres://…"` serving a real enclave: a wallet is made
/// (DKG, its sealed share and records written through the store channel into PostgreSQL) and
/// signs; the blobs are in PostgreSQL, and a restarted parent serves them.
#[test]
fn the_parent_binary_on_postgres_serves_a_wallet_made_and_signed() {
    let Some(db) = cosigner_tests::postgres::database() else {
        return;
    };
    // A password in the URL (the test cluster trusts its socket and never asks for it): it must
    // appear in no log line.
    let url = db.url().replacen("cosigner@", "cosigner:s3cret@", 1);
    let mut d = cosigner_tests::Deployment::start().unwrap();
    // The provider's parent moves to PostgreSQL before any wallet exists. The enclave anchored
    // its first records at start, so they move too, as an operator would move them: every blob
    // copied through the two stores while the cosigner is stopped.
    d.provider.stop();
    let sqlite = SqliteStore::open(&d.provider.database()).unwrap();
    let postgres = PgStore::open(&pg_config(&db)).unwrap();
    let keys = sqlite.list_prefix("").unwrap();
    assert!(!keys.is_empty(), "the enclave anchored nothing at start");
    for key in &keys {
        postgres
            .put(key, &sqlite.get(key).unwrap().unwrap())
            .unwrap();
    }
    drop((sqlite, postgres));
    let file = d.provider.hsm.dir().join("parent.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    let text: String = text
        .lines()
        .map(|line| match line.starts_with("database = ") {
            true => format!("database = \"{url}\"\n"),
            false => format!("{line}\n"),
        })
        .collect();
    std::fs::write(&file, text).unwrap();
    std::fs::remove_dir_all(d.provider.store_dir()).unwrap();
    d.provider.start_processes().unwrap();

    let home = d.home("alice");
    let created = d.cosigner([
        "--home",
        home.to_str().unwrap(),
        "wallet",
        "create",
        "--json",
    ]);
    let wallet: serde_json::Value = serde_json::from_str(created.ok()).unwrap();
    let id = wallet["wallet_id"].as_str().unwrap();
    let message = "6d79206669727374207369676e6174757265206f6e20706f7374677265732121";
    let signed = cosigner_tests::wallets::sign_message(&d, &home, id, message, &[]);
    let signature: serde_json::Value = serde_json::from_str(signed.ok()).unwrap();
    let key = k256::schnorr::VerifyingKey::from_bytes(
        &hex::decode(wallet["group_public_key"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    let sig = k256::schnorr::Signature::try_from(
        hex::decode(signature["signature"].as_str().unwrap())
            .unwrap()
            .as_slice(),
    )
    .unwrap();
    key.verify_raw(&hex::decode(message).unwrap(), &sig)
        .unwrap();

    // The wallet's sealed blobs are PostgreSQL rows; no SQLite file was made.
    let mut client = db.connect().unwrap();
    let rows: i64 = client
        .query_one(
            "SELECT count(*) FROM blobs WHERE key LIKE 'wallet/' || $1 || '/%'",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert!(rows > 0, "no blob of wallet {id} in PostgreSQL");
    assert!(!d.provider.database().exists());

    // Restarted, the parent serves them from PostgreSQL: the wallet signs again.
    d.provider.stop();
    d.provider.start_processes().unwrap();
    let again = cosigner_tests::wallets::sign_message(&d, &home, id, message, &[]);
    assert!(again.code == Some(0), "{}", again.stderr);
    let logs = d.provider.logs();
    assert!(logs.contains("postgres://cosigner:***@/"), "{logs}");

    // The audit log verifies from the parent's configuration, on PostgreSQL.
    let status: serde_json::Value =
        serde_json::from_str(d.cosigner(["status", "--json"]).ok()).unwrap();
    let audit_key = status["provider"]["audit_key"].as_str().unwrap().to_owned();
    let out = cosigner_tests::run(
        "cosigner-parent",
        [
            "audit",
            "verify",
            "--config",
            file.to_str().unwrap(),
            "--key",
            &audit_key,
        ],
        &d.provider.hsm.env(),
    );
    let report: serde_json::Value = serde_json::from_str(out.ok()).unwrap();
    assert!(report["entries"].as_u64().unwrap() >= 2, "{report}");
    assert!(!logs.contains("s3cret"), "{logs}");
}

/// The server closes the parent's connections (a restart, a failover, an administrator's
/// `pg_terminate_backend`): the next store and mailbox requests are answered all the same, on new
/// connections, and a post is not stored twice.
#[test]
fn postgres_connections_the_server_closed_are_replaced_and_the_request_done() {
    use cosigner_parent::mailbox::{MailboxConfig, MailboxStore};
    use cosigner_protocol::mailbox::{Envelope, Topic};

    let Some(db) = cosigner_tests::postgres::database() else {
        return;
    };
    let pg = Arc::new(PgDatabase::connect(&pg_config(&db)).unwrap());
    let store = PgStore::new(Arc::clone(&pg));
    let mailbox = MailboxStore::open_postgres(Arc::clone(&pg), &MailboxConfig::default()).unwrap();
    let k = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    let member = serde_bytes::ByteBuf::from(cosigner_protocol::auth::public_key_bytes(&k));
    let t = Topic([5; 16]);
    let envelope = |body: &[u8]| {
        Envelope::seal(&k, t, body.to_vec())
            .unwrap()
            .encode()
            .unwrap()
    };
    // Several connections open in the pool.
    std::thread::scope(|scope| {
        for i in 0..3 {
            let store = &store;
            scope.spawn(move || store.put(&format!("k/{i}"), b"v").unwrap());
        }
    });
    assert_eq!(
        mailbox
            .post(&t, &envelope(b"1"), std::slice::from_ref(&member))
            .unwrap(),
        1
    );
    let terminate = |what: &str| {
        let mut admin = db.connect().unwrap();
        let closed: i64 = admin
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
                &[],
            )
            .unwrap()
            .get(0);
        assert!(closed > 0, "{what}: no connection of the parent to close");
    };
    terminate("store");
    store.put("k/after", b"v").unwrap();
    assert_eq!(store.list_prefix("k/").unwrap().len(), 4);
    terminate("mailbox");
    assert_eq!(mailbox.post(&t, &envelope(b"2"), &[]).unwrap(), 2);
    let page = mailbox.fetch(&t, 0, 0, Some(member.as_slice())).unwrap();
    assert_eq!(page.items.iter().map(|i| i.seq).collect::<Vec<_>>(), [1, 2]);
}
