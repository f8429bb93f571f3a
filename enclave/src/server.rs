//! The serving loop: accept, TLS inside, one frame in, one frame out.

use std::sync::Arc;

use cosigner_protocol::frame::{read_frame, write_frame};
use cosigner_protocol::wire::{self, ErrorKind, Request, Response, WireError};
use rustls::{ServerConfig, ServerConnection, StreamOwned};

use crate::service::{Service, SessionState};
use crate::tls::channel_binding;
use crate::transport::{Listener, Stream};

/// Accepts connections forever, one thread each.
pub fn serve(listener: Box<dyn Listener>, tls: Arc<ServerConfig>, service: Arc<Service>) -> ! {
    loop {
        match listener.accept() {
            Ok(stream) => {
                let tls = tls.clone();
                let service = service.clone();
                std::thread::spawn(move || {
                    if let Err(e) = serve_connection(stream, tls, &service) {
                        eprintln!("cosigner-enclave: connection closed: {e}");
                    }
                });
            }
            Err(e) => {
                eprintln!("cosigner-enclave: accept failed: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}

/// Serves one client connection until it closes or misbehaves.
pub fn serve_connection(
    stream: Box<dyn Stream>,
    tls: Arc<ServerConfig>,
    service: &Service,
) -> anyhow::Result<()> {
    let conn = ServerConnection::new(tls)?;
    let mut tls = StreamOwned::new(conn, stream);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    let mut session = SessionState::new(channel_binding(&tls.conn)?);
    while let Some(frame) = read_frame(&mut tls)? {
        let response = match wire::decode::<Request>(&frame) {
            Ok(request) => service.handle(&mut session, request),
            Err(e) => {
                // A malformed frame ends the session: answer why, then close.
                let answer = Response::Error(WireError::new(ErrorKind::BadRequest, e.to_string()));
                write_frame(&mut tls, &wire::encode(&answer)?)?;
                tls.conn.send_close_notify();
                let _ = tls.conn.complete_io(&mut tls.sock);
                return Ok(());
            }
        };
        write_frame(&mut tls, &wire::encode(&response)?)?;
    }
    Ok(())
}
