//! The process's one PKCS#11 context.
//!
//! `C_Initialize` may be called once per process until `C_Finalize` (PKCS#11 v2.40 §5.4,
//! "General-purpose functions": a second call answers `CKR_CRYPTOKI_ALREADY_INITIALIZED`), and
//! finalizing while other threads still hold sessions pulls the library out from under them. So
//! the context is loaded once, lives for the rest of the process and is never finalized. Only one
//! module can be in use: asking for another one later is [`KmsError::ModuleMismatch`], not a silent
//! switch.
//!
//! The library is initialised with `CKF_OS_LOCKING_OK` (v2.40 §5.4.1): cosigner calls it from
//! several threads, each with its own sessions (see [`crate::token`]).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::RvError;

use crate::error::{KmsError, Result, pkcs11, rv};

/// Where Debian and Ubuntu's `softhsm2` package installs the SoftHSM module.
pub const DEFAULT_SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

struct Loaded {
    /// The path as first asked for (for messages).
    path: PathBuf,
    /// The canonical path (for comparisons).
    canonical: PathBuf,
    ctx: Pkcs11,
}

static LOADED: OnceLock<Loaded> = OnceLock::new();
/// Serialises the slow path so two threads never both call `C_Initialize`.
static LOADING: Mutex<()> = Mutex::new(());

/// Loads and initialises the PKCS#11 module at `module` once per process and returns the shared
/// context. Later calls with the same module (compared after resolving symlinks) return the same
/// context; a different module is [`KmsError::ModuleMismatch`].
pub fn context(module: &Path) -> Result<&'static Pkcs11> {
    let canonical = std::fs::canonicalize(module).unwrap_or_else(|_| module.to_path_buf());
    if let Some(loaded) = LOADED.get() {
        return same_module(loaded, module, &canonical);
    }
    let _guard = LOADING.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(loaded) = LOADED.get() {
        return same_module(loaded, module, &canonical);
    }
    let ctx = Pkcs11::new(module).map_err(|e| KmsError::ModuleLoad {
        path: module.to_path_buf(),
        reason: e.to_string(),
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) => {}
        // Someone else in this process (another library) initialised the same module: its state
        // is process-wide, so it is ours as well.
        Err(e) if rv(&e) == Some(RvError::CryptokiAlreadyInitialized) => {}
        Err(e) => return Err(pkcs11("C_Initialize", e)),
    }
    let loaded = LOADED.get_or_init(|| Loaded {
        path: module.to_path_buf(),
        canonical,
        ctx,
    });
    Ok(&loaded.ctx)
}

/// The module this process loaded, if any.
pub fn loaded_module() -> Option<&'static Path> {
    LOADED.get().map(|l| l.path.as_path())
}

fn same_module(
    loaded: &'static Loaded,
    requested: &Path,
    canonical: &Path,
) -> Result<&'static Pkcs11> {
    if loaded.canonical == canonical {
        Ok(&loaded.ctx)
    } else {
        Err(KmsError::ModuleMismatch {
            loaded: loaded.path.clone(),
            requested: requested.to_path_buf(),
        })
    }
}
