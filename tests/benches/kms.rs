//! `make bench`: the KMS sealer's round trips against moto's KMS-compatible server on loopback.
//!
//! * seal: `GenerateDataKey` (an AES-256 data key, bound to the blob's encryption context) and
//!   AES-256-GCM of a 136-byte secret (a FROST key package's size);
//! * unseal: `Decrypt` of that data key and AES-256-GCM open.
//!
//! Each is one HTTP/1.1 exchange on a fresh loopback connection, signed with SigV4 by an STS role's
//! temporary credentials (session token included), as in an enclave; moto checks every signature.
//! moto has no `Recipient` and no TLS, so the figures leave out what a real enclave adds per call:
//! one NSM attestation document, the RSA-OAEP unwrap of `CiphertextForRecipient`, a TLS handshake
//! through the parent's proxy, and the network round trip to KMS (docs/kms.md). moto is a Python
//! server: most of each figure is moto's own time.
//!
//! moto is started here (`python3 -m moto.server`); where it is not installed the bench says so
//! and skips.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::hint::black_box;

use cosigner_kms::aws::KmsSealer;
use cosigner_kms::{SealContext, Sealer};
use cosigner_tests::bench::measure;
use cosigner_tests::moto::{self, Moto};

fn main() {
    if !moto::installed() {
        println!(
            "{:<58} skipped: moto is not installed (`make deps` installs moto[server] from PyPI)",
            "kms seal/unseal against moto"
        );
        return;
    }
    let moto = Moto::start().unwrap();
    let user = moto.user_credentials().unwrap();
    let role = moto.role_credentials(&user).unwrap();
    let arn = moto.create_key(&role.credentials).unwrap();
    let sealer =
        KmsSealer::insecure_without_recipient(moto.kms_client(role.credentials).unwrap(), &arn)
            .unwrap();
    let ctx = SealContext::new("frost-key-package", [0xab; 16], 2, 7);
    let secret = [0x42u8; 136];
    let blob = sealer.seal(&ctx, &secret).unwrap();
    assert_eq!(sealer.open(&ctx, &blob).unwrap().as_slice(), secret);

    measure(
        "kms seal (GenerateDataKey + AES-GCM), moto on loopback",
        100,
        || {
            black_box(sealer.seal(&ctx, &secret).unwrap());
        },
    );
    measure(
        "kms unseal (Decrypt + AES-GCM), moto on loopback",
        100,
        || {
            black_box(sealer.open(&ctx, &blob).unwrap());
        },
    );
}
