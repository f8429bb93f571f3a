//! Golden vectors of what the enclave stores: for every sealed record kind (wallet state, share,
//! prepared refresh, DAO state, DAO share, audit key) the store key, the anchor label, the seal
//! AAD of both sealers (PKCS#11, `cosigner_kms::seal_aad`; AWS KMS, with its key id and
//! encryption context) and the record's plaintext CBOR, pinned in `enclave/tests/golden/records.txt`.
//!
//! CHANGING A VECTOR MEANS A STORAGE FORMAT CHANGE: records sealed by the previous build stop
//! opening (AAD), stop being found (keys, labels) or stop decoding (plaintext). A deliberate
//! change needs a `PROTOCOL_VERSION` bump (protocol/src/lib.rs) and a word in the README about old
//! state; regenerate with `GOLDEN_UPDATE=1 cargo nextest run --locked --workspace --all-features
//! -E 'test(golden)'` (protocol/tests/golden/pinned.rs).
//!
//! The seal contexts are not rebuilt here: a recording sealer captures the ones the enclave's own
//! `Records` and `AuditLog` pass when they save, so the vectors pin what the service really does.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

#[path = "../../protocol/tests/golden/pinned.rs"]
mod pinned;
#[path = "../../protocol/tests/golden/samples.rs"]
mod samples;

use std::sync::Mutex;

use cosigner_enclave::service::anchor::{Anchor, AnchorError, InsecureMemoryAnchor, Versioned};
use cosigner_enclave::service::audit::AuditLog;
use cosigner_enclave::service::records::{
    DaoState, Opened, PreparedRecord, Records, ShareRecord, WalletState,
};
use cosigner_enclave::store::{BlobStore, MemoryStore};
use cosigner_kms::aws::KMS_SEAL_FORMAT_VERSION;
use cosigner_kms::aws::sealer::{encryption_context, key_id};
use cosigner_kms::{SEAL_FORMAT_VERSION, SEAL_KEY_ID_LEN, SealContext, Sealer, seal_aad};
use cosigner_protocol::id::Epoch;
use cosigner_protocol::policy::PastSpend;
use cosigner_protocol::wire::WalletId;
use pinned::Vectors;
use samples::*;
use zeroize::Zeroizing;

/// The PKCS#11 sealer's key id in these vectors (the real one hashes token and key labels).
const KEY_ID: [u8; SEAL_KEY_ID_LEN] = [0x5e; SEAL_KEY_ID_LEN];
/// A KMS key, for the KMS sealer's key id and AAD.
const KMS_KEY: &str = "arn:aws:kms:eu-west-1:111122223333:key/00000000-1111-2222-3333-444444444444";

/// Seals nothing: the blob is the plaintext; records every context and plaintext it is given.
#[derive(Default)]
struct RecordingSealer {
    sealed: Mutex<Vec<(SealContext, Vec<u8>)>>,
}

impl Sealer for RecordingSealer {
    fn seal(&self, aad: &SealContext, plaintext: &[u8]) -> cosigner_kms::Result<Vec<u8>> {
        self.sealed
            .lock()
            .unwrap()
            .push((aad.clone(), plaintext.to_vec()));
        Ok(plaintext.to_vec())
    }

    fn open(&self, _: &SealContext, sealed: &[u8]) -> cosigner_kms::Result<Zeroizing<Vec<u8>>> {
        Ok(Zeroizing::new(sealed.to_vec()))
    }

    fn key_id(&self) -> [u8; SEAL_KEY_ID_LEN] {
        KEY_ID
    }
}

/// Remembers the labels written, in order.
#[derive(Default)]
struct RecordingAnchor {
    inner: InsecureMemoryAnchor,
    labels: Mutex<Vec<String>>,
}

impl Anchor for RecordingAnchor {
    fn read(&self, label: &str) -> Result<Option<Versioned>, AnchorError> {
        self.inner.read(label)
    }

    fn write(&self, label: &str, expected: Option<u64>, value: &[u8]) -> Result<u64, AnchorError> {
        self.labels.lock().unwrap().push(label.to_owned());
        self.inner.write(label, expected, value)
    }
}

/// What one save did: the context and plaintext sealed, the keys stored and the anchors moved.
struct Saved {
    ctx: SealContext,
    plaintext: Vec<u8>,
    keys: Vec<String>,
    labels: Vec<String>,
}

/// Runs `save` against empty recording backends.
fn saved(save: impl FnOnce(&Records<'_>)) -> Saved {
    let sealer = RecordingSealer::default();
    let store = MemoryStore::default();
    let anchor = RecordingAnchor::default();
    let opened = Opened::default();
    save(&Records {
        sealer: &sealer,
        store: &store,
        anchor: &anchor,
        opened: &opened,
    });
    let mut sealed = sealer.sealed.into_inner().unwrap();
    assert_eq!(sealed.len(), 1, "one record sealed");
    let (ctx, plaintext) = sealed.remove(0);
    Saved {
        ctx,
        plaintext,
        keys: store.list("").unwrap(),
        labels: anchor.labels.into_inner().unwrap(),
    }
}

/// Pins a record's store keys, anchor labels, AADs and (unless secret and random) plaintext.
fn pin_record(
    v: &mut Vectors,
    kind: &str,
    what: &str,
    saved: &Saved,
    plaintext: bool,
) -> Option<Vec<u8>> {
    let keys = saved.keys.join("\n");
    v.pin(
        &format!("{kind}.store_keys"),
        &format!("{what}: the store keys written (newline-separated)"),
        keys.as_bytes(),
    );
    if !saved.labels.is_empty() {
        let labels = saved.labels.join("\n");
        v.pin(
            &format!("{kind}.anchor_labels"),
            &format!("{what}: the anchor labels written"),
            labels.as_bytes(),
        );
    }
    v.pin(
        &format!("{kind}.aad"),
        &format!(
            "{what}: seal AAD of the PKCS#11 sealer (format {SEAL_FORMAT_VERSION}, key id 5e..)"
        ),
        &seal_aad(SEAL_FORMAT_VERSION, &KEY_ID, &saved.ctx),
    );
    v.pin(
        &format!("{kind}.kms_aad"),
        &format!("{what}: seal AAD of the KMS sealer (format {KMS_SEAL_FORMAT_VERSION}, the sample key's id)"),
        &seal_aad(KMS_SEAL_FORMAT_VERSION, &key_id(KMS_KEY), &saved.ctx),
    );
    let context: String = encryption_context(&saved.ctx)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}\n"))
        .collect();
    v.pin(
        &format!("{kind}.kms_context"),
        &format!("{what}: KMS encryption context (key=value lines)"),
        context.as_bytes(),
    );
    if !plaintext {
        return None;
    }
    v.pin(
        &format!("{kind}.plaintext"),
        &format!("{what}: the sealed plaintext (CBOR)"),
        &saved.plaintext,
    )
}

fn wallet_state() -> WalletState {
    WalletState {
        params: dkg_params(),
        party: pid(2),
        current_epoch: Epoch(5),
        retained_epochs: vec![Epoch(4)],
        prepared_epoch: Some(Epoch(6)),
        device_key: public(1),
        recovery_key: public(2),
        pending_device_key: Some(public(4)),
        revoked_keys: vec![public(5)],
        public_key_package: bytes(0x71, 8),
        epoch_started_ms: 1_700_000_000_005,
        signatures: 3,
        policy: Some("[[rule]]\nname = \"all\"\n".into()),
        network: Some("regtest".into()),
        history: vec![past_spend()],
        commit_confirmations: vec![confirmation(pid(1))],
        signed_txids: vec![("ab".repeat(32), 1_700_000_000_006)],
        provider_key: Some(public(3)),
        // Absent (a recovery cosigner's state): left out of the record, so these pinned bytes are
        // also those of every state written before the field existed.
        recovery_cosigner_key: None,
        commit_receipt: Some(bytes(0x72, 64)),
        excluded: Vec::new(),
    }
}

fn past_spend() -> PastSpend {
    PastSpend {
        at_ms: 1_700_000_000_007,
        asset: "btc".into(),
        amount: 150_000,
    }
}

fn share(epoch: u64) -> ShareRecord {
    ShareRecord {
        epoch: Epoch(epoch),
        key_package: bytes(0xf0, 8),
        public_key_package: bytes(0x71, 8),
    }
}

fn dao_state() -> DaoState {
    DaoState {
        invitation: invitation(),
        policy: DAO_POLICY.into(),
        policy_version: 2,
        min_approvals: 2,
        provider_parties: vec![pid(4), pid(5)],
        epoch: Epoch(1),
        public_key_package: bytes(0x71, 8),
        history: vec![past_spend()],
        completed: vec![(bytes(0x80, 32), 1_700_000_000_008)],
        signed_txids: vec![("ab".repeat(32), 1_700_000_000_009)],
        excluded: Vec::new(),
        last_refresh: None,
    }
}

/// Checks that the pinned plaintext (if pinned) still decodes as `T` and re-encodes to itself:
/// a renamed field, or a new one without a default, shows here.
fn decodes<T: serde::Serialize + serde::de::DeserializeOwned>(
    v: &mut Vectors,
    kind: &str,
    pinned: Option<Vec<u8>>,
) {
    let Some(pinned) = pinned else {
        return;
    };
    match ciborium::de::from_reader::<T, _>(pinned.as_slice()) {
        Ok(value) => {
            let mut again = Vec::new();
            ciborium::ser::into_writer(&value, &mut again).unwrap();
            if again != pinned {
                v.problem(format!(
                    "{kind}.plaintext: the pinned bytes re-encode differently"
                ));
            }
        }
        Err(e) => v.problem(format!(
            "{kind}.plaintext: the pinned bytes no longer decode: {e}"
        )),
    }
}

#[test]
fn golden_sealed_records() {
    let mut v = Vectors::open("records.txt");
    let state = saved(|r| r.save_state(&WALLET, &wallet_state()).unwrap());
    let pinned = pin_record(&mut v, "state", "a personal wallet's state", &state, true);
    decodes::<WalletState>(&mut v, "state", pinned);

    let share = saved(|r| r.save_share(&WALLET, pid(2), &share(5)).unwrap());
    let pinned = pin_record(&mut v, "share", "party 2's share of epoch 5", &share, true);
    decodes::<ShareRecord>(&mut v, "share", pinned);

    let prepared = PreparedRecord {
        share: self::share(6),
        from_epoch: Epoch(5),
        confirmation: confirmation(pid(2)),
        recovery: false,
        started_by: public(1),
    };
    let prepared = saved(|r| r.save_prepared(&WALLET, pid(2), &prepared).unwrap());
    let pinned = pin_record(&mut v, "prepared", "a refresh to epoch 6", &prepared, true);
    decodes::<PreparedRecord>(&mut v, "prepared", pinned);

    let dao_wallet = WalletId(invitation().topic().unwrap().0);
    let dao = saved(|r| r.save_dao_state(&dao_wallet, &dao_state()).unwrap());
    let pinned = pin_record(&mut v, "dao_state", "a DAO wallet's state", &dao, true);
    decodes::<DaoState>(&mut v, "dao_state", pinned);

    let dao_share = saved(|r| {
        r.save_dao_share(&dao_wallet, pid(4), &self::share(1))
            .unwrap()
    });
    let what = "the provider's party 4 of a DAO wallet, epoch 1";
    let pinned = pin_record(&mut v, "dao_share", what, &dao_share, true);
    decodes::<ShareRecord>(&mut v, "dao_share", pinned);

    let sealer = RecordingSealer::default();
    let store = MemoryStore::default();
    let anchor = RecordingAnchor::default();
    AuditLog::open(&sealer, &store, &anchor).unwrap();
    let (ctx, plaintext) = sealer.sealed.into_inner().unwrap().remove(0);
    let audit = Saved {
        ctx,
        plaintext,
        keys: store.list("").unwrap(),
        labels: anchor.labels.into_inner().unwrap(),
    };
    // The audit key itself is random: its plaintext is not pinned.
    pin_record(
        &mut v,
        "audit_key",
        "the enclave's audit key",
        &audit,
        false,
    );
    v.finish();
}
