//! cosigner key custody: PKCS#11 tokens (SoftHSM, network HSMs) through [`cryptoki`].
//!
//! What lives here:
//! * [`context`]: the process's one PKCS#11 context (`C_Initialize` works once per process);
//! * [`Pin`]: token PINs, from a file or the environment, zeroized, never printed;
//! * [`Token`]: create a token, find one by label, log in;
//! * [`P384SigningKey`]: a non-extractable P-384 ECDSA key on the token, used by the local
//!   attester to sign attestation documents.
//! * anchors ([`Token::anchor`], [`Token::set_anchor`]): token data objects holding the digest of
//!   the current state, so the host cannot serve an old sealed blob as current;
//! * [`Sealer`], [`Pkcs11Sealer`]: AES-256-GCM sealing under a non-extractable token key, with the
//!   blob's purpose, wallet, party and epoch bound as AAD, for blobs the parent stores.
//! * [`aws`]: the Nitro Enclave backend: [`aws::KmsSealer`] seals under AWS KMS data keys that
//!   KMS hands over only to an attested enclave (`Recipient`), with its own SigV4 signing, KMS
//!   client and CMS opening.
//!
//! Threading: a [`Token`] and its keys are `Send + Sync` and cheap to clone; every thread that
//! uses them gets its own PKCS#11 session per token (sessions are not thread-safe), opened on first
//! use and kept for the thread's lifetime.
//!
//! Errors from the PKCS#11 module are mapped to [`KmsError`] in one place (`error::pkcs11`).
//!
//! References are to PKCS#11 v2.40 (OASIS: Base Specification, Current Mechanisms, Usage Guide);
//! v3.0 keeps the behaviour cited, under partly different section numbers.

mod anchor;
pub use anchor::{AnchorWrite, SoleWriter};
pub mod aws;
mod context;
mod error;
mod p384;
mod pin;
mod sealer;
mod session;
mod token;

pub use context::{DEFAULT_SOFTHSM_MODULE, context, loaded_module};
pub use error::{KmsError, Result};
pub use p384::{
    KeyProtection, P384_EC_PARAMS, P384_SEC1_LEN, P384_SIGNATURE_LEN, P384SigningKey, SHA384_LEN,
    normalise_p384_ec_point,
};
pub use pin::Pin;
pub use sealer::{
    Pkcs11Sealer, SEAL_DOMAIN, SEAL_FORMAT_VERSION, SEAL_HEADER_LEN, SEAL_IV_LEN, SEAL_KEY_ID_LEN,
    SEAL_MIN_LEN, SEAL_TAG_LEN, SealContext, Sealer, seal_aad,
};
pub use token::{MAX_TOKEN_LABEL_LEN, Token};
