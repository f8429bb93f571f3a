//! Freshness anchors: small token data objects the host cannot roll back (on a real HSM).
//!
//! The parent keeps every sealed blob, so it can also serve an *old* one: sealing proves a blob is
//! genuine, not that it is current. An anchor is a `CKO_DATA` object on the token (PKCS#11 v2.40
//! §4.5: `CKA_TOKEN`, `CKA_PRIVATE`, `CKA_LABEL`, `CKA_VALUE`) holding a digest of the current state;
//! the enclave accepts a state blob only if it matches. A real HSM keeps its objects itself, so the
//! host cannot restore an older anchor. With SoftHSM the token is files on the host, and a host that
//! rolls back both the token directory and the database defeats the anchor: see docs/lifecycle.md.

use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};

use crate::error::Result;
use crate::session::{Ck, with_session};
use crate::token::Token;

/// Application name written into anchors (`CKA_APPLICATION`).
const APPLICATION: &[u8] = b"cosigner-anchor";

fn template(label: &str) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::DATA),
        Attribute::Token(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Application(APPLICATION.to_vec()),
    ]
}

/// Each write creates a new object carrying a generation number (8 bytes, big-endian, before the
/// value) and then destroys the older ones: tokens such as SoftHSM make a data object's `CKA_VALUE`
/// read-only once created, and create-then-destroy never leaves the anchor absent (after a crash
/// between the two steps, the highest generation wins).
fn read_all(
    s: &crate::session::ThreadSession,
    label: &str,
) -> std::result::Result<Vec<(u64, ObjectHandle, Vec<u8>)>, crate::session::Fail> {
    // Another process sharing the token (several enclave instances) may destroy an older
    // generation between our search and our read of it: its handle is then invalid. Skipping it
    // could miss the newer generation too (created after our search), so search again.
    let mut attempt = 0;
    loop {
        match read_all_once(s, label) {
            Err(e) if e.is_stale_handle() && attempt < STALE_RETRIES => attempt += 1,
            other => return other,
        }
    }
}

/// How often a read searches again after a handle went stale under it.
const STALE_RETRIES: u32 = 16;

fn read_all_once(
    s: &crate::session::ThreadSession,
    label: &str,
) -> std::result::Result<Vec<(u64, ObjectHandle, Vec<u8>)>, crate::session::Fail> {
    let handles = s
        .session
        .find_objects(&template(label))
        .ck("C_FindObjects")?;
    let mut out = Vec::new();
    for handle in handles {
        let attrs = s
            .session
            .get_attributes(handle, &[AttributeType::Value])
            .ck("C_GetAttributeValue")?;
        for a in attrs {
            if let Attribute::Value(v) = a
                && let (Some(gen_bytes), Some(value)) = (v.get(..8), v.get(8..))
            {
                let mut g = [0u8; 8];
                g.copy_from_slice(gen_bytes);
                out.push((u64::from_be_bytes(g), handle, value.to_vec()));
            }
        }
    }
    out.sort_by_key(|(g, _, _)| *g);
    Ok(out)
}

/// What a compare-and-swap write of an anchor did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AnchorWrite {
    /// The new value is durable as this generation.
    Written(u64),
    /// Nothing was written: the newest generation on the token is `found`, not the one expected.
    Conflict {
        /// The newest generation found (`None`: no anchor).
        found: Option<u64>,
    },
}

/// Serialises anchor writes of this process. PKCS#11 has no atomic compare-and-swap on objects, so
/// read → check → create → destroy is made atomic here; anchors are written once per state change,
/// so one lock for all labels costs nothing measurable. Across *processes* sharing one token this
/// lock does not help: there, one writer per wallet is a deployment rule (docs/lifecycle.md).
static WRITE_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Token {
    /// Reads the anchor labelled `label`: its newest generation and value, if it exists.
    pub fn anchor(&self, label: &str) -> Result<Option<(u64, Vec<u8>)>> {
        with_session(self, |s| {
            Ok(read_all(s, label)?.pop().map(|(g, _, v)| (g, v)))
        })
    }

    /// Sets the anchor labelled `label` (a private token object) to `value`, durably, only if its
    /// newest generation is still `expected` (`None`: no anchor yet): a compare-and-swap.
    ///
    /// Crash safety: the new generation is created before the older objects are destroyed, so the
    /// anchor is never absent, and after a crash between the two the highest generation wins.
    /// Once `C_CreateObject` succeeded the write has committed: failures to destroy older objects
    /// after it are not reported (a concurrent cleanup may have destroyed them already,
    /// `CKR_OBJECT_HANDLE_INVALID`); the next write destroys what is left.
    pub fn set_anchor(
        &self,
        label: &str,
        expected: Option<u64>,
        value: &[u8],
    ) -> Result<AnchorWrite> {
        let _serial = WRITE_LOCK
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        with_session(self, |s| {
            let existing = read_all(s, label)?;
            let found = existing.last().map(|(g, _, _)| *g);
            let generation = expected.map_or(0, |g| g.saturating_add(1));
            if found != expected {
                // Our own write, committed before the session died and this attempt began again
                // (`with_session` reruns it on a new session): written, not a conflict, or the
                // caller would drop the very state the anchor now names.
                if let Some((g, _, v)) = existing.last()
                    && *g == generation
                    && v.as_slice() == value
                {
                    return Ok(AnchorWrite::Written(generation));
                }
                return Ok(AnchorWrite::Conflict { found });
            }
            let mut attrs = template(label);
            attrs.push(Attribute::Private(true));
            attrs.push(Attribute::Value(
                [&generation.to_be_bytes()[..], value].concat(),
            ));
            if let Err(first) = s.session.create_object(&attrs).ck("C_CreateObject") {
                // A token may fail a write transiently (SoftHSM's file store under concurrent
                // access answers CKR_GENERAL_ERROR) and may even have committed it: look again,
                // and create once more only if the new generation is not there.
                let again = read_all(s, label)?;
                match again.last() {
                    Some((g, _, v)) if *g == generation && v.as_slice() == value => {}
                    last if last.map(|(g, _, _)| *g) == found => {
                        s.session.create_object(&attrs).ck("C_CreateObject")?;
                    }
                    _ => return Err(first),
                }
            }
            for (_, handle, _) in existing {
                // Committed already (see above): a stale handle or a failed destroy only leaves
                // an older generation behind, which reads ignore and the next write removes.
                let _ = s.session.destroy_object(handle);
            }
            Ok(AnchorWrite::Written(generation))
        })
    }
}
