//! The real producer: the Nitro Secure Module, through `/dev/nsm`.
//!
//! The NSM speaks CBOR-encoded `Request`/`Response` values over an ioctl; the driver in
//! `aws-nitro-enclaves-nsm-api` does the transport. What is ours is the mapping, kept in two pure
//! functions so it is unit tested on machines without an NSM.

use aws_nitro_enclaves_nsm_api::api::{ErrorCode, Request, Response};
use aws_nitro_enclaves_nsm_api::driver;
use serde_bytes::ByteBuf;

use crate::attester::{AttestRequest, Attester};
use crate::error::{AttestationError, Result};

/// Builds the NSM request for an attestation (NSM API: `Request::Attestation`).
pub fn nsm_request(request: &AttestRequest) -> Result<Request> {
    request.validate()?;
    Ok(Request::Attestation {
        user_data: request.user_data.clone().map(ByteBuf::from),
        nonce: request.nonce.clone().map(ByteBuf::from),
        public_key: request.public_key.clone().map(ByteBuf::from),
    })
}

/// Extracts the document from the NSM's answer, or says why there is none.
pub fn nsm_document(response: Response) -> Result<Vec<u8>> {
    match response {
        Response::Attestation { document } if !document.is_empty() => Ok(document),
        Response::Attestation { .. } => Err(AttestationError::Attester {
            reason: "NSM returned an empty document".into(),
        }),
        Response::Error(code) => Err(AttestationError::Attester {
            reason: format!("NSM refused the attestation request: {}", describe(&code)),
        }),
        _ => Err(AttestationError::Attester {
            reason: "NSM answered an attestation request with another kind of response".into(),
        }),
    }
}

fn describe(code: &ErrorCode) -> &'static str {
    match code {
        ErrorCode::InvalidArgument => "invalid argument",
        ErrorCode::InvalidIndex => "invalid PCR index",
        ErrorCode::InvalidResponse => "invalid response",
        ErrorCode::ReadOnlyIndex => "read-only PCR",
        ErrorCode::InvalidOperation => "invalid operation",
        ErrorCode::BufferTooSmall => "buffer too small",
        ErrorCode::InputTooLarge => "input too large",
        ErrorCode::InternalError => "internal error",
        _ => "unknown error code",
    }
}

/// The NSM of the enclave this process runs in.
#[derive(Debug)]
pub struct NitroAttester {
    fd: i32,
}

impl NitroAttester {
    /// Opens `/dev/nsm`. Fails outside a Nitro Enclave.
    pub fn open() -> Result<Self> {
        let fd = driver::nsm_init();
        if fd < 0 {
            return Err(AttestationError::Attester {
                reason: "cannot open /dev/nsm (not running in a Nitro Enclave?)".into(),
            });
        }
        Ok(Self { fd })
    }
}

impl Drop for NitroAttester {
    fn drop(&mut self) {
        driver::nsm_exit(self.fd);
    }
}

impl Attester for NitroAttester {
    fn attest(&self, request: &AttestRequest) -> Result<Vec<u8>> {
        nsm_document(driver::nsm_process_request(self.fd, nsm_request(request)?))
    }

    fn kind(&self) -> &'static str {
        "nitro"
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn request_carries_every_field() {
        let request = AttestRequest {
            nonce: Some(vec![1; 32]),
            user_data: Some(vec![2; 48]),
            public_key: Some(vec![3; 65]),
        };
        match nsm_request(&request).unwrap() {
            Request::Attestation {
                user_data,
                nonce,
                public_key,
            } => {
                assert_eq!(nonce.unwrap().into_vec(), vec![1; 32]);
                assert_eq!(user_data.unwrap().into_vec(), vec![2; 48]);
                assert_eq!(public_key.unwrap().into_vec(), vec![3; 65]);
            }
            other => panic!("unexpected request {other:?}"),
        }
        match nsm_request(&AttestRequest::default()).unwrap() {
            Request::Attestation {
                user_data: None,
                nonce: None,
                public_key: None,
            } => {}
            other => panic!("unexpected request {other:?}"),
        }
    }

    #[test]
    fn request_over_nsm_limits_is_refused_before_the_device() {
        let request = AttestRequest {
            nonce: Some(vec![0; 513]),
            ..Default::default()
        };
        assert!(matches!(
            nsm_request(&request),
            Err(AttestationError::Request { .. })
        ));
    }

    #[test]
    fn responses_map_to_documents_or_errors() {
        assert_eq!(
            nsm_document(Response::Attestation {
                document: vec![0x84]
            })
            .unwrap(),
            vec![0x84]
        );
        for response in [
            Response::Attestation { document: vec![] },
            Response::Error(ErrorCode::InputTooLarge),
            Response::GetRandom { random: vec![1] },
        ] {
            assert!(matches!(
                nsm_document(response),
                Err(AttestationError::Attester { .. })
            ));
        }
    }
}
