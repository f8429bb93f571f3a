//! Freshness anchors: small token data objects the host cannot roll back (on a real HSM).
//!
//! The parent keeps every sealed blob, so it can also serve an *old* one: sealing proves a blob is
//! genuine, not that it is current. An anchor is a `CKO_DATA` object on the token (PKCS#11 v2.40
//! §4.5: `CKA_TOKEN`, `CKA_PRIVATE`, `CKA_LABEL`, `CKA_VALUE`) holding a digest of the current state;
//! the enclave accepts a state blob only if it matches. A real HSM keeps its objects itself, so the
//! host cannot restore an older anchor. With SoftHSM the token is files on the host, and a host that
//! rolls back both the token directory and the database defeats the anchor: see docs/lifecycle.md.

use std::collections::HashMap;

use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};

use crate::error::Result;
use crate::session::{Ck, Fail, ThreadSession, with_session};
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
    s: &ThreadSession,
    label: &str,
) -> std::result::Result<Vec<(u64, ObjectHandle, Vec<u8>)>, Fail> {
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
    s: &ThreadSession,
    label: &str,
) -> std::result::Result<Vec<(u64, ObjectHandle, Vec<u8>)>, Fail> {
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
        let _serial = write_lock();
        with_session(self, |s| Ok(swap_searching(s, label, expected, value)?.0))
    }
}

fn write_lock() -> std::sync::MutexGuard<'static, ()> {
    WRITE_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The compare-and-swap of [`Token::set_anchor`], searching the token for the anchor's objects;
/// also answers the object now holding the anchor when the write happened.
fn swap_searching(
    s: &ThreadSession,
    label: &str,
    expected: Option<u64>,
    value: &[u8],
) -> std::result::Result<(AnchorWrite, Option<ObjectHandle>), Fail> {
    let existing = read_all(s, label)?;
    let found = existing.last().map(|(g, _, _)| *g);
    let generation = expected.map_or(0, |g| g.saturating_add(1));
    if found != expected {
        // Our own write, committed before the session died and this attempt began again
        // (`with_session` reruns it on a new session): written, not a conflict, or the
        // caller would drop the very state the anchor now names.
        if let Some((g, handle, v)) = existing.last()
            && *g == generation
            && v.as_slice() == value
        {
            return Ok((AnchorWrite::Written(generation), Some(*handle)));
        }
        return Ok((AnchorWrite::Conflict { found }, None));
    }
    let handle = create_generation(s, label, generation, value, found)?;
    for (_, old, _) in existing {
        // Committed already (see above): a stale handle or a failed destroy only leaves
        // an older generation behind, which reads ignore and the next write removes.
        let _ = s.session.destroy_object(old);
    }
    Ok((AnchorWrite::Written(generation), Some(handle)))
}

/// Creates the object holding generation `generation` of the anchor, whose newest generation
/// was `found`; answers its handle.
fn create_generation(
    s: &ThreadSession,
    label: &str,
    generation: u64,
    value: &[u8],
    found: Option<u64>,
) -> std::result::Result<ObjectHandle, Fail> {
    let mut attrs = template(label);
    attrs.push(Attribute::Private(true));
    attrs.push(Attribute::Value(
        [&generation.to_be_bytes()[..], value].concat(),
    ));
    match s.session.create_object(&attrs).ck("C_CreateObject") {
        Ok(handle) => Ok(handle),
        Err(first) => {
            // A token may fail a write transiently (SoftHSM's file store under concurrent
            // access answers CKR_GENERAL_ERROR) and may even have committed it: look again,
            // and create once more only if the new generation is not there.
            let again = read_all(s, label)?;
            match again.last() {
                Some((g, handle, v)) if *g == generation && v.as_slice() == value => Ok(*handle),
                last if last.map(|(g, _, _)| *g) == found => {
                    s.session.create_object(&attrs).ck("C_CreateObject")
                }
                _ => Err(first),
            }
        }
    }
}

/// The generation of an anchor its only writer wrote last, and the object holding it.
#[derive(Debug, Clone, Copy)]
struct Known {
    generation: u64,
    handle: ObjectHandle,
}

/// The anchors of a token that no other process writes (one enclave instance per token:
/// `[anchors] shared` unset). [`Token::set_anchor`] searches the token for an anchor's objects
/// before every write; SoftHSM's file store answers a search by checking every object file of
/// the token (about 0.5 ms among 70 objects on this project's bench machine), a quarter of a
/// write. The only writer knows which object holds the generation it wrote last, so its next
/// write checks that one object (its label and generation, `C_GetAttributeValue`), creates the
/// next generation and destroys it, without a search. Anything unexpected (an object gone or
/// not the one remembered, a conflict, a failure) falls back to the searching write.
///
/// That another process never writes these anchors is what makes the remembered generation the
/// newest; where it may ([`Token::set_anchor`] with a cross-process lock), this must not be used.
#[derive(Debug)]
pub struct SoleWriter {
    token: Token,
    known: std::sync::Mutex<HashMap<String, Known>>,
}

impl SoleWriter {
    /// The anchors of `token`, written by this process only.
    #[must_use]
    pub fn new(token: Token) -> Self {
        Self {
            token,
            known: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The token.
    #[must_use]
    pub fn token(&self) -> &Token {
        &self.token
    }

    /// [`Token::anchor`].
    pub fn anchor(&self, label: &str) -> Result<Option<(u64, Vec<u8>)>> {
        self.token.anchor(label)
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<String, Known>> {
        self.known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// [`Token::set_anchor`], without a search of the token when this process wrote the
    /// generation `expected` (see the type's docs).
    pub fn set_anchor(
        &self,
        label: &str,
        expected: Option<u64>,
        value: &[u8],
    ) -> Result<AnchorWrite> {
        let _serial = write_lock();
        let known = self
            .known()
            .remove(label)
            .filter(|k| Some(k.generation) == expected);
        // A rerun (the session died after our create may have committed) searches: the
        // remembered object still holds its generation, and the create must not be repeated.
        let mut first = true;
        let (write, handle) = with_session(&self.token, |s| match known {
            Some(k) if std::mem::take(&mut first) && holds(s, label, k)? => {
                let generation = k.generation.saturating_add(1);
                let handle = create_generation(s, label, generation, value, Some(k.generation))?;
                // Committed: a failed destroy leaves an older generation that reads ignore.
                let _ = s.session.destroy_object(k.handle);
                Ok((AnchorWrite::Written(generation), Some(handle)))
            }
            _ => swap_searching(s, label, expected, value),
        })?;
        if let (AnchorWrite::Written(generation), Some(handle)) = (write, handle) {
            self.known()
                .insert(label.to_owned(), Known { generation, handle });
        }
        Ok(write)
    }
}

/// Whether the object `k` names still holds generation `k.generation` of anchor `label`. A
/// handle no longer valid is not an error: the caller searches instead. Checked before it is
/// destroyed, so a handle the token gave to another object since is never destroyed.
fn holds(s: &ThreadSession, label: &str, k: Known) -> std::result::Result<bool, Fail> {
    let attrs = match s
        .session
        .get_attributes(
            k.handle,
            &[
                AttributeType::Class,
                AttributeType::Label,
                AttributeType::Application,
                AttributeType::Value,
            ],
        )
        .ck("C_GetAttributeValue")
    {
        Ok(attrs) => attrs,
        Err(e) if e.is_stale_handle() => return Ok(false),
        Err(e) => return Err(e),
    };
    let mut ok = [false; 4];
    for a in attrs {
        match a {
            Attribute::Class(c) => ok[0] = c == ObjectClass::DATA,
            Attribute::Label(l) => ok[1] = l == label.as_bytes(),
            Attribute::Application(app) => ok[2] = app == APPLICATION,
            Attribute::Value(v) => ok[3] = v.get(..8) == Some(&k.generation.to_be_bytes()[..]),
            _ => {}
        }
    }
    Ok(ok == [true; 4])
}
