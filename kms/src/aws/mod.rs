//! AWS KMS sealing for Nitro Enclaves, without an AWS SDK.
//!
//! * [`sigv4`]: request signing (AWS Signature Version 4), checked against AWS's test suite;
//! * [`client`]: the KMS JSON 1.1 protocol over hand-written HTTP/1.1 on an injected byte stream
//!   (TLS inside the enclave in production);
//! * [`http`]: the one bounded HTTP/1.1 response reader (also the parent's IMDS client's);
//! * [`cms`]: opening `CiphertextForRecipient` (CMS EnvelopedData, RSAES-OAEP-SHA-256 +
//!   AES-256-CBC) with the enclave's ephemeral RSA key;
//! * [`credentials`]: credentials handed over by the parent, cached and refreshed before expiry;
//! * [`sealer`]: [`KmsSealer`], the [`crate::Sealer`] that seals under KMS data keys obtained
//!   with the enclave's attestation document as `Recipient`.
//!
//! See `docs/kms.md` for the key policy and what remains to be checked on a real instance.

pub mod client;
pub mod cms;
pub mod credentials;
pub mod http;
pub mod sealer;
pub mod sigv4;

pub use client::{
    Connection, CredentialsFile, CredentialsSource, KmsClient, TcpTransport, TlsTransport,
    Transport,
};
pub use cms::RecipientKey;
pub use credentials::{ExpiringCredentials, FetchCredentials, RefreshingCredentials};
pub use sealer::{KMS_SEAL_FORMAT_VERSION, KmsSealer, RecipientAttester, is_key_arn};
pub use sigv4::Credentials;
