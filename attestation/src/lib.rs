//! Produce and verify AWS Nitro Enclaves attestation documents.
//!
//! A document is a COSE_Sign1 ([`cose`]) over a CBOR payload ([`document`]) signed by a leaf
//! certificate that chains to a root. [`verify()`] is the only verifier, whatever produced the
//! document: the real Nitro Secure Module (`NitroAttester`, feature `nitro`) or the local
//! attester (`LocalAttester`, feature `local-attester`), which signs the same format with a P-384
//! key held in a PKCS#11 token and chains it to an operator's root. Only the pinned root differs.
//!
//! `attestation-doc-validation` (evervault) is not used: it hard-codes the AWS root and reads the
//! system clock, so it can verify neither a local document nor an archived one, and it returns
//! another generation of `nsm-api` types. One verifier for every source is the point.
//!
//! The one exception is deliberate, separate and named to warn: [`verify_emulated_unsigned()`]
//! accepts only the UNSIGNED documents of QEMU's emulated NSM ([`emulated`]), to test the real
//! enclave image under QEMU. It proves nothing about the code that answered.

pub mod attester;
mod chain;
pub mod cose;
pub mod document;
pub mod emulated;
mod error;
#[cfg(feature = "local-attester")]
pub mod local;
#[cfg(feature = "nitro")]
pub mod nitro;
mod verify;

pub use attester::{AttestRequest, Attester};
pub use chain::{CertificateSummary, PinnedRoot, certificate_summary};
pub use document::AttestationDoc;
pub use emulated::{
    EmulatedPart, parse_emulated_unsigned, parse_signed_or_emulated, verify_emulated_unsigned,
};
pub use error::{AttestationError, Result};
#[cfg(feature = "local-attester")]
pub use local::LocalAttester;
#[cfg(feature = "nitro")]
pub use nitro::NitroAttester;
pub use verify::{DEFAULT_MAX_CLOCK_SKEW, Expectations, VerifiedDoc, parse_unverified, verify};
