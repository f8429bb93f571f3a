//! Tokens: creating one, finding one by label, logging in.
//!
//! Tokens are found by label, never by slot number: slot ids are not stable (SoftHSM gives an
//! initialised token a slot id derived from its serial number, so the next process sees it at
//! another id than the one it was initialised in; HSMs renumber on reconfiguration). The label is the
//! 32-byte, blank-padded `CK_TOKEN_INFO.label` (PKCS#11 v2.40 §3.2, `CK_TOKEN_INFO`), compared
//! exactly after the padding is removed.
//!
//! Login is per application and token, not per session (v2.40 §5.6, `C_Login`): logging in through
//! one session logs in all of them, and a second `C_Login` answers `CKR_USER_ALREADY_LOGGED_IN`,
//! which is success here. Closing the application's last session with the token logs it out
//! (v2.40 §5.6, `C_CloseSession`), so a [`Token`] keeps the session it logged in with open for as
//! long as any clone of it exists; the per-thread working sessions ([`crate::session`]) then open
//! in the user state without the PIN being kept in memory.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cryptoki::context::Pkcs11;
use cryptoki::error::RvError;
use cryptoki::session::{Session, UserType};
use cryptoki::slot::{Slot, TokenInfo};

use crate::context::context;
use crate::error::{KmsError, Result, pkcs11, rv};
use crate::pin::Pin;

/// Longest token label PKCS#11 can store (`CK_TOKEN_INFO.label` is 32 bytes).
pub const MAX_TOKEN_LABEL_LEN: usize = 32;

/// A logged-in token, found by its label. Cheap to clone; clones share the login.
#[derive(Clone)]
pub struct Token {
    inner: Arc<TokenInner>,
}

struct TokenInner {
    module: PathBuf,
    slot: Slot,
    label: String,
    /// The session that logged in; held so the login outlives the per-thread sessions' comings and
    /// goings. Never used for operations (a `Mutex` only because `Session` is not `Sync`).
    _login: Mutex<Session>,
}

impl Token {
    /// Initialises a new token labelled `label` in the first slot whose token is not initialised
    /// (SoftHSM always offers one), sets its SO PIN and user PIN, and opens it as the user.
    ///
    /// Fails with [`KmsError::TokenExists`] if a token with this label already exists and with
    /// [`KmsError::NoFreeSlot`] if every slot holds an initialised token.
    pub fn init(module: &Path, label: &str, so_pin: &Pin, user_pin: &Pin) -> Result<Token> {
        check_token_label(label)?;
        let ctx = context(module)?;
        if !slots_labelled(ctx, label)?.is_empty() {
            return Err(KmsError::TokenExists {
                label: label.to_owned(),
            });
        }
        let free = free_slot(ctx)?;
        // v2.40 §5.5 C_InitToken: sets the SO PIN and the label, destroys any objects.
        ctx.init_token(free, &so_pin.auth(), label)
            .map_err(|e| pkcs11("C_InitToken", e))?;
        // Slot ids may change with initialisation (SoftHSM derives them from the serial number
        // when it loads tokens): look the token up again by its label.
        let slot = find_slot(ctx, label)?;
        {
            let so = ctx
                .open_rw_session(slot)
                .map_err(|e| pkcs11("C_OpenSession", e))?;
            so.login(UserType::So, Some(&so_pin.auth()))
                .map_err(|e| pkcs11("C_Login(SO)", e))?;
            // v2.40 §5.5 C_InitPIN: only the SO, in a R/W SO session, sets the first user PIN.
            so.init_pin(&user_pin.auth())
                .map_err(|e| pkcs11("C_InitPIN", e))?;
            so.logout().map_err(|e| pkcs11("C_Logout(SO)", e))?;
        }
        Token::open(module, label, user_pin)
    }

    /// Finds the token labelled `label` and logs in as the user.
    ///
    /// An already logged-in token (another [`Token`] for it in this process) is success. A wrong
    /// PIN is [`KmsError::BadPin`].
    ///
    /// # Security
    /// When the token is already logged in in this process, PKCS#11 answers
    /// `CKR_USER_ALREADY_LOGGED_IN` without looking at the PIN, so `pin` is only checked by the
    /// first open in a process.
    pub fn open(module: &Path, label: &str, pin: &Pin) -> Result<Token> {
        check_token_label(label)?;
        let ctx = context(module)?;
        let slot = find_slot(ctx, label)?;
        let session = ctx
            .open_ro_session(slot)
            .map_err(|e| pkcs11("C_OpenSession", e))?;
        match session.login(UserType::User, Some(&pin.auth())) {
            Ok(()) => {}
            Err(e) if rv(&e) == Some(RvError::UserAlreadyLoggedIn) => {}
            Err(e) => return Err(pkcs11("C_Login", e)),
        }
        Ok(Token {
            inner: Arc::new(TokenInner {
                module: module.to_path_buf(),
                slot,
                label: label.to_owned(),
                _login: Mutex::new(session),
            }),
        })
    }

    /// The token's label.
    pub fn label(&self) -> &str {
        &self.inner.label
    }

    /// The PKCS#11 module the token was opened through.
    pub fn module(&self) -> &Path {
        &self.inner.module
    }

    /// The slot the token sits in (valid for this process only).
    pub fn slot(&self) -> Slot {
        self.inner.slot
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("label", &self.inner.label)
            .field("slot", &self.inner.slot.id())
            .field("module", &self.inner.module)
            .finish()
    }
}

/// Labels must survive the 32-byte blank padding unchanged.
fn check_token_label(label: &str) -> Result<()> {
    let reason = if label.is_empty() {
        "empty"
    } else if label.len() > MAX_TOKEN_LABEL_LEN {
        "longer than 32 bytes"
    } else if label.ends_with(' ') {
        "ends with a blank, which the padding would swallow"
    } else {
        return Ok(());
    };
    Err(KmsError::InvalidLabel {
        label: label.to_owned(),
        reason,
    })
}

/// Every slot with a token present, and that token's information.
fn token_slots(ctx: &Pkcs11) -> Result<Vec<(Slot, TokenInfo)>> {
    ctx.get_slots_with_token()
        .map_err(|e| pkcs11("C_GetSlotList", e))?
        .into_iter()
        .map(|slot| {
            let info = ctx
                .get_token_info(slot)
                .map_err(|e| pkcs11("C_GetTokenInfo", e))?;
            Ok((slot, info))
        })
        .collect()
}

/// Slots whose initialised token carries exactly this label.
fn slots_labelled(ctx: &Pkcs11, label: &str) -> Result<Vec<Slot>> {
    Ok(token_slots(ctx)?
        .into_iter()
        .filter(|(_, info)| info.token_initialized() && info.label() == label)
        .map(|(slot, _)| slot)
        .collect())
}

/// The one slot holding the token labelled `label`.
fn find_slot(ctx: &Pkcs11, label: &str) -> Result<Slot> {
    let slots = slots_labelled(ctx, label)?;
    match slots.as_slice() {
        [slot] => Ok(*slot),
        [] => Err(KmsError::TokenNotFound {
            label: label.to_owned(),
        }),
        many => Err(KmsError::TokenAmbiguous {
            label: label.to_owned(),
            count: many.len(),
        }),
    }
}

/// The first slot with a token present but not initialised.
fn free_slot(ctx: &Pkcs11) -> Result<Slot> {
    token_slots(ctx)?
        .into_iter()
        .find(|(_, info)| !info.token_initialized())
        .map(|(slot, _)| slot)
        .ok_or(KmsError::NoFreeSlot)
}
