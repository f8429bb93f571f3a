//! The client of the members' mailbox (hosted by a parent, `mailbox_listen`).
//!
//! The mailbox is untrusted: [`MailboxClient::fetch`] returns only envelopes that decode, carry the
//! topic asked for and verify under their sender's key, each once (by [`Envelope::id`]); anything
//! else the mailbox hands out is skipped and counted ([`MailboxClient::skipped`]). Whether a
//! sender is one the caller expects is the caller's to check. Posting is idempotent (the mailbox
//! answers a duplicate with its existing sequence number), so a request cut off by a broken
//! connection is sent again once on a fresh one.
//!
//! Topics are their members' only: a client that is a member ([`MailboxClient::as_member`])
//! names the topic's members with every post (the one that founds the topic sets them), signs
//! every fetch with its key over the connection's challenge, and refuses a topic whose members,
//! as the mailbox reports them, include a key it does not expect (a stranger who founded the
//! topic first to read along).
//!
//! Addresses: `tcp://HOST:PORT` (or `HOST:PORT`), or `tls://HOST:PORT#sha256:HEX` for a mailbox
//! with a certificate: TLS 1.3 to exactly the certificate whose SHA-256 is `HEX` (the parent
//! prints it at start). TLS keeps the envelopes from the network; the parent still reads them.

use cosigner_protocol::auth::P256Signer;
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use cosigner_protocol::auth::public_key_bytes;
use cosigner_protocol::frame::{read_frame, write_frame};
use cosigner_protocol::mailbox::{
    CHALLENGE_LEN, Envelope, MAX_PAGE, MailboxRequest, MailboxResponse, ReadProof, Topic,
    check_members, decode_response, encode_request,
};
use rustls::{ClientConnection, StreamOwned};
use serde_bytes::ByteBuf;

use crate::error::{ClientError, Result};
use crate::session::{ServerCertificate, parse_address, tls_handshake};

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one answer may take.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Most items one [`MailboxClient::fetch`] reads before it gives up on the mailbox (a hostile
/// one could otherwise page for ever).
pub const MAX_FETCH_ITEMS: usize = 65_536;
/// The name sent in the TLS hello (the certificate is pinned, its names are not checked).
const TLS_NAME: &str = "cosigner-mailbox";

/// Where a mailbox is, and the certificate it must present if it speaks TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxAddr {
    /// `HOST:PORT`.
    pub host_port: String,
    /// SHA-256 of the mailbox's certificate (`tls://`), or `None` (plain TCP).
    pub pin: Option<[u8; 32]>,
}

impl MailboxAddr {
    /// Parses `tcp://HOST:PORT`, `HOST:PORT` or `tls://HOST:PORT#sha256:HEX`.
    pub fn parse(addr: &str) -> Result<Self> {
        let Some(rest) = addr.strip_prefix("tls://") else {
            return Ok(MailboxAddr {
                host_port: parse_address(addr)?,
                pin: None,
            });
        };
        let bad = |why: &str| {
            ClientError::Input(format!(
                "mailbox address {addr:?}: {why}; expected tls://HOST:PORT#sha256:HEX (the \
                 SHA-256 of the mailbox's certificate, as its parent prints it)"
            ))
        };
        let (host_port, pin) = rest
            .split_once('#')
            .ok_or_else(|| bad("no certificate pin"))?;
        let pin = pin
            .strip_prefix("sha256:")
            .and_then(|h| hex::decode(h).ok())
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| bad("the pin is not sha256: and 64 hex digits"))?;
        Ok(MailboxAddr {
            host_port: parse_address(host_port)?,
            pin: Some(pin),
        })
    }
}

/// A connection to the mailbox, plain or TLS.
enum Stream {
    Tcp(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// One open connection and the read challenge the mailbox drew for it, once asked.
struct Connection {
    stream: Stream,
    challenge: Option<[u8; CHALLENGE_LEN]>,
}

/// Who this client is in the topics it uses: the key it reads with (and posts as), and the
/// topics' members.
struct Member {
    key: std::sync::Arc<dyn P256Signer>,
    members: Vec<Vec<u8>>,
}

/// A connection to a mailbox.
pub struct MailboxClient {
    addr: String,
    target: MailboxAddr,
    conn: Option<Connection>,
    member: Option<Member>,
    skipped: u64,
}

impl std::fmt::Debug for MailboxClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailboxClient")
            .field("addr", &self.addr)
            .field(
                "member",
                &self
                    .member
                    .as_ref()
                    .map(|m| hex::encode(public_key_bytes(&m.key))),
            )
            .field("skipped", &self.skipped)
            .finish_non_exhaustive()
    }
}

impl MailboxClient {
    /// Connects to `tcp://HOST:PORT` (or `HOST:PORT`), or to `tls://HOST:PORT#sha256:HEX` (TLS
    /// 1.3 with the certificate pinned). Without [`MailboxClient::as_member`] it can post to
    /// existing topics and read none but those founded before topics had members.
    pub fn connect(addr: &str) -> Result<Self> {
        let mut client = MailboxClient {
            addr: addr.to_owned(),
            target: MailboxAddr::parse(addr)?,
            conn: None,
            member: None,
            skipped: 0,
        };
        client.conn = Some(client.open()?);
        Ok(client)
    }

    /// Uses topics as `key`, one of `members` (SEC1 compressed P-256 keys: the wallet's devices
    /// and its provider): every post names them (for the post that founds a topic), every fetch
    /// is signed with `key`, and a topic whose members include anyone else is refused.
    pub fn as_member(
        mut self,
        key: impl P256Signer + 'static,
        members: Vec<Vec<u8>>,
    ) -> Result<Self> {
        let key: std::sync::Arc<dyn P256Signer> = std::sync::Arc::new(key);
        let listed: Vec<ByteBuf> = members.iter().cloned().map(ByteBuf::from).collect();
        check_members(&listed)?;
        let me = public_key_bytes(&key);
        if !members.contains(&me) {
            return Err(ClientError::Input(format!(
                "this device's key {} is not among the topic's members",
                hex::encode(&me)
            )));
        }
        self.member = Some(Member { key, members });
        Ok(self)
    }

    /// The address connected to, as given.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Posts `envelope` to its topic; returns its sequence number there (the existing one if the
    /// mailbox already had it).
    pub fn post(&mut self, envelope: &Envelope) -> Result<u64> {
        let request = MailboxRequest::Post {
            topic: envelope.topic,
            envelope: ByteBuf::from(envelope.encode()?),
            members: self
                .member
                .as_ref()
                .map(|m| m.members.iter().cloned().map(ByteBuf::from).collect())
                .unwrap_or_default(),
        };
        match self.exchange(false, &|_| Ok(request.clone()))? {
            MailboxResponse::Posted { seq } => Ok(seq),
            MailboxResponse::Error(e) => Err(ClientError::Remote(e)),
            other => Err(unexpected(&other)),
        }
    }

    /// Checks, before a first post, that `topic` admits only this member's list: a topic that
    /// already exists was founded by someone, and a topic that lives longer than the mailbox keeps
    /// it (a wallet's own topic) can be founded again by a stranger naming himself a member, to
    /// read what is posted there or to have the posts refused. Reads no envelope (it asks for
    /// those after the last possible sequence number), only the member list.
    pub fn check_topic(&mut self, topic: &Topic) -> Result<()> {
        self.fetch(topic, u64::MAX).map(|_| ())
    }

    /// Every envelope of `topic` after sequence number `after`, paging until the mailbox says
    /// there is no more: `(seq, envelope)` in sequence order, verified, for `topic`, each once.
    /// The others are skipped and counted in [`MailboxClient::skipped`].
    pub fn fetch(&mut self, topic: &Topic, after: u64) -> Result<Vec<(u64, Envelope)>> {
        let mut cursor = after;
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let mut read = 0usize;
        // The builder below must not borrow `self`, which the exchange needs mutably.
        let key = self.member.as_ref().map(|m| m.key.clone());
        loop {
            let at = cursor;
            let build = |challenge: Option<&[u8; CHALLENGE_LEN]>| {
                let proof = match (challenge, &key) {
                    (Some(c), Some(k)) => Some(ReadProof::sign(k, c, topic)?),
                    _ => None,
                };
                Ok(MailboxRequest::Fetch {
                    topic: *topic,
                    after: at,
                    limit: MAX_PAGE,
                    proof,
                })
            };
            let (items, more, members) = match self.exchange(key.is_some(), &build)? {
                MailboxResponse::Messages {
                    items,
                    more,
                    members,
                } => (items, more, members),
                MailboxResponse::Error(e) => return Err(ClientError::Remote(e)),
                other => return Err(unexpected(&other)),
            };
            self.check_members(topic, &members, !items.is_empty())?;
            let start = cursor;
            read = read.saturating_add(items.len());
            if read > MAX_FETCH_ITEMS {
                return Err(ClientError::Unexpected(format!(
                    "mailbox {} sent more than {MAX_FETCH_ITEMS} items for one topic",
                    self.addr
                )));
            }
            for item in items {
                // Out of order (at or below what was already read): a replay; not ours to trust.
                if item.seq <= cursor {
                    self.skipped += 1;
                    continue;
                }
                cursor = item.seq;
                match Envelope::open(&item.envelope, topic) {
                    Ok(envelope) if seen.insert(envelope.id()) => out.push((item.seq, envelope)),
                    _ => self.skipped += 1,
                }
            }
            if !more {
                return Ok(out);
            }
            if cursor == start {
                return Err(ClientError::Unexpected(format!(
                    "mailbox {} says there is more after {cursor} but sends nothing new",
                    self.addr
                )));
            }
        }
    }

    /// Envelopes [`MailboxClient::fetch`] has dropped so far on this client: undecodable, for
    /// another topic, not verifying, duplicates, or out of order.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// A member refuses a topic the mailbox says admits someone it does not expect (someone
    /// founded it first, to read along), and one that holds envelopes but admits anyone.
    fn check_members(&self, topic: &Topic, reported: &[ByteBuf], has_items: bool) -> Result<()> {
        let Some(m) = &self.member else {
            return Ok(());
        };
        if let Some(stranger) = reported
            .iter()
            .find(|r| !m.members.iter().any(|k| k.as_slice() == r.as_slice()))
        {
            return Err(ClientError::Unexpected(format!(
                "mailbox {}: topic {} admits {}, who is not one of its members: someone else \
                 founded it; do not use it",
                self.addr,
                hex::encode(topic),
                hex::encode(stranger)
            )));
        }
        if reported.is_empty() && has_items {
            return Err(ClientError::Unexpected(format!(
                "mailbox {}: topic {} is open to anyone (founded without members)",
                self.addr,
                hex::encode(topic)
            )));
        }
        Ok(())
    }

    /// One request, one response; a connection failure is retried once on a new connection
    /// (every request is idempotent). `build` makes the request for the connection it goes on:
    /// given its read challenge when `needs_challenge`.
    fn exchange(
        &mut self,
        needs_challenge: bool,
        build: &dyn Fn(Option<&[u8; CHALLENGE_LEN]>) -> Result<MailboxRequest>,
    ) -> Result<MailboxResponse> {
        match self.try_exchange(needs_challenge, build) {
            Ok(r) => Ok(r),
            Err(ClientError::Connection { .. }) => {
                self.conn = None;
                self.try_exchange(needs_challenge, build)
            }
            Err(e) => Err(e),
        }
    }

    fn try_exchange(
        &mut self,
        needs_challenge: bool,
        build: &dyn Fn(Option<&[u8; CHALLENGE_LEN]>) -> Result<MailboxRequest>,
    ) -> Result<MailboxResponse> {
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => self.open()?,
        };
        let challenge = if needs_challenge {
            Some(self.challenge(&mut conn)?)
        } else {
            None
        };
        let body = encode_request(&build(challenge.as_ref())?)?;
        let response = self.round_trip(&mut conn, &body)?;
        // Only a connection that answered in full is kept for the next request.
        self.conn = Some(conn);
        Ok(response)
    }

    /// The read challenge of `conn`, asked for once per connection.
    fn challenge(&self, conn: &mut Connection) -> Result<[u8; CHALLENGE_LEN]> {
        if let Some(c) = conn.challenge {
            return Ok(c);
        }
        let body = encode_request(&MailboxRequest::Challenge)?;
        let nonce = match self.round_trip(conn, &body)? {
            MailboxResponse::Challenge { nonce } => nonce,
            MailboxResponse::Error(e) => {
                return Err(ClientError::Unexpected(format!(
                    "mailbox {} hands out no read challenge (a parent from before members-only \
                     topics?): {}",
                    self.addr, e.message
                )));
            }
            other => return Err(unexpected(&other)),
        };
        let c = <[u8; CHALLENGE_LEN]>::try_from(nonce.as_slice()).map_err(|_| {
            ClientError::Unexpected(format!(
                "mailbox {} sent a {}-byte challenge, expected {CHALLENGE_LEN}",
                self.addr,
                nonce.len()
            ))
        })?;
        conn.challenge = Some(c);
        Ok(c)
    }

    fn round_trip(&self, conn: &mut Connection, body: &[u8]) -> Result<MailboxResponse> {
        write_frame(&mut conn.stream, body).map_err(|e| self.conn_err(e.to_string()))?;
        let frame = read_frame(&mut conn.stream)
            .map_err(|e| self.conn_err(e.to_string()))?
            .ok_or_else(|| self.conn_err("closed by the mailbox".into()))?;
        Ok(decode_response(&frame)?)
    }

    fn open(&self) -> Result<Connection> {
        let addrs = self
            .target
            .host_port
            .to_socket_addrs()
            .map_err(|e| self.conn_err(e.to_string()))?;
        let mut last = String::from("no address");
        for a in addrs {
            match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
                Ok(s) => {
                    s.set_nodelay(true)
                        .and_then(|()| s.set_read_timeout(Some(IO_TIMEOUT)))
                        .and_then(|()| s.set_write_timeout(Some(IO_TIMEOUT)))
                        .map_err(|e| self.conn_err(e.to_string()))?;
                    let stream = match self.target.pin {
                        // TLS 1.3 to the pinned certificate, the handshake completed before
                        // anything is sent.
                        Some(pin) => Stream::Tls(Box::new(tls_handshake(
                            s,
                            TLS_NAME,
                            ServerCertificate::Pinned(pin),
                            |e| self.conn_err(format!("TLS handshake: {e}")),
                        )?)),
                        None => Stream::Tcp(s),
                    };
                    return Ok(Connection {
                        stream,
                        challenge: None,
                    });
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(self.conn_err(last))
    }

    fn conn_err(&self, reason: String) -> ClientError {
        ClientError::Connection {
            addr: self.addr.clone(),
            reason,
        }
    }
}

fn unexpected(response: &MailboxResponse) -> ClientError {
    let what = match response {
        MailboxResponse::Posted { .. } => "Posted",
        MailboxResponse::Messages { .. } => "Messages",
        MailboxResponse::Challenge { .. } => "Challenge",
        MailboxResponse::Error(_) => "Error",
        _ => "an unknown response",
    };
    ClientError::Unexpected(format!("mailbox answered {what}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use cosigner_protocol::mailbox::{MailboxItem, decode_request, encode_response};
    use cosigner_protocol::wire::{ErrorKind, WireError};
    use p256::ecdsa::SigningKey;
    use std::net::TcpListener;

    /// A scripted mailbox: answers each request with the next response, recording the requests;
    /// `None` closes the connection instead (the client must reconnect).
    fn fake(
        script: Vec<Option<MailboxResponse>>,
    ) -> (String, std::thread::JoinHandle<Vec<MailboxRequest>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("tcp://{}", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut script = script.into_iter();
            'conns: for conn in listener.incoming() {
                let mut conn = conn.unwrap();
                while let Some(frame) = read_frame(&mut conn).unwrap() {
                    seen.push(decode_request(&frame).unwrap());
                    match script.next() {
                        Some(Some(r)) => {
                            write_frame(&mut conn, &encode_response(&r).unwrap()).unwrap();
                        }
                        Some(None) => continue 'conns,
                        None => break 'conns,
                    }
                }
                if script.as_slice().is_empty() {
                    break;
                }
            }
            seen
        });
        (addr, handle)
    }

    fn item(seq: u64, e: &Envelope) -> MailboxItem {
        MailboxItem {
            seq,
            envelope: ByteBuf::from(e.encode().unwrap()),
        }
    }

    #[test]
    fn fetch_pages_verifies_and_skips_what_does_not() {
        let k = SigningKey::random(&mut rand_core::OsRng);
        let t = Topic([1; 16]);
        let good: Vec<Envelope> = (0..4u8)
            .map(|i| Envelope::seal(&k, t, vec![i]).unwrap())
            .collect();
        let mut tampered = good[0].clone();
        tampered.body = ByteBuf::from(b"changed".to_vec());
        let other_topic = Envelope::seal(&k, Topic([2; 16]), b"x".to_vec()).unwrap();
        let script = vec![
            Some(MailboxResponse::Messages {
                items: vec![
                    item(1, &good[0]),
                    item(2, &tampered),
                    MailboxItem {
                        seq: 3,
                        envelope: ByteBuf::from(b"garbage".to_vec()),
                    },
                    item(4, &good[1]),
                ],
                more: true,
                members: vec![],
            }),
            Some(MailboxResponse::Messages {
                items: vec![
                    item(4, &good[1]), // replayed across pages: out of order
                    item(5, &other_topic),
                    item(6, &good[0]), // replayed under a new seq: a duplicate id
                    item(7, &good[2]),
                ],
                more: true,
                members: vec![],
            }),
            Some(MailboxResponse::Messages {
                items: vec![item(9, &good[3])],
                more: false,
                members: vec![],
            }),
        ];
        let (addr, server) = fake(script);
        let mut client = MailboxClient::connect(&addr).unwrap();
        let got = client.fetch(&t, 0).unwrap();
        assert_eq!(
            got.iter().map(|(s, e)| (*s, e.body[0])).collect::<Vec<_>>(),
            [(1, 0), (4, 1), (7, 2), (9, 3)]
        );
        assert_eq!(client.skipped(), 5);
        drop(client);
        let requests = server.join().unwrap();
        let afters: Vec<u64> = requests
            .iter()
            .map(|r| match r {
                MailboxRequest::Fetch { after, topic, .. } => {
                    assert_eq!(topic, &t);
                    *after
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(afters, [0, 4, 7]);
    }

    #[test]
    fn a_mailbox_that_pages_without_progress_is_refused() {
        let script = vec![Some(MailboxResponse::Messages {
            items: vec![],
            more: true,
            members: vec![],
        })];
        let (addr, _server) = fake(script);
        let mut client = MailboxClient::connect(&addr).unwrap();
        let err = client.fetch(&Topic([1; 16]), 0).unwrap_err();
        assert!(err.to_string().contains("sends nothing new"), "{err}");
    }

    #[test]
    fn post_returns_the_sequence_number_reconnects_once_and_reports_refusals() {
        let k = SigningKey::random(&mut rand_core::OsRng);
        let e = Envelope::seal(&k, Topic([3; 16]), b"hi".to_vec()).unwrap();
        let script = vec![
            Some(MailboxResponse::Posted { seq: 1 }),
            None, // the connection drops mid-request: sent again on a new one
            Some(MailboxResponse::Posted { seq: 1 }),
            Some(MailboxResponse::Error(WireError::new(
                ErrorKind::BadRequest,
                "mailbox full: topics (at most 2)",
            ))),
            Some(MailboxResponse::Posted { seq: 2 }),
        ];
        let (addr, server) = fake(script);
        let mut client = MailboxClient::connect(&addr).unwrap();
        assert_eq!(client.post(&e).unwrap(), 1);
        assert_eq!(client.post(&e).unwrap(), 1);
        let err = client.post(&e).unwrap_err();
        assert!(matches!(err, ClientError::Remote(ref w) if w.message.contains("full")));
        // A response of the wrong kind for a fetch.
        let err = client.fetch(&Topic([3; 16]), 0).unwrap_err();
        assert!(matches!(err, ClientError::Unexpected(_)), "{err}");
        drop(client);
        let requests = server.join().unwrap();
        assert_eq!(requests.len(), 5);
        assert!(
            matches!(&requests[0], MailboxRequest::Post { topic, .. } if topic == &Topic([3; 16]))
        );
    }

    fn pk(k: &SigningKey) -> Vec<u8> {
        public_key_bytes(k)
    }

    #[test]
    fn a_member_names_the_members_signs_its_reads_and_checks_the_topics_members() {
        let [me, other, stranger] = keys();
        let t = Topic([4; 16]);
        let members = vec![pk(&me), pk(&other)];
        let listed: Vec<ByteBuf> = members.iter().cloned().map(ByteBuf::from).collect();
        let e = Envelope::seal(&other, t, b"hi".to_vec()).unwrap();
        let challenge = |n: u8| {
            Some(MailboxResponse::Challenge {
                nonce: ByteBuf::from(vec![n; CHALLENGE_LEN]),
            })
        };
        let script = vec![
            Some(MailboxResponse::Posted { seq: 1 }),
            challenge(1),
            Some(MailboxResponse::Messages {
                items: vec![item(1, &e)],
                more: false,
                members: listed.clone(),
            }),
            // The connection drops: the next fetch asks the new connection for its challenge.
            None,
            challenge(2),
            Some(MailboxResponse::Messages {
                items: vec![item(1, &e)],
                more: false,
                members: vec![listed[0].clone(), ByteBuf::from(pk(&stranger))],
            }),
            Some(MailboxResponse::Messages {
                items: vec![item(1, &e)],
                more: false,
                members: vec![],
            }),
            // Nothing yet, in a topic nobody founded: no members to show, and that is fine.
            Some(MailboxResponse::Messages {
                items: vec![],
                more: false,
                members: vec![],
            }),
        ];
        let (addr, server) = fake(script);
        let mut client = MailboxClient::connect(&addr)
            .unwrap()
            .as_member(me.clone(), members.clone())
            .unwrap();
        let mine = Envelope::seal(&me, t, b"mine".to_vec()).unwrap();
        assert_eq!(client.post(&mine).unwrap(), 1);
        assert_eq!(client.fetch(&t, 0).unwrap(), vec![(1, e.clone())]);
        // After the drop: a stranger among the members is refused...
        let err = client.fetch(&t, 0).unwrap_err();
        assert!(err.to_string().contains("someone else founded it"), "{err}");
        // ...and so is a topic that holds envelopes but admits anyone.
        let err = client.fetch(&t, 0).unwrap_err();
        assert!(err.to_string().contains("open to anyone"), "{err}");
        assert!(client.fetch(&Topic([5; 16]), 0).unwrap().is_empty());
        drop(client);
        let requests = server.join().unwrap();
        assert!(matches!(&requests[0], MailboxRequest::Post { members: m, .. } if m == &listed));
        assert_eq!(requests[1], MailboxRequest::Challenge);
        let proof_of = |r: &MailboxRequest| match r {
            MailboxRequest::Fetch {
                proof: Some(p),
                topic,
                ..
            } => (p.clone(), *topic),
            other => panic!("{other:?}"),
        };
        let (p, topic) = proof_of(&requests[2]);
        p.verify(&[1; CHALLENGE_LEN], &topic).unwrap();
        assert_eq!(p.reader.as_slice(), pk(&me).as_slice());
        // The fetch cut off by the drop was sent again, after the new connection's challenge.
        assert_eq!(requests[4], MailboxRequest::Challenge);
        let (p, topic) = proof_of(&requests[5]);
        p.verify(&[2; CHALLENGE_LEN], &topic).unwrap();
        assert!(p.verify(&[1; CHALLENGE_LEN], &topic).is_err());
        // One challenge per connection, not per fetch.
        proof_of(&requests[6])
            .0
            .verify(&[2; CHALLENGE_LEN], &t)
            .unwrap();
        assert_eq!(requests.len(), 8);

        // A member list without this device, or with a malformed key, is refused up front.
        let (addr, _server) = fake(vec![]);
        let c = MailboxClient::connect(&addr).unwrap();
        assert!(c.as_member(me.clone(), vec![pk(&other)]).is_err());
        let (addr, _server) = fake(vec![]);
        let c = MailboxClient::connect(&addr).unwrap();
        assert!(c.as_member(me, vec![vec![2; 5]]).is_err());
    }

    /// Three fresh device keys.
    fn keys() -> [SigningKey; 3] {
        std::array::from_fn(|_| SigningKey::random(&mut rand_core::OsRng))
    }

    #[test]
    fn a_topic_founded_by_a_stranger_is_refused_before_posting() {
        let [me, other, stranger] = keys();
        let members = vec![pk(&me), pk(&other)];
        let listed = |keys: &[Vec<u8>]| keys.iter().cloned().map(ByteBuf::from).collect();
        let script = vec![
            Some(MailboxResponse::Challenge {
                nonce: ByteBuf::from(vec![1; CHALLENGE_LEN]),
            }),
            Some(MailboxResponse::Messages {
                items: vec![],
                more: false,
                members: listed(&[pk(&me), pk(&stranger)]),
            }),
            Some(MailboxResponse::Messages {
                items: vec![],
                more: false,
                members: listed(&members),
            }),
        ];
        let (addr, server) = fake(script);
        let mut client = MailboxClient::connect(&addr)
            .unwrap()
            .as_member(me, members.clone())
            .unwrap();
        let err = client.check_topic(&Topic([8; 16])).unwrap_err();
        assert!(err.to_string().contains("someone else founded it"), "{err}");
        client.check_topic(&Topic([8; 16])).unwrap();
        drop(client);
        let requests = server.join().unwrap();
        // Only the member lists were asked for, never an envelope.
        assert!(requests.iter().all(|r| match r {
            MailboxRequest::Fetch { after, .. } => *after == u64::MAX,
            other => *other == MailboxRequest::Challenge,
        }));
    }

    #[test]
    fn addresses_parse_with_and_without_a_pin() {
        let plain = MailboxAddr::parse("tcp://127.0.0.1:7002").unwrap();
        assert_eq!(plain.host_port, "127.0.0.1:7002");
        assert_eq!(plain.pin, None);
        assert_eq!(
            MailboxAddr::parse("mailbox.example:7002")
                .unwrap()
                .host_port,
            "mailbox.example:7002"
        );
        let pin = "ab".repeat(32);
        let tls = MailboxAddr::parse(&format!("tls://mailbox.example:7002#sha256:{pin}")).unwrap();
        assert_eq!(tls.host_port, "mailbox.example:7002");
        assert_eq!(tls.pin, Some([0xab; 32]));
        for bad in [
            "tls://mailbox.example:7002".to_owned(),
            format!("tls://mailbox.example:7002#{pin}"),
            format!("tls://mailbox.example:7002#sha256:{}", "ab".repeat(31)),
            format!("tls://mailbox.example#sha256:{pin}"),
            "tls://#sha256:00".to_owned(),
        ] {
            assert!(MailboxAddr::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn connecting_to_nothing_fails_clearly() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = MailboxClient::connect(&format!("127.0.0.1:{port}")).unwrap_err();
        assert!(matches!(err, ClientError::Connection { .. }), "{err}");
        assert!(MailboxClient::connect("no-port").is_err());
    }
}
