//! The members' mailbox through the real `cosigner-parent` binary (`mailbox_listen`), with the
//! client library's `MailboxClient`: posts, paged fetches, duplicates, refusals, durability
//! across a restart, and the harness's `Deployment::mailbox`.

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
    Envelope, MailboxRequest, MailboxResponse, decode_response, encode_request, random_topic,
};
use cosigner_protocol::wire::ErrorKind;
use cosigner_tests::{ChildGuard, Deployment, free_port, try_bin};
use p256::ecdsa::SigningKey;
use serde_bytes::ByteBuf;

fn key() -> SigningKey {
    SigningKey::random(&mut rand_core::OsRng)
}

/// Starts `cosigner-parent run` on `dir/parent.toml` (written on the first call) and waits for
/// the mailbox port. No enclave: the mailbox does not need one.
fn start_parent(dir: &Path, mailbox_port: u16) -> ChildGuard {
    let config = dir.join("parent.toml");
    if !config.exists() {
        let d = dir.display();
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{}\"\nenclave = \"unix:{d}/enclave.sock\"\n\
                 store_socket = \"{d}/store.sock\"\ndatabase = \"{d}/store.db\"\n\
                 mailbox_listen = \"127.0.0.1:{mailbox_port}\"\n",
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

#[test]
fn members_post_and_fetch_through_the_parent_binary() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut parent = start_parent(dir.path(), port);
    let addr = format!("tcp://127.0.0.1:{port}");
    let (alice, bob) = (key(), key());
    let topic = random_topic().unwrap();

    let mut a = MailboxClient::connect(&addr).unwrap();
    let mut b = MailboxClient::connect(&addr).unwrap();
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
    let mut raw = TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let other = Envelope::seal(&alice, [9; 16], b"x".to_vec()).unwrap();
    write_frame(
        &mut raw,
        &encode_request(&MailboxRequest::Post {
            topic,
            envelope: ByteBuf::from(other.encode().unwrap()),
        })
        .unwrap(),
    )
    .unwrap();
    let answer = decode_response(&read_frame(&mut raw).unwrap().unwrap()).unwrap();
    assert!(
        matches!(&answer, MailboxResponse::Error(w) if w.message.contains("posted to")),
        "{answer:?}"
    );
    // Garbage: one error, then the connection is closed.
    write_frame(&mut raw, b"not cbor at all").unwrap();
    let answer = decode_response(&read_frame(&mut raw).unwrap().unwrap()).unwrap();
    assert!(
        matches!(&answer, MailboxResponse::Error(w) if w.kind == ErrorKind::BadRequest
            && w.message.contains("undecodable")),
        "{answer:?}"
    );
    let mut rest = Vec::new();
    assert_eq!(raw.read_to_end(&mut rest).unwrap(), 0);
    // An oversized frame header: refused before its body is read.
    let mut raw = TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    std::io::Write::write_all(&mut raw, &u32::MAX.to_be_bytes()).unwrap();
    let answer = decode_response(&read_frame(&mut raw).unwrap().unwrap()).unwrap();
    assert!(matches!(&answer, MailboxResponse::Error(w) if w.message.contains("exceeds")));

    // Killed and restarted: everything acknowledged is still there, and the clients reconnect.
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

#[test]
fn the_deployment_serves_a_mailbox_at_its_provider() {
    let deployment = Deployment::start().unwrap();
    assert_eq!(deployment.mailbox, deployment.provider.mailbox_addr());
    let member = key();
    let topic = random_topic().unwrap();
    let mut client = MailboxClient::connect(&deployment.mailbox).unwrap();
    let e = Envelope::seal(&member, topic, b"hello".to_vec()).unwrap();
    assert_eq!(client.post(&e).unwrap(), 1);
    let got = client.fetch(&topic, 0).unwrap();
    assert_eq!(got, vec![(1, e)]);
    // The recovery cosigner's parent has a mailbox of its own, which knows nothing of it.
    let mut other = MailboxClient::connect(&deployment.recovery.mailbox_addr()).unwrap();
    assert!(other.fetch(&topic, 0).unwrap().is_empty());
}
