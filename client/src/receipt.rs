//! Receipts: proof of which measured code co-signed what, and when.
//!
//! With every one-round signature the cosigner answers the audit entry of that signature, signed
//! by its audit key (`cosigner_protocol::audit`): the key its attestation document binds
//! (`public_key`). A [`Receipt`] keeps that signed record with the attestation document of the
//! session, so it can be checked later and offline, by anyone holding the trust file
//! (`cosigner receipt verify`): the document chains to a pinned root and carries allowed
//! measurements, and the record is signed by the key the document binds. The document is
//! checked at its own time (its certificates were valid when it was made), since a receipt is
//! read long after the session ended, and the entry must date from that session.
//!
//! Under a trust file's `emulated_nsm = true` (QEMU's unsigned documents, testing only) receipts
//! are checked the same way, the document by `verify_emulated_unsigned`, so that the real image's
//! receipts can be exercised under QEMU; but such a receipt proves nothing: anyone can write an
//! unsigned document binding a key of their own and sign any record with it. Each one checked
//! so prints the trust file's warning on stderr.
//!
//! What a receipt does not prove: the audit key is the provider's for the life of its wallets,
//! sealed and opened by every image its sealer's policy admits (docs/deployment.md), so a
//! receipt is as strong as every image ever allowed to hold that key, not only the one whose
//! document it carries.

use std::time::{Duration, UNIX_EPOCH};

use cosigner_attestation::{Expectations, parse_emulated_unsigned, parse_unverified};
use cosigner_protocol::audit::{AuditEntry, AuditFault, open_record};
use cosigner_protocol::wire::WalletId;
use serde::{Deserialize, Serialize};

use crate::trust::{EMULATED_NSM_WARNING, Trust, Verifier};
use crate::{ClientError, Result};

/// Largest signed record a receipt may hold (an audit entry is a few hundred bytes).
const MAX_RECORD: usize = 16 * 1024;

/// A signature's receipt, as `cosigner sign --json` prints it (`receipt`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// The signed audit record (`AuditRecord`, CBOR), hex.
    pub record: String,
    /// The attestation document of the session that answered it, hex.
    pub attestation: String,
}

/// What a checked receipt proves.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The audit entry: wallet, action, what was signed, when, the decision.
    pub entry: AuditEntry,
    /// The attestation document's module id (which enclave).
    pub module_id: String,
    /// The audit key the document binds, which signed the entry.
    pub key: Vec<u8>,
}

fn refused(reason: impl Into<String>) -> ClientError {
    ClientError::Receipt {
        reason: reason.into(),
    }
}

/// Checks a signed audit `record` under `key` (the session's attested key) and decodes its entry.
///
/// Errors ([`ClientError::Receipt`]): not a record, too large, or not signed by `key`.
pub fn open_signed(record: &[u8], key: &[u8]) -> Result<AuditEntry> {
    if record.len() > MAX_RECORD {
        return Err(refused(format!(
            "the record is {} bytes, at most {MAX_RECORD}",
            record.len()
        )));
    }
    match open_record(record, key, 1) {
        Ok((entry, _)) => Ok(entry),
        Err(AuditFault::Signature { .. }) => Err(refused(
            "the record is not signed by the cosigner's attested key",
        )),
        Err(e) => Err(refused(format!("not an audit record: {e}"))),
    }
}

/// What a signature's audit entry must say: the wallet, the action (`sign` for a message,
/// `sign-psbt` for a PSBT), what was signed (the message, or the PSBT's SHA-256) and how the
/// decision starts (`allowed`, or `signed <txid>`).
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The wallet.
    pub wallet_id: &'a WalletId,
    /// `sign` or `sign-psbt`.
    pub action: &'a str,
    /// The message, or the PSBT's SHA-256.
    pub digest: &'a [u8],
    /// How the decision begins.
    pub decision: &'a str,
}

/// Checks that the cosigner logged this very signature as allowed.
///
/// Errors ([`ClientError::Receipt`]): any other wallet, action, digest or decision.
pub fn check_entry(entry: &AuditEntry, expected: &Expected<'_>) -> Result<()> {
    if entry.wallet_id != expected.wallet_id.to_hex()
        || entry.action != expected.action
        || entry.digest != hex::encode(expected.digest)
        || !entry.decision.starts_with(expected.decision)
    {
        return Err(refused(format!(
            "the cosigner's audit entry {} ({} of {} for wallet {}, {}) is not this signature",
            entry.seq, entry.action, entry.digest, entry.wallet_id, entry.decision
        )));
    }
    Ok(())
}

/// The cosigner's receipt for a signature: its signed audit `record`, checked against the key
/// the courier's attestation binds and against `expected`, kept with that document. `None` for
/// a courier without an attested key (an in-process cosigner in tests).
///
/// Errors ([`ClientError::Receipt`]): as [`open_signed`] and [`check_entry`].
pub fn receipt_of(
    courier: &dyn crate::courier::Courier,
    record: &[u8],
    expected: &Expected<'_>,
) -> Result<Option<Receipt>> {
    let (Some(key), Some(document)) = (courier.attested_key(), courier.attestation_document())
    else {
        return Ok(None);
    };
    check_entry(&open_signed(record, key)?, expected)?;
    Ok(Some(Receipt {
        record: hex::encode(record),
        attestation: hex::encode(document),
    }))
}

/// How long after its attestation a session's entries are accepted: the audit key outlives a
/// session (it is sealed and restored), so the document alone does not date the entry; a record
/// paired with a document of another time is refused.
pub const MAX_SESSION: Duration = Duration::from_secs(24 * 60 * 60);

/// The entry was made during the session the document attested: not before the document (with
/// the clock skew a document may have), not more than [`MAX_SESSION`] after.
fn within_session(entry: &AuditEntry, document_ms: u64) -> Result<()> {
    let skew = u64::try_from(cosigner_attestation::DEFAULT_MAX_CLOCK_SKEW.as_millis()).unwrap_or(0);
    let longest = u64::try_from(MAX_SESSION.as_millis()).unwrap_or(u64::MAX);
    let earliest = document_ms.saturating_sub(skew);
    let latest = document_ms.saturating_add(longest);
    if (earliest..=latest).contains(&entry.time_ms) {
        return Ok(());
    }
    Err(refused(format!(
        "the entry is dated {} ms, outside the session its document attests (from {document_ms} \
         ms, at most {} h)",
        entry.time_ms,
        MAX_SESSION.as_secs() / 3600
    )))
}

/// Checks `receipt` offline against `trust`: its attestation document chains to a pinned root
/// (at the document's own time) with allowed measurements, and its record is signed by the key
/// the document binds.
///
/// Errors: [`ClientError::Receipt`] for a malformed receipt or a record the key did not sign;
/// [`ClientError::Attestation`] when the document does not verify under `trust`.
pub fn verify_receipt(receipt: &Receipt, trust: &Trust) -> Result<Checked> {
    let document =
        hex::decode(&receipt.attestation).map_err(|_| refused("`attestation` is not hex"))?;
    let record = hex::decode(&receipt.record).map_err(|_| refused("`record` is not hex"))?;
    // The anchor decides once how this document is read: QEMU's unsigned shape or signed.
    let verifiers = trust.anchor.verifiers_for(&document);
    // Only for the time to check it at; nothing in it is trusted before it verifies below.
    let parsed = match verifiers.as_slice() {
        [Verifier::EmulatedNsm] => parse_emulated_unsigned(&document),
        _ => parse_unverified(&document),
    };
    let (_, unverified) = parsed.map_err(|e| ClientError::Attestation {
        reason: format!("the receipt's document: {e}"),
    })?;
    let at = UNIX_EPOCH
        .checked_add(Duration::from_millis(unverified.timestamp))
        .ok_or_else(|| refused("the receipt's document is dated beyond this platform's clock"))?;
    let expect = Expectations {
        allow_debug: trust.allow_debug,
        ..Default::default()
    };
    let mut last = None;
    let verified = verifiers
        .into_iter()
        .find_map(|verifier| match verifier.verify(&document, at, &expect) {
            Ok(v) => Some(v),
            Err(e) => {
                last = Some(e);
                None
            }
        })
        .ok_or_else(|| ClientError::Attestation {
            reason: match last {
                Some(e) => format!("the receipt's document does not verify: {e}"),
                None => "the trust file pins no root".into(),
            },
        })?;
    trust.check_measurements(&verified.doc)?;
    let key = verified
        .doc
        .public_key
        .clone()
        .ok_or_else(|| refused("the receipt's document binds no key"))?;
    let entry = open_signed(&record, &key)?;
    within_session(&entry, verified.doc.timestamp)?;
    if trust.accepts_emulated_nsm() {
        eprintln!("warning: receipt: {EMULATED_NSM_WARNING}");
    }
    Ok(Checked {
        entry,
        module_id: verified.doc.module_id,
        key,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use crate::qemu_nsm::QemuAttestation;
    use crate::trust::{Anchor, Measurement};

    fn entry_at(time_ms: u64) -> AuditEntry {
        AuditEntry {
            seq: 1,
            prev: serde_bytes::ByteBuf::from(vec![0; 32]),
            time_ms,
            wallet_id: "00".repeat(16),
            action: "sign".into(),
            actor: "-".into(),
            digest: "42".repeat(32),
            decision: "allowed".into(),
        }
    }

    #[test]
    fn an_entry_must_date_from_the_session_its_document_attests() {
        let document = 1_700_000_000_000;
        let day = u64::try_from(MAX_SESSION.as_millis()).unwrap_or(u64::MAX);
        for ok in [document, document + 1, document + day] {
            assert!(within_session(&entry_at(ok), document).is_ok(), "{ok}");
        }
        for refused in [0, document - 3_600_000, document + day + 1, u64::MAX] {
            let result = within_session(&entry_at(refused), document);
            assert!(
                matches!(result, Err(ClientError::Receipt { .. })),
                "{refused}"
            );
        }
    }

    /// A byte string's CBOR: head (major type 2, length up to 65535), then the bytes.
    fn cbor_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
        match u8::try_from(bytes.len()) {
            Ok(len) if len < 24 => out.push(0x40 | len),
            Ok(len) => out.extend_from_slice(&[0x58, len]),
            Err(_) => {
                out.push(0x59);
                out.extend_from_slice(&u16::try_from(bytes.len()).unwrap().to_be_bytes());
            }
        }
        out.extend_from_slice(bytes);
    }

    /// A receipt anyone can make: a QEMU-shaped document binding a key of one's own, and a
    /// record signed with it (an `AuditRecord`, `{"entry": bstr, "signature": bstr}`).
    fn forged_receipt(time_ms: u64) -> (Receipt, Vec<u8>, Vec<u8>) {
        use p256::ecdsa::signature::Signer;
        use p256::ecdsa::{Signature, SigningKey};

        let key = SigningKey::random(&mut rand_core::OsRng);
        let public = key
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        let attestation = QemuAttestation {
            public_key: Some(public.clone()),
            ..QemuAttestation::booted(time_ms, &[1; 48], &[2; 48], &[3; 48])
        };
        let entry = cosigner_protocol::audit::encode_entry(&entry_at(time_ms + 1_000)).unwrap();
        let signature: Signature = key.sign(&entry);
        let signature = signature.normalize_s().unwrap_or(signature).to_bytes();
        let mut record = vec![0xa2, 0x65];
        record.extend_from_slice(b"entry");
        cbor_bytes(&mut record, &entry);
        record.push(0x69);
        record.extend_from_slice(b"signature");
        cbor_bytes(&mut record, &signature);
        let receipt = Receipt {
            record: hex::encode(record),
            attestation: hex::encode(attestation.document()),
        };
        (receipt, public, attestation.pcrs[&0].clone())
    }

    fn trust(anchor: Anchor, pcr0: Vec<u8>) -> Trust {
        Trust {
            anchor,
            max_age: Duration::from_secs(300),
            max_clock_skew: cosigner_attestation::DEFAULT_MAX_CLOCK_SKEW,
            allow_debug: false,
            measurements: vec![Measurement([(0, pcr0)].into())],
        }
    }

    #[test]
    fn a_receipt_under_emulated_nsm_checks_though_anyone_could_forge_it() {
        let (receipt, key, pcr0) = forged_receipt(1_750_000_000_000);
        let checked =
            verify_receipt(&receipt, &trust(Anchor::EmulatedNsm(vec![]), pcr0.clone())).unwrap();
        assert_eq!(checked.key, key);
        assert_eq!(checked.entry.time_ms, 1_750_000_001_000);
        assert_eq!(checked.module_id, crate::qemu_nsm::QEMU_MODULE_ID);

        // Measurements still decide.
        let other = trust(Anchor::EmulatedNsm(vec![]), vec![9; 48]);
        let err = verify_receipt(&receipt, &other).unwrap_err();
        assert!(matches!(err, ClientError::Attestation { .. }), "{err}");
    }

    #[test]
    fn a_receipt_with_a_qemu_document_is_refused_under_pinned_roots() {
        let (receipt, _, pcr0) = forged_receipt(1_750_000_000_000);
        let root =
            cosigner_attestation::PinnedRoot::from_pem(crate::qemu_nsm::AWS_ROOT_PEM.as_bytes())
                .unwrap();
        let err = verify_receipt(&receipt, &trust(Anchor::Roots(vec![root]), pcr0)).unwrap_err();
        assert!(matches!(err, ClientError::Attestation { .. }), "{err}");
    }
}
