//! One PKCS#11 session per thread per slot, and the object handles found through it.
//!
//! Why per thread: a session holds at most one active operation of each kind (PKCS#11 v2.40 §5.11,
//! `C_SignInit` starts one that `C_Sign` finishes), so two threads sharing a session would
//! interleave and break each other's operations; cryptoki's `Session` is `Send` but not `Sync` for that reason. Opening a
//! session per call would be correct but costs a `C_OpenSession`/`C_CloseSession` pair per
//! signature, so each thread keeps one session per slot, opened on first use.
//!
//! Login: the login state belongs to the application and the token, not to a session (v2.40 §5.6,
//! `C_Login`: "all sessions of the application with the token" enter the user state, and new ones
//! open in it). [`crate::Token`] keeps one logged-in session open for its lifetime, so the sessions
//! opened here start out logged in; that is checked once, when the session is opened.
//!
//! Handles: once a session can use a handle for an object, it keeps being able to for as long as
//! the session and the object exist (PKCS#11 v2.40 Usage Guide, "Session handles and object
//! handles"); handles found here are cached with the thread's session so a
//! signature costs `C_SignInit` + `C_Sign` only. A stale handle (`CKR_OBJECT_HANDLE_INVALID` or
//! `CKR_KEY_HANDLE_INVALID`) drops the entry and the caller finds the object again.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::ObjectHandle;
use cryptoki::session::{Session, SessionState};
use cryptoki::slot::Slot;

use crate::context::context;
use crate::error::{KmsError, Result, pkcs11, rv};
use crate::token::Token;

/// A failure inside a session operation, before it is mapped: keeps the raw PKCS#11 error so the
/// caller can react to specific codes (stale handles, closed sessions).
pub(crate) enum Fail {
    /// A cryptoki call failed while doing `operation`.
    Ck(&'static str, CkError),
    /// Already a [`KmsError`].
    Kms(KmsError),
}

impl Fail {
    pub(crate) fn rv(&self) -> Option<RvError> {
        match self {
            Fail::Ck(_, e) => rv(e),
            Fail::Kms(_) => None,
        }
    }

    pub(crate) fn into_kms(self) -> KmsError {
        match self {
            Fail::Ck(operation, e) => pkcs11(operation, e),
            Fail::Kms(e) => e,
        }
    }

    /// The object handle used is no longer valid (object deleted, session-specific handle space).
    pub(crate) fn is_stale_handle(&self) -> bool {
        matches!(
            self.rv(),
            Some(RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid)
        )
    }

    /// The session itself is gone (closed under us, token removed): open a new one.
    fn is_dead_session(&self) -> bool {
        matches!(
            self.rv(),
            Some(
                RvError::SessionHandleInvalid
                    | RvError::SessionClosed
                    | RvError::DeviceRemoved
                    | RvError::TokenNotPresent
            )
        )
    }
}

impl From<KmsError> for Fail {
    fn from(e: KmsError) -> Self {
        Fail::Kms(e)
    }
}

/// `.ck("C_Xxx")` turns a cryptoki result into a session-operation result.
pub(crate) trait Ck<T> {
    /// Attaches the operation name to a cryptoki error.
    fn ck(self, operation: &'static str) -> std::result::Result<T, Fail>;
}

impl<T> Ck<T> for cryptoki::error::Result<T> {
    fn ck(self, operation: &'static str) -> std::result::Result<T, Fail> {
        self.map_err(|e| Fail::Ck(operation, e))
    }
}

/// This thread's session with one slot, and the handles it found.
pub(crate) struct ThreadSession {
    pub(crate) session: Session,
    /// Private-key handles by `CKA_ID`, with the `CKA_LABEL` they were found under.
    handles: RefCell<HashMap<Vec<u8>, (String, ObjectHandle)>>,
}

impl ThreadSession {
    /// A cached handle for the object with this id and label.
    pub(crate) fn cached(&self, label: &str, id: &[u8]) -> Option<ObjectHandle> {
        self.handles
            .borrow()
            .get(id)
            .filter(|(l, _)| l == label)
            .map(|(_, h)| *h)
    }

    pub(crate) fn remember(&self, label: &str, id: &[u8], handle: ObjectHandle) {
        self.handles
            .borrow_mut()
            .insert(id.to_vec(), (label.to_owned(), handle));
    }

    pub(crate) fn forget(&self, id: &[u8]) {
        self.handles.borrow_mut().remove(id);
    }
}

thread_local! {
    /// Sessions of this thread, by slot id. One context per process, so the slot id is enough.
    static SESSIONS: RefCell<HashMap<u64, Rc<ThreadSession>>> = RefCell::new(HashMap::new());
}

/// Runs `op` on this thread's session with the token's slot, opening the session on first use.
/// If the session turns out to be dead, it is replaced once and `op` runs again.
pub(crate) fn with_session<T>(
    token: &Token,
    mut op: impl FnMut(&ThreadSession) -> std::result::Result<T, Fail>,
) -> Result<T> {
    let slot = token.slot();
    let first = thread_session(token, slot)?;
    match op(&first) {
        Err(fail) if fail.is_dead_session() => {
            drop(first);
            SESSIONS.with(|s| s.borrow_mut().remove(&slot.id()));
            let fresh = thread_session(token, slot)?;
            op(&fresh).map_err(Fail::into_kms)
        }
        other => other.map_err(Fail::into_kms),
    }
}

fn thread_session(token: &Token, slot: Slot) -> Result<Rc<ThreadSession>> {
    if let Some(ts) = SESSIONS.with(|s| s.borrow().get(&slot.id()).cloned()) {
        return Ok(ts);
    }
    let ctx = context(token.module())?;
    let session = ctx
        .open_rw_session(slot)
        .map_err(|e| pkcs11("C_OpenSession", e))?;
    let state = session
        .get_session_info()
        .map_err(|e| pkcs11("C_GetSessionInfo", e))?
        .session_state();
    if state != SessionState::RwUser {
        return Err(KmsError::NotLoggedIn {
            label: token.label().to_owned(),
        });
    }
    let ts = Rc::new(ThreadSession {
        session,
        handles: RefCell::new(HashMap::new()),
    });
    SESSIONS.with(|s| s.borrow_mut().insert(slot.id(), Rc::clone(&ts)));
    Ok(ts)
}
