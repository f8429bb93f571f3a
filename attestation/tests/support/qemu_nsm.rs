//! Documents as QEMU 10.0's emulated Nitro Secure Module writes them, byte for byte, for tests:
//! `handle_attestation` in hw/virtio/virtio-nsm.c (QEMU 10.0), item by item in its order.
//! Shared through `#[path]` by attestation/tests/emulated_nsm.rs and the client's tests.
//!
//! Written by hand rather than with ciborium because QEMU serializes with libcbor, whose
//! `cbor_build_uint64` keeps its 8-byte width: the timestamp is always `1b` and 8 bytes, where
//! ciborium writes the shortest form. Everything else libcbor writes here is the shortest form
//! (`cbor_build_uint8` of a value up to 23 is one byte, lengths are minimal), as ciborium would.

#![allow(dead_code, clippy::expect_used)]

use std::collections::BTreeMap;

use sha2::{Digest, Sha384};

/// The `module_id` of QEMU's NSM unless the machine's `id` property says otherwise
/// (`virtio_nsm_device_realize`; hw/i386/nitro_enclave.c sets the same default).
pub const QEMU_MODULE_ID: &str = "i-234-enc5678";
/// Length of a SHA-384 PCR.
pub const PCR_LEN: usize = 48;

/// What one attestation of QEMU's NSM depends on.
#[derive(Debug, Clone)]
pub struct QemuAttestation {
    /// The NSM's `module_id`.
    pub module_id: String,
    /// Creation time: QEMU writes `time(NULL) * 1000`, whole seconds in milliseconds.
    pub timestamp_ms: u64,
    /// The locked PCRs, all QEMU reports (16 after boot, [`booted_pcrs`]).
    pub pcrs: BTreeMap<u8, Vec<u8>>,
    /// The request's `public_key` (`None`: CBOR null).
    pub public_key: Option<Vec<u8>>,
    /// The request's `user_data`.
    pub user_data: Option<Vec<u8>>,
    /// The request's `nonce`.
    pub nonce: Option<Vec<u8>>,
}

/// PCRs as `nitro_enclave_machine_reset` (hw/i386/nitro_enclave.c) leaves them: every register
/// zero, PCR0, PCR1 and PCR2 extended once (`PCR = SHA-384(PCR || data)`) with the EIF's image,
/// bootstrap and application hashes, and PCR0..15 locked. (PCR3, 4 and 8 are extended only with
/// a parent role, a parent id or a signed EIF; not here.)
pub fn booted_pcrs(
    image: &[u8; PCR_LEN],
    bootstrap: &[u8; PCR_LEN],
    app: &[u8; PCR_LEN],
) -> BTreeMap<u8, Vec<u8>> {
    let extend = |data: &[u8]| {
        Sha384::new()
            .chain_update([0u8; PCR_LEN])
            .chain_update(data)
            .finalize()
            .to_vec()
    };
    let mut pcrs: BTreeMap<u8, Vec<u8>> = (0..16u8).map(|i| (i, vec![0; PCR_LEN])).collect();
    pcrs.insert(0, extend(image));
    pcrs.insert(1, extend(bootstrap));
    pcrs.insert(2, extend(app));
    pcrs
}

/// A CBOR head: major type and argument in the shortest form (libcbor's `_cbor_encode_uint`).
fn head(out: &mut Vec<u8>, major: u8, argument: u64) {
    let major = major << 5;
    match argument {
        0..=23 => out.push(major | u8::try_from(argument).expect("fits")),
        24..=0xff => {
            out.push(major | 24);
            out.push(u8::try_from(argument).expect("fits"));
        }
        0x100..=0xffff => {
            out.push(major | 25);
            out.extend_from_slice(&u16::try_from(argument).expect("fits").to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(major | 26);
            out.extend_from_slice(&u32::try_from(argument).expect("fits").to_be_bytes());
        }
        _ => {
            out.push(major | 27);
            out.extend_from_slice(&argument.to_be_bytes());
        }
    }
}

fn bytes(out: &mut Vec<u8>, value: &[u8]) {
    head(out, 2, value.len() as u64);
    out.extend_from_slice(value);
}

fn text(out: &mut Vec<u8>, value: &str) {
    head(out, 3, value.len() as u64);
    out.extend_from_slice(value.as_bytes());
}

/// `qemu_cbor_add_bytestring_to_map` or `qemu_cbor_add_null_to_map`, as `add_payload_to_cose`
/// chooses for each optional field.
fn bytes_or_null(out: &mut Vec<u8>, value: Option<&Vec<u8>>) {
    match value {
        Some(value) => bytes(out, value),
        None => out.push(0xf6),
    }
}

impl QemuAttestation {
    /// A fresh boot's attestation: [`QEMU_MODULE_ID`], [`booted_pcrs`] of the given hashes.
    pub fn booted(
        timestamp_ms: u64,
        image: &[u8; PCR_LEN],
        bootstrap: &[u8; PCR_LEN],
        app: &[u8; PCR_LEN],
    ) -> Self {
        Self {
            module_id: QEMU_MODULE_ID.to_owned(),
            timestamp_ms,
            pcrs: booted_pcrs(image, bootstrap, app),
            public_key: None,
            user_data: None,
            nonce: None,
        }
    }

    /// The payload map, `add_payload_to_cose`: nine text keys in QEMU's order.
    pub fn payload(&self) -> Vec<u8> {
        let zero = [0u8; 64];
        let mut out = Vec::new();
        head(&mut out, 5, 9); // cbor_new_definite_map(9)
        text(&mut out, "module_id");
        text(&mut out, &self.module_id);
        text(&mut out, "digest");
        text(&mut out, "SHA384");
        text(&mut out, "timestamp");
        // qemu_cbor_add_uint64_to_map: libcbor writes a uint64 item in its full width.
        out.push(0x1b);
        out.extend_from_slice(&self.timestamp_ms.to_be_bytes());
        text(&mut out, "pcrs");
        head(&mut out, 5, self.pcrs.len() as u64); // locked PCRs, by ascending index
        for (index, value) in &self.pcrs {
            assert_eq!(value.len(), PCR_LEN, "QEMU's PCRs are SHA-384");
            head(&mut out, 0, u64::from(*index)); // cbor_build_uint8
            bytes(&mut out, value);
        }
        text(&mut out, "certificate");
        bytes(&mut out, &zero);
        text(&mut out, "cabundle"); // add_ca_bundle_to_payload: one zero "certificate"
        head(&mut out, 4, 1);
        bytes(&mut out, &zero);
        text(&mut out, "public_key");
        bytes_or_null(&mut out, self.public_key.as_ref());
        text(&mut out, "user_data");
        bytes_or_null(&mut out, self.user_data.as_ref());
        text(&mut out, "nonce");
        bytes_or_null(&mut out, self.nonce.as_ref());
        out
    }

    /// The document, `handle_attestation`: an untagged COSE_Sign1 array of the protected header
    /// `{1: -1}`, an empty unprotected map, the payload and 64 zero bytes of "signature".
    pub fn document(&self) -> Vec<u8> {
        let mut out = Vec::new();
        head(&mut out, 4, 4); // cbor_new_definite_array(4)
        bytes(&mut out, &[0xa1, 0x01, 0x20]); // add_protected_header_to_cose
        head(&mut out, 5, 0); // add_unprotected_header_to_cose
        bytes(&mut out, &self.payload()); // add_payload_to_cose
        bytes(&mut out, &[0u8; 64]); // add_signature_to_cose
        out
    }
}

/// AWS's Nitro root G1 (public; its SHA-256 is 641a0321…bb5b): a real root for tests in which the
/// document never reaches the chain check, or must not chain to it.
pub const AWS_ROOT_PEM: &str = "-----BEGIN CERTIFICATE-----\n\
MIICETCCAZagAwIBAgIRAPkxdWgbkK/hHUbMtOTn+FYwCgYIKoZIzj0EAwMwSTEL\n\
MAkGA1UEBhMCVVMxDzANBgNVBAoMBkFtYXpvbjEMMAoGA1UECwwDQVdTMRswGQYD\n\
VQQDDBJhd3Mubml0cm8tZW5jbGF2ZXMwHhcNMTkxMDI4MTMyODA1WhcNNDkxMDI4\n\
MTQyODA1WjBJMQswCQYDVQQGEwJVUzEPMA0GA1UECgwGQW1hem9uMQwwCgYDVQQL\n\
DANBV1MxGzAZBgNVBAMMEmF3cy5uaXRyby1lbmNsYXZlczB2MBAGByqGSM49AgEG\n\
BSuBBAAiA2IABPwCVOumCMHzaHDimtqQvkY4MpJzbolL//Zy2YlES1BR5TSksfbb\n\
48C8WBoyt7F2Bw7eEtaaP+ohG2bnUs990d0JX28TcPQXCEPZ3BABIeTPYwEoCWZE\n\
h8l5YoQwTcU/9KNCMEAwDwYDVR0TAQH/BAUwAwEB/zAdBgNVHQ4EFgQUkCW1DdkF\n\
R+eWw5b6cp3PmanfS5YwDgYDVR0PAQH/BAQDAgGGMAoGCCqGSM49BAMDA2kAMGYC\n\
MQCjfy+Rocm9Xue4YnwWmNJVA44fA0P5W2OpYow9OYCVRaEevL8uO1XYru5xtMPW\n\
rfMCMQCi85sWBbJwKKXdS6BptQFuZbT73o/gBh1qUxl/nNr12UO8Yfwr6wPLb+6N\n\
IwLz3/Y=\n\
-----END CERTIFICATE-----";
