//! The members' mailbox through the real `cosigner-parent` binary (`mailbox_listen`), with the
//! client library's `MailboxClient`: posts, paged fetches, duplicates, refusals, durability
//! across a restart, topics closed to strangers, per-sender quotas against a flood, TLS with a
//! pinned certificate, and the harness's `Deployment::mailbox`. The parent's store is SQLite or
//! PostgreSQL: the tests of what the mailbox keeps run on both (`sqlite::…`, `postgres::…`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::Read;
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use cosigner_client::ClientError;
use cosigner_client::mailbox::MailboxClient;
use cosigner_protocol::auth::public_key_bytes;
use cosigner_protocol::frame::{read_frame, write_frame};
use cosigner_protocol::mailbox::{
    CHALLENGE_LEN, Envelope, MailboxRequest, MailboxResponse, ReadProof, Topic, decode_response,
    encode_request, random_topic,
};
use cosigner_protocol::wire::ErrorKind;
use cosigner_tests::postgres::{Backend, database_for};
use cosigner_tests::{ChildGuard, Deployment, free_port, try_bin};
use p256::ecdsa::SigningKey;
use serde_bytes::ByteBuf;

fn key() -> SigningKey {
    SigningKey::random(&mut rand_core::OsRng)
}

/// A client that uses topics as `me`, one of `members`.
fn member(addr: &str, me: &SigningKey, members: &[&SigningKey]) -> MailboxClient {
    MailboxClient::connect(addr)
        .unwrap()
        .as_member(
            me.clone(),
            members.iter().map(|k| public_key_bytes(*k)).collect(),
        )
        .unwrap()
}

/// Starts `cosigner-parent run` on `dir/parent.toml` (written on the first call with `database`,
/// or `dir/store.db` when it is empty, and `extra` appended) and waits for the mailbox port. No
/// enclave: the mailbox does not need one.
fn start_parent_with(dir: &Path, mailbox_port: u16, database: &str, extra: &str) -> ChildGuard {
    let config = dir.join("parent.toml");
    if !config.exists() {
        let d = dir.display();
        let database = match database {
            "" => format!("{d}/store.db"),
            url => url.to_owned(),
        };
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{}\"\nenclave = \"unix:{d}/enclave.sock\"\n\
                 store_socket = \"{d}/store.sock\"\ndatabase = \"{database}\"\n\
                 mailbox_listen = \"127.0.0.1:{mailbox_port}\"\n{extra}",
                free_port()
            ),
        )
        .unwrap();
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("parent.log"))
        .unwrap();
    let child = std::process::Command::new(try_bin("cosigner-parent").unwrap())
        .args(["run", "--config"])
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let guard = ChildGuard(child);
    for _ in 0..400 {
        if TcpStream::connect(("127.0.0.1", mailbox_port)).is_ok() {
            return guard;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!(
        "the mailbox did not come up: {}",
        std::fs::read_to_string(dir.join("parent.log")).unwrap_or_default()
    );
}

fn start_parent(dir: &Path, mailbox_port: u16) -> ChildGuard {
    start_parent_with(dir, mailbox_port, "", "")
}

/// A fresh directory and port, and the parent started there with `extra` in its config.
fn start_fresh_parent(extra: &str) -> (tempfile::TempDir, u16, ChildGuard) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let parent = start_parent_with(dir.path(), port, "", extra);
    (dir, port, parent)
}

/// Like [`start_fresh_parent`], with the store on `backend`; also what keeps its database.
/// `None` when PostgreSQL is not installed (the test skips, saying so; `make test` requires it).
fn start_fresh_parent_on(
    backend: Backend,
    extra: &str,
) -> Option<(Box<dyn std::any::Any>, tempfile::TempDir, u16, ChildGuard)> {
    let (keep, database) = database_for(backend)?;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let parent = start_parent_with(dir.path(), port, &database, extra);
    Some((keep, dir, port, parent))
}

cosigner_tests::on_both_engines!(
    members_post_and_fetch_through_the_parent_binary,
    a_flood_by_one_sender_leaves_the_members_their_mailbox_and_strangers_read_nothing,
);

/// One request on a raw connection.
fn ask(raw: &mut TcpStream, request: &MailboxRequest) -> MailboxResponse {
    write_frame(raw, &encode_request(request).unwrap()).unwrap();
    decode_response(&read_frame(raw).unwrap().unwrap()).unwrap()
}

/// A fetch of the whole of `topic` on a raw connection, with `proof` or none.
fn fetch_raw(raw: &mut TcpStream, topic: Topic, proof: Option<ReadProof>) -> MailboxResponse {
    ask(
        raw,
        &MailboxRequest::Fetch {
            topic,
            after: 0,
            limit: 0,
            proof,
        },
    )
}

/// Asks a raw connection for its read challenge.
fn challenge(raw: &mut TcpStream) -> [u8; CHALLENGE_LEN] {
    let MailboxResponse::Challenge { nonce } = ask(raw, &MailboxRequest::Challenge) else {
        panic!("no challenge");
    };
    <[u8; CHALLENGE_LEN]>::try_from(nonce.as_slice()).unwrap()
}

fn raw(port: u16) -> TcpStream {
    let raw = TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw
}

fn members_post_and_fetch_through_the_parent_binary(backend: Backend) {
    let Some((_db, dir, port, mut parent)) = start_fresh_parent_on(backend, "") else {
        return;
    };
    let addr = format!("tcp://127.0.0.1:{port}");
    let (alice, bob) = (key(), key());
    let topic = random_topic().unwrap();

    let mut a = member(&addr, &alice, &[&alice, &bob]);
    let mut b = member(&addr, &bob, &[&alice, &bob]);
    let first = Envelope::seal(&alice, topic, b"round 1 from alice".to_vec()).unwrap();
    assert_eq!(a.post(&first).unwrap(), 1);
    assert_eq!(
        b.post(&Envelope::seal(&bob, topic, b"round 1 from bob".to_vec()).unwrap())
            .unwrap(),
        2
    );
    // The same envelope again (a retry, or a replay by anyone): the same place, nothing new.
    assert_eq!(b.post(&first).unwrap(), 1);
    // More than a page (256) of envelopes: fetch pages until the mailbox says there is no more.
    for i in 0..300u32 {
        let e = Envelope::seal(&bob, topic, i.to_be_bytes().to_vec()).unwrap();
        assert_eq!(b.post(&e).unwrap(), u64::from(i) + 3);
    }
    let all = a.fetch(&topic, 0).unwrap();
    assert_eq!(all.len(), 302);
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(all[0].1, first);
    assert_eq!(
        all[1].1.sender.as_slice(),
        public_key_bytes(&bob).as_slice()
    );
    assert_eq!(a.skipped(), 0);
    let tail = a.fetch(&topic, 300).unwrap();
    assert_eq!(tail.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [301, 302]);
    assert!(a.fetch(&random_topic().unwrap(), 0).unwrap().is_empty());

    // Refused posts: a tampered envelope, one for another topic; one line each, and the
    // connection stays usable.
    let mut tampered = Envelope::seal(&alice, topic, b"pay 1 BTC".to_vec()).unwrap();
    tampered.body = ByteBuf::from(b"pay 9 BTC".to_vec());
    let err = a.post(&tampered).unwrap_err();
    assert!(
        matches!(&err, ClientError::Remote(w) if w.kind == ErrorKind::BadRequest
            && w.message.contains("does not verify") && !w.message.contains('\n')),
        "{err}"
    );
    let mut raw_conn = raw(port);
    let other = Envelope::seal(&alice, Topic([9; 16]), b"x".to_vec()).unwrap();
    let answer = ask(
        &mut raw_conn,
        &MailboxRequest::Post {
            topic,
            envelope: ByteBuf::from(other.encode().unwrap()),
            members: vec![],
        },
    );
    assert!(
        matches!(&answer, MailboxResponse::Error(w) if w.message.contains("posted to")),
        "{answer:?}"
    );
    // Garbage: one error, then the connection is closed.
    write_frame(&mut raw_conn, b"not cbor at all").unwrap();
    let answer = decode_response(&read_frame(&mut raw_conn).unwrap().unwrap()).unwrap();
    assert!(
        matches!(&answer, MailboxResponse::Error(w) if w.kind == ErrorKind::BadRequest
            && w.message.contains("undecodable")),
        "{answer:?}"
    );
    let mut rest = Vec::new();
    assert_eq!(raw_conn.read_to_end(&mut rest).unwrap(), 0);
    // An oversized frame header: refused before its body is read.
    let mut raw_conn = raw(port);
    std::io::Write::write_all(&mut raw_conn, &u32::MAX.to_be_bytes()).unwrap();
    let answer = decode_response(&read_frame(&mut raw_conn).unwrap().unwrap()).unwrap();
    assert!(matches!(&answer, MailboxResponse::Error(w) if w.message.contains("exceeds")));

    // Killed and restarted: everything acknowledged is still there, and the clients reconnect
    // (and sign their reads over the new connection's challenge).
    drop(parent);
    parent = start_parent(dir.path(), port);
    assert_eq!(a.fetch(&topic, 0).unwrap().len(), 302);
    assert_eq!(a.post(&first).unwrap(), 1);
    let log = std::fs::read_to_string(dir.path().join("parent.log")).unwrap();
    assert!(
        log.contains(&format!("mailbox on 127.0.0.1:{port}")),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    drop(parent);
}

/// Whether a post was refused for its sender's quota: `Busy`, one line naming the sender.
fn over_quota(err: &ClientError, sender: &SigningKey, what: &str) -> bool {
    matches!(err, ClientError::Remote(w) if w.kind == ErrorKind::Busy
        && w.message.contains(&hex::encode(public_key_bytes(sender)))
        && w.message.contains(what)
        && !w.message.contains('\n'))
}

fn a_flood_by_one_sender_leaves_the_members_their_mailbox_and_strangers_read_nothing(
    backend: Backend,
) {
    // Small quotas so that the flood meets them quickly; the global caps are the defaults.
    let Some((_db, dir, port, parent)) = start_fresh_parent_on(
        backend,
        "[mailbox]\nquota_messages = 40\nquota_topics = 8\nquota_bytes = 2097152\n",
    ) else {
        return;
    };
    let addr = format!("tcp://127.0.0.1:{port}");
    let (alice, bob, provider, flooder) = (key(), key(), key(), key());
    let wallet = [&alice, &bob, &provider];

    // The DAO's ceremony starts: Alice founds the topic naming the wallet's members.
    let topic = random_topic().unwrap();
    let mut a = member(&addr, &alice, &wallet);
    let invitation = Envelope::seal(&alice, topic, b"invitation".to_vec()).unwrap();
    assert_eq!(a.post(&invitation).unwrap(), 1);

    // The flood: one key founds topics of its own until its topic quota stops it, then fills
    // one of them until its envelope quota does, then tries large envelopes against its bytes.
    let mut f = member(&addr, &flooder, &[&flooder]);
    let mut founded: Vec<Topic> = Vec::new();
    let err = loop {
        let t = random_topic().unwrap();
        match f.post(&Envelope::seal(&flooder, t, b"junk".to_vec()).unwrap()) {
            Ok(_) => founded.push(t),
            Err(e) => break e,
        }
        assert!(founded.len() <= 8, "the topic quota did not stop the flood");
    };
    assert_eq!(founded.len(), 8);
    assert!(over_quota(&err, &flooder, "topics founded"), "{err}");
    let mut posted = founded.len();
    let err = loop {
        let body = format!("junk {posted}").into_bytes();
        match f.post(&Envelope::seal(&flooder, founded[0], body).unwrap()) {
            Ok(_) => posted += 1,
            Err(e) => break e,
        }
        assert!(posted <= 40, "the envelope quota did not stop the flood");
    };
    assert_eq!(posted, 40);
    assert!(over_quota(&err, &flooder, "envelopes"), "{err}");
    // Into the members' topic it cannot even post: it is not a member.
    let mut raw_conn = raw(port);
    let intruder = Envelope::seal(&flooder, topic, b"noise".to_vec()).unwrap();
    let answer = ask(
        &mut raw_conn,
        &MailboxRequest::Post {
            topic,
            envelope: ByteBuf::from(intruder.encode().unwrap()),
            members: vec![ByteBuf::from(public_key_bytes(&flooder))],
        },
    );
    assert!(
        matches!(&answer, MailboxResponse::Error(w) if w.kind == ErrorKind::BadRequest
            && w.message.contains("not a member")),
        "{answer:?}"
    );
    // Another flooder's large envelopes meet the bytes quota (2 MiB: four of ~510 KiB).
    let heavy = key();
    let mut h = member(&addr, &heavy, &[&heavy]);
    let heavy_topic = random_topic().unwrap();
    let mut sent = 0;
    let err = loop {
        let body = vec![sent; 510 * 1024];
        match h.post(&Envelope::seal(&heavy, heavy_topic, body).unwrap()) {
            Ok(_) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent <= 4, "the bytes quota did not stop the flood");
    };
    assert!(over_quota(&err, &heavy, "envelope bytes"), "{err}");

    // The DAO's members carry on: Bob and the provider (through a member's courier) post and
    // everyone reads the whole ceremony.
    let mut b = member(&addr, &bob, &wallet);
    assert_eq!(
        b.post(&Envelope::seal(&bob, topic, b"round 1 from bob".to_vec()).unwrap())
            .unwrap(),
        2
    );
    assert_eq!(
        b.post(&Envelope::seal(&provider, topic, b"round 1 from the provider".to_vec()).unwrap())
            .unwrap(),
        3
    );
    // A new ceremony too: members found topics as before.
    let next = random_topic().unwrap();
    assert_eq!(
        a.post(&Envelope::seal(&alice, next, b"sign request".to_vec()).unwrap())
            .unwrap(),
        1
    );
    for c in [&mut a, &mut b] {
        let got = c.fetch(&topic, 0).unwrap();
        assert_eq!(got.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(got[0].1, invitation);
    }

    // A stranger who knows the topic reads nothing: not without a proof...
    let mut raw_conn = raw(port);
    let answer = fetch_raw(&mut raw_conn, topic, None);
    assert!(
        matches!(&answer, MailboxResponse::Error(w) if w.message.contains("members only")),
        "{answer:?}"
    );
    // ...nor with a proof by a key of its own (the flooder's, say)...
    let mine = challenge(&mut raw_conn);
    let answer = fetch_raw(
        &mut raw_conn,
        topic,
        Some(ReadProof::sign(&flooder, &mine, &topic).unwrap()),
    );
    assert!(
        matches!(&answer, MailboxResponse::Error(w) if w.message.contains("not a member")),
        "{answer:?}"
    );
    // ...nor by replaying a member's proof made for another connection.
    let mut other_conn = raw(port);
    let theirs = challenge(&mut other_conn);
    let alices = ReadProof::sign(&alice, &theirs, &topic).unwrap();
    let answer = fetch_raw(&mut raw_conn, topic, Some(alices.clone()));
    assert!(
        matches!(&answer, MailboxResponse::Error(w) if w.message.contains("does not verify")),
        "{answer:?}"
    );
    // On the connection it was made for, it reads (the members, as founded, come along).
    let answer = fetch_raw(&mut other_conn, topic, Some(alices));
    assert!(
        matches!(&answer, MailboxResponse::Messages { items, members, .. }
            if items.len() == 3 && members.len() == 3),
        "{answer:?}"
    );
    // The client library as a stranger: refused the same way.
    let mut stranger = MailboxClient::connect(&addr).unwrap();
    let err = stranger.fetch(&topic, 0).unwrap_err();
    assert!(
        matches!(&err, ClientError::Remote(w) if w.message.contains("members only")),
        "{err}"
    );
    drop(parent);
    let log = std::fs::read_to_string(dir.path().join("parent.log")).unwrap();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn the_mailbox_speaks_tls_to_members_who_pin_its_certificate() {
    let (dir, port, parent) = start_fresh_parent(
        "[mailbox]\ntls_certificate = \"mailbox.crt\"\ntls_key = \"mailbox.key\"\n",
    );
    // The parent made the pair at its first start and prints the address members pin.
    let mut addr = None;
    for _ in 0..200 {
        let log = std::fs::read_to_string(dir.path().join("parent.log")).unwrap();
        if let Some(at) = log.find("mailbox on tls://") {
            addr = log[at + "mailbox on ".len()..]
                .split_whitespace()
                .next()
                .map(String::from);
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let addr = addr.expect("the parent prints the mailbox's pinned address");
    assert!(
        addr.starts_with(&format!("tls://127.0.0.1:{port}#sha256:")),
        "{addr}"
    );
    assert!(dir.path().join("mailbox.key").exists());

    let (alice, bob) = (key(), key());
    let topic = random_topic().unwrap();
    // Alice talks through a relay that records every byte (a network observer).
    let (relay_port, seen) = recording_relay(port);
    let (_, pin) = addr.split_once('#').unwrap();
    let relayed = format!("tls://127.0.0.1:{relay_port}#{pin}");
    let mut a = member(&relayed, &alice, &[&alice, &bob]);
    let mut b = member(&addr, &bob, &[&alice, &bob]);
    let secret = b"a PSBT, privately";
    let e = Envelope::seal(&alice, topic, secret.to_vec()).unwrap();
    assert_eq!(a.post(&e).unwrap(), 1);
    assert_eq!(a.fetch(&topic, 0).unwrap(), vec![(1, e.clone())]);
    assert_eq!(b.fetch(&topic, 0).unwrap(), vec![(1, e.clone())]);
    drop(a);
    // The observer saw the exchange, but neither the body, the topic nor Alice's key.
    let captured = seen.lock().unwrap().clone();
    assert!(
        captured.len() > 1000,
        "the relay saw {} bytes",
        captured.len()
    );
    let alice_key = public_key_bytes(&alice);
    for needle in [&secret[..], topic.as_slice(), &alice_key[..]] {
        assert!(!captured.windows(needle.len()).any(|w| w == needle));
    }

    // Another certificate than the pinned one (a relay, a substituted parent): no connection.
    let (host, _) = addr.split_once('#').unwrap();
    let wrong = format!("{host}#sha256:{}", "00".repeat(32));
    let err = MailboxClient::connect(&wrong).unwrap_err();
    assert!(err.to_string().contains("pinned"), "{err}");
    // Plain TCP to it gets no mailbox answer.
    let mut raw_conn = raw(port);
    write_frame(
        &mut raw_conn,
        &encode_request(&MailboxRequest::Challenge).unwrap(),
    )
    .unwrap();
    assert!(!matches!(read_frame(&mut raw_conn), Ok(Some(_))));
    // The restarted parent keeps its certificate, so the members' pin still holds.
    drop(parent);
    let parent = start_parent_with(dir.path(), port, "", "");
    assert_eq!(b.fetch(&topic, 0).unwrap(), vec![(1, e)]);
    drop(parent);
}

/// A TCP relay to `127.0.0.1:to` that records the bytes of every connection, both ways.
fn recording_relay(to: u16) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
    use std::sync::{Arc, Mutex};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorder = Arc::clone(&seen);
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                return;
            };
            for (mut from, mut into) in [
                (client.try_clone().unwrap(), server.try_clone().unwrap()),
                (server, client),
            ] {
                let recorder = Arc::clone(&recorder);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || std::io::Write::write_all(&mut into, &buf[..n]).is_err() {
                            break;
                        }
                        recorder.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                    let _ = into.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    (port, seen)
}

#[test]
fn the_deployment_serves_a_mailbox_at_its_provider() {
    let deployment = Deployment::start().unwrap();
    assert_eq!(deployment.mailbox, deployment.provider.mailbox_addr());
    let member_key = key();
    let topic = random_topic().unwrap();
    let mut client = member(&deployment.mailbox, &member_key, &[&member_key]);
    let e = Envelope::seal(&member_key, topic, b"hello".to_vec()).unwrap();
    assert_eq!(client.post(&e).unwrap(), 1);
    let got = client.fetch(&topic, 0).unwrap();
    assert_eq!(got, vec![(1, e)]);
    // The recovery cosigner's parent has a mailbox of its own, which knows nothing of it.
    let mut other = member(
        &deployment.recovery.mailbox_addr(),
        &member_key,
        &[&member_key],
    );
    assert!(other.fetch(&topic, 0).unwrap().is_empty());
}
