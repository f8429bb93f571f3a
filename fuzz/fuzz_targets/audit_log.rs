//! The audit log as the untrusted parent hands it back: `cosigner_protocol::audit::verify_log` over
//! records built from the input, under a fixed audit key. Errors are fine, panics are not, and a
//! log that verifies is exactly a prefix of the honest log: every entry's bytes are the honest
//! entry's, in order, and the head is the last one's hash. (The records around the entries may
//! differ: their CBOR framing and the signature's encoding are not what the chain protects.)
//!
//! Input (`arbitrary`'s `Unstructured`): raw records, or the honest log (signed with the fixed key)
//! edited by record operations (drop, duplicate, swap, byte edits, truncation, appended bytes).
#![no_main]

use std::sync::OnceLock;

use cosigner_protocol::audit::{AuditEntry, AuditRecord, encode_entry, entry_hash, verify_log};
use cosigner_protocol::auth::{public_key_bytes, sign_digest};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use p256::ecdsa::SigningKey;

const ENTRIES: u64 = 4;
const MAX_OPS: usize = 6;
const MAX_RAW: usize = 6;

/// The honest log: the audit key, each entry's bytes, each record's bytes.
struct Honest {
    key: Vec<u8>,
    entries: Vec<Vec<u8>>,
    records: Vec<Vec<u8>>,
}

fn honest() -> &'static Honest {
    static HONEST: OnceLock<Honest> = OnceLock::new();
    HONEST.get_or_init(|| {
        let key = SigningKey::from_slice(&[0x42; 32]).expect("a valid scalar");
        let mut prev = [0u8; 32];
        let mut entries = Vec::new();
        let mut records = Vec::new();
        for seq in 1..=ENTRIES {
            let entry = AuditEntry {
                seq,
                prev: prev.to_vec().into(),
                time_ms: 1_700_000_000_000 + seq,
                wallet_id: "42".repeat(16),
                action: if seq == 1 { "create" } else { "sign" }.to_owned(),
                actor: "device:02ab".to_owned(),
                digest: "00".repeat(32),
                decision: "allowed".to_owned(),
            };
            let bytes = encode_entry(&entry).expect("encode");
            let hash = entry_hash(&bytes);
            let signature = sign_digest(&key, &hash).expect("sign");
            let mut record = Vec::new();
            ciborium::ser::into_writer(
                &AuditRecord {
                    entry: bytes.clone().into(),
                    signature: signature.to_vec().into(),
                },
                &mut record,
            )
            .expect("encode record");
            prev = hash;
            entries.push(bytes);
            records.push(record);
        }
        Honest {
            key: public_key_bytes(&key),
            entries,
            records,
        }
    })
}

fn edited(u: &mut Unstructured<'_>, honest: &Honest) -> Result<Vec<Vec<u8>>> {
    let mut records = honest.records.clone();
    for _ in 0..u.int_in_range(0..=MAX_OPS)? {
        if records.is_empty() {
            break;
        }
        let i = u.choose_index(records.len())?;
        match u.int_in_range(0..=5u8)? {
            0 => {
                records.remove(i);
            }
            1 => {
                let copy = records[i].clone();
                records.insert(i, copy);
            }
            2 => {
                let j = u.choose_index(records.len())?;
                records.swap(i, j);
            }
            3 => {
                if !records[i].is_empty() {
                    let at = u.choose_index(records[i].len())?;
                    records[i][at] ^= u.arbitrary::<u8>()?;
                }
            }
            4 => {
                let len = u.int_in_range(0..=records[i].len())?;
                records[i].truncate(len);
            }
            _ => {
                let extra: Vec<u8> = u.arbitrary()?;
                records[i].extend(extra);
            }
        }
    }
    Ok(records)
}

fn records(data: &[u8], honest: &Honest) -> Vec<Vec<u8>> {
    let mut u = Unstructured::new(data);
    if u.arbitrary::<bool>().unwrap_or(false) {
        let mut raw = Vec::new();
        for _ in 0..u.int_in_range(0..=MAX_RAW).unwrap_or(0) {
            match u.arbitrary::<Vec<u8>>() {
                Ok(r) => raw.push(r),
                Err(_) => break,
            }
        }
        raw
    } else {
        edited(&mut u, honest).unwrap_or_default()
    }
}

fuzz_target!(|data: &[u8]| {
    let honest = honest();
    let records = records(data, honest);
    let Ok((count, head)) = verify_log(&records, &honest.key) else {
        return;
    };
    assert_eq!(count, records.len() as u64);
    assert!(records.len() <= honest.entries.len());
    for (i, raw) in records.iter().enumerate() {
        let record: AuditRecord =
            ciborium::de::from_reader(raw.as_slice()).expect("a verified record decodes");
        assert_eq!(
            record.entry.as_slice(),
            honest.entries[i].as_slice(),
            "entry {} verified although it is not the honest one",
            i + 1
        );
    }
    let expected = records
        .len()
        .checked_sub(1)
        .map_or([0; 32], |last| entry_hash(&honest.entries[last]));
    assert_eq!(head, expected);
});
