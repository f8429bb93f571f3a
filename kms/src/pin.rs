//! Token PINs.
//!
//! A PIN authenticates the user (or the security officer) to the token, PKCS#11 v2.40 §5.6
//! (`C_Login`). Whoever has it can sign with every key on the token, so it is treated as a secret:
//! it never comes from the command line (argv is world-readable through `/proc`), it is zeroized
//! when dropped, and it never shows up in `Debug` output or logs.

use std::fmt;
use std::io::Read;
use std::path::Path;

use cryptoki::types::AuthPin;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{KmsError, Result};

/// A token PIN: zeroized on drop, printed as `Pin(<redacted>)`.
///
/// # Security
/// Build it from a file ([`Pin::from_file`]) or the environment ([`Pin::from_env`]); never from
/// argv. [`Pin::new`] exists for tests and provisioning tools.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct Pin(String);

impl Pin {
    /// Wraps a PIN held in memory (tests, provisioning tools).
    pub fn new(s: impl Into<String>) -> Pin {
        Pin(s.into())
    }

    /// Reads a PIN from a file. One trailing newline (`\n` or `\r\n`) is removed; an empty PIN or
    /// a file that is not UTF-8 is refused.
    pub fn from_file(path: &Path) -> Result<Pin> {
        let source = || path.display().to_string();
        let mut raw = Zeroizing::new(Vec::new());
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut raw))
            .map_err(|e| KmsError::PinSource {
                source_name: source(),
                reason: e.to_string(),
            })?;
        let newline = if raw.ends_with(b"\r\n") {
            2
        } else if raw.ends_with(b"\n") {
            1
        } else {
            0
        };
        let keep = raw.len().saturating_sub(newline);
        raw.truncate(keep);
        // `from_utf8` reuses the buffer; on failure the buffer comes back inside the error and is
        // zeroized here before the error is dropped.
        let pin = String::from_utf8(std::mem::take(&mut *raw)).map_err(|e| {
            let mut bytes = e.into_bytes();
            bytes.zeroize();
            KmsError::PinSource {
                source_name: source(),
                reason: "PIN is not UTF-8".into(),
            }
        })?;
        Pin::checked(pin, source)
    }

    /// Reads a PIN from the environment variable `var`; a missing, empty or non-UTF-8 value is
    /// refused.
    ///
    /// # Security
    /// The variable stays in this process's environment (and `/proc/<pid>/environ`); prefer
    /// [`Pin::from_file`] where the deployment allows it.
    pub fn from_env(var: &str) -> Result<Pin> {
        let source = || format!("${var}");
        let value = std::env::var(var).map_err(|e| KmsError::PinSource {
            source_name: source(),
            reason: match e {
                std::env::VarError::NotPresent => "not set".into(),
                std::env::VarError::NotUnicode(_) => "not UTF-8".into(),
            },
        })?;
        Pin::checked(value, source)
    }

    fn checked(pin: String, source: impl Fn() -> String) -> Result<Pin> {
        let pin = Pin(pin);
        if pin.0.is_empty() {
            return Err(KmsError::PinSource {
                source_name: source(),
                reason: "PIN is empty".into(),
            });
        }
        Ok(pin)
    }

    /// The PIN in the form cryptoki passes to `C_Login` (its copy is zeroized on drop as well).
    pub(crate) fn auth(&self) -> AuthPin {
        AuthPin::new(self.0.as_str().into())
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(<redacted>)")
    }
}
