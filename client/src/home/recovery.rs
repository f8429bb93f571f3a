//! Where a new wallet's recovery credential goes: a file the user moves offline (the command
//! line), or a sealed record of the home until the app has had the user back it up (a phone).

use std::path::{Path, PathBuf};

use cosigner_protocol::wire::WalletId;
use zeroize::Zeroizing;

use super::{Home, write_p256_key};
use crate::error::{ClientError, Result};

/// The record kind of a credential kept in the home (`wallets/<id>.recovery`, sealed).
const RECOVERY: &str = "recovery";

/// Where a new wallet's recovery credential (a P-256 key, PKCS#8 PEM) is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryKeyOut<'a> {
    /// A file, 0600, never overwritten (`wallet create --recovery-key-out`).
    File(&'a Path),
    /// A sealed record of the home, read with [`Home::recovery_key`] and removed with
    /// [`Home::forget_recovery_key`] once the user has it offline: nothing of it reaches a file
    /// system in the clear.
    Sealed,
}

impl<'a> From<&'a Path> for RecoveryKeyOut<'a> {
    fn from(path: &'a Path) -> Self {
        Self::File(path)
    }
}

impl<'a> From<&'a PathBuf> for RecoveryKeyOut<'a> {
    fn from(path: &'a PathBuf) -> Self {
        Self::File(path)
    }
}

impl RecoveryKeyOut<'_> {
    /// Refuses a file that exists (a credential is never overwritten).
    pub(crate) fn check(self) -> Result<()> {
        match self {
            Self::File(path) if path.exists() => Err(ClientError::Input(format!(
                "{} already exists: refusing to overwrite a recovery credential",
                path.display()
            ))),
            _ => Ok(()),
        }
    }

    /// Writes the credential of wallet `id`.
    pub(crate) fn write(
        self,
        home: &Home,
        id: &WalletId,
        key: &p256::ecdsa::SigningKey,
    ) -> Result<()> {
        use p256::pkcs8::EncodePrivateKey;
        match self {
            Self::File(path) => write_p256_key(path, key),
            Self::Sealed => {
                if home.has(id, RECOVERY)? {
                    return Err(home.err(id, RECOVERY, "already exists"));
                }
                let pem = key
                    .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
                    .map_err(|e| home.err(id, RECOVERY, e))?;
                home.put(id, RECOVERY, pem.as_bytes())
            }
        }
    }

    /// Removes what [`RecoveryKeyOut::write`] wrote, best effort (a creation that registered
    /// nothing).
    pub(crate) fn discard(self, home: &Home, id: &WalletId) {
        match self {
            Self::File(path) => {
                let _ = std::fs::remove_file(path);
            }
            Self::Sealed => {
                let _ = home.forget_recovery_key(id);
            }
        }
    }

    /// The file, for what a creation returns; `None` when sealed in the home.
    pub(crate) fn path(self) -> Option<PathBuf> {
        match self {
            Self::File(path) => Some(path.to_path_buf()),
            Self::Sealed => None,
        }
    }

    /// From what a creation journal recorded ([`RecoveryKeyOut::path`]).
    pub(crate) fn of(path: Option<&'_ PathBuf>) -> RecoveryKeyOut<'_> {
        path.map_or(RecoveryKeyOut::Sealed, |p| RecoveryKeyOut::File(p))
    }
}

impl Home {
    /// The recovery credential of wallet `id` kept in this home ([`RecoveryKeyOut::Sealed`]),
    /// if it still is.
    pub fn recovery_key(&self, id: &WalletId) -> Result<Option<Zeroizing<String>>> {
        let Some(bytes) = self.get(id, RECOVERY)? else {
            return Ok(None);
        };
        String::from_utf8(bytes.to_vec())
            .map(|s| Some(Zeroizing::new(s)))
            .map_err(|_| self.err(id, RECOVERY, "not a PEM key"))
    }

    /// The wallets whose recovery credential this home still keeps: the user has not confirmed
    /// a backup of them yet.
    pub fn kept_recovery_keys(&self) -> Result<Vec<WalletId>> {
        self.ids_with(RECOVERY)
    }

    /// Removes the recovery credential kept in this home (the user has it offline now).
    pub fn forget_recovery_key(&self, id: &WalletId) -> Result<()> {
        self.remove_journal(id, RECOVERY)
    }
}
