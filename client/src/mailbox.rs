//! The client of the members' mailbox (hosted by a parent, `mailbox_listen`).
//!
//! The mailbox is untrusted: [`MailboxClient::fetch`] returns only envelopes that decode, carry the
//! topic asked for and verify under their sender's key, each once (by [`Envelope::id`]); anything
//! else the mailbox hands out is skipped and counted ([`MailboxClient::skipped`]). Whether a
//! sender is one the caller expects is the caller's to check. Posting is idempotent (the mailbox
//! answers a duplicate with its existing sequence number), so a request cut off by a broken
//! connection is sent again once on a fresh one.

use std::collections::HashSet;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use cosigner_protocol::frame::{read_frame, write_frame};
use cosigner_protocol::mailbox::{
    Envelope, MAX_PAGE, MailboxRequest, MailboxResponse, Topic, decode_response, encode_request,
};
use serde_bytes::ByteBuf;

use crate::error::{ClientError, Result};
use crate::session::parse_address;

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one answer may take.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Most items one [`MailboxClient::fetch`] reads before it gives up on the mailbox (a hostile
/// one could otherwise page for ever).
pub const MAX_FETCH_ITEMS: usize = 65_536;

/// A connection to a mailbox.
#[derive(Debug)]
pub struct MailboxClient {
    addr: String,
    host_port: String,
    stream: Option<TcpStream>,
    skipped: u64,
}

impl MailboxClient {
    /// Connects to `tcp://HOST:PORT` (or `HOST:PORT`).
    pub fn connect(addr: &str) -> Result<Self> {
        let host_port = parse_address(addr)?;
        let mut client = MailboxClient {
            addr: addr.to_owned(),
            host_port,
            stream: None,
            skipped: 0,
        };
        client.stream = Some(client.open()?);
        Ok(client)
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
        };
        match self.exchange(&request)? {
            MailboxResponse::Posted { seq } => Ok(seq),
            MailboxResponse::Error(e) => Err(ClientError::Remote(e)),
            other => Err(unexpected(&other)),
        }
    }

    /// Every envelope of `topic` after sequence number `after`, paging until the mailbox says
    /// there is no more: `(seq, envelope)` in sequence order, verified, for `topic`, each once.
    /// The others are skipped and counted in [`MailboxClient::skipped`].
    pub fn fetch(&mut self, topic: &Topic, after: u64) -> Result<Vec<(u64, Envelope)>> {
        let mut cursor = after;
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let mut read = 0usize;
        loop {
            let request = MailboxRequest::Fetch {
                topic: *topic,
                after: cursor,
                limit: MAX_PAGE,
            };
            let (items, more) = match self.exchange(&request)? {
                MailboxResponse::Messages { items, more } => (items, more),
                MailboxResponse::Error(e) => return Err(ClientError::Remote(e)),
                other => return Err(unexpected(&other)),
            };
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

    /// One request, one response; a connection failure is retried once on a new connection
    /// (both requests are idempotent).
    fn exchange(&mut self, request: &MailboxRequest) -> Result<MailboxResponse> {
        let body = encode_request(request)?;
        match self.try_exchange(&body) {
            Ok(r) => Ok(r),
            Err(ClientError::Connection { .. }) => {
                self.stream = None;
                self.try_exchange(&body)
            }
            Err(e) => Err(e),
        }
    }

    fn try_exchange(&mut self, body: &[u8]) -> Result<MailboxResponse> {
        let mut stream = match self.stream.take() {
            Some(s) => s,
            None => self.open()?,
        };
        write_frame(&mut stream, body).map_err(|e| self.conn_err(e.to_string()))?;
        let frame = read_frame(&mut stream)
            .map_err(|e| self.conn_err(e.to_string()))?
            .ok_or_else(|| self.conn_err("closed by the mailbox".into()))?;
        // Only a connection that answered in full is kept for the next request.
        self.stream = Some(stream);
        Ok(decode_response(&frame)?)
    }

    fn open(&self) -> Result<TcpStream> {
        let addrs = self
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
                    return Ok(s);
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
        let t = [1; 16];
        let good: Vec<Envelope> = (0..4u8)
            .map(|i| Envelope::seal(&k, t, vec![i]).unwrap())
            .collect();
        let mut tampered = good[0].clone();
        tampered.body = ByteBuf::from(b"changed".to_vec());
        let other_topic = Envelope::seal(&k, [2; 16], b"x".to_vec()).unwrap();
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
            }),
            Some(MailboxResponse::Messages {
                items: vec![
                    item(4, &good[1]), // replayed across pages: out of order
                    item(5, &other_topic),
                    item(6, &good[0]), // replayed under a new seq: a duplicate id
                    item(7, &good[2]),
                ],
                more: true,
            }),
            Some(MailboxResponse::Messages {
                items: vec![item(9, &good[3])],
                more: false,
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
        })];
        let (addr, _server) = fake(script);
        let mut client = MailboxClient::connect(&addr).unwrap();
        let err = client.fetch(&[1; 16], 0).unwrap_err();
        assert!(err.to_string().contains("sends nothing new"), "{err}");
    }

    #[test]
    fn post_returns_the_sequence_number_reconnects_once_and_reports_refusals() {
        let k = SigningKey::random(&mut rand_core::OsRng);
        let e = Envelope::seal(&k, [3; 16], b"hi".to_vec()).unwrap();
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
        let err = client.fetch(&[3; 16], 0).unwrap_err();
        assert!(matches!(err, ClientError::Unexpected(_)), "{err}");
        drop(client);
        let requests = server.join().unwrap();
        assert_eq!(requests.len(), 5);
        assert!(matches!(&requests[0], MailboxRequest::Post { topic, .. } if topic == &[3; 16]));
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
