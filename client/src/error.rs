//! The client library's one error type.
//!
//! Every variant renders as one line in the user's terms: what went wrong, with the file or the
//! cosigner it concerns, and what to do about it where there is something to do. Library errors
//! (rustls, io, webpki via the attestation crate) are translated where they are caught (see
//! [`io_reason`] and `session.rs`), so no library's wording, URL or `os error` number reaches the
//! user.

use cosigner_protocol::wire::{ErrorKind, WireError};

/// Everything the client can fail at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The trust file is unusable.
    #[error("trust file {reason}")]
    Trust {
        /// Why (starts with the file's path).
        reason: String,
    },
    /// A signature's receipt does not prove what it claims.
    #[error("receipt refused: {reason}")]
    Receipt {
        /// Why.
        reason: String,
    },
    /// A cosigner's attestation was refused.
    #[error("attestation refused: {reason}")]
    Attestation {
        /// Why.
        reason: String,
    },
    /// A cosigner's attestation chains to none of the roots the trust file pins.
    #[error(
        "{addr}: the trust file does not pin this cosigner's root (its attestation chains to none \
         of the {pinned} root(s) in `roots`): add its operator's root.pem, or AWS's Nitro root"
    )]
    UntrustedRoot {
        /// The cosigner's address.
        addr: String,
        /// How many roots the trust file pins.
        pinned: usize,
    },
    /// This device's clock is behind the cosigner's by more than the trust file allows: the
    /// cosigner's document is dated in this device's future.
    #[error(
        "{addr}: your clock is {behind_seconds} s behind the cosigner's (at most \
         {allowed_seconds} s allowed): set this device's clock, or raise max_clock_skew_seconds \
         in the trust file"
    )]
    ClockBehind {
        /// The cosigner's address.
        addr: String,
        /// How far behind, in seconds (rounded up).
        behind_seconds: u64,
        /// The trust file's `max_clock_skew_seconds`.
        allowed_seconds: u64,
    },
    /// This device's clock is ahead of the cosigner's by more than the trust file's maximum
    /// document age: the session's nonce proves the document fresh, so its age is a clock gap.
    #[error(
        "{addr}: your clock is {ahead_seconds} s ahead of the cosigner's (documents may be at most \
         {max_age_seconds} s old): set this device's clock, or raise max_age_seconds in the trust \
         file"
    )]
    ClockAhead {
        /// The cosigner's address.
        addr: String,
        /// How far ahead, in seconds (rounded up).
        ahead_seconds: u64,
        /// The trust file's `max_age_seconds`.
        max_age_seconds: u64,
    },
    /// Connecting or talking to a cosigner failed.
    #[error("{addr}: {reason}")]
    Connection {
        /// The address.
        addr: String,
        /// Why, in the user's terms.
        reason: String,
    },
    /// The cosigner refused a request.
    #[error("{}", remote_line(.0))]
    Remote(WireError),
    /// The cosigner answered something the protocol does not allow here.
    #[error("unexpected answer from the cosigner: {0}")]
    Unexpected(String),
    /// A ceremony check failed locally.
    #[error(transparent)]
    Protocol(#[from] cosigner_protocol::ProtocolError),
    /// This device's share of a wallet is missing, unreadable, or does not belong to the wallet's
    /// public key package: only a recovery (the recovery credential) can give it a share again.
    #[error(
        "your share file {path} is damaged ({reason}): recover the wallet (cosigner recover \
         --wallet {wallet_id} --recovery-key FILE, in a fresh --home)"
    )]
    ShareDamaged {
        /// The share file.
        path: String,
        /// The wallet.
        wallet_id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file of this device: in its home directory, or one named on the command line.
    #[error("{path}: {reason}")]
    Home {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// A user input is malformed.
    #[error("{0}")]
    Input(String),
}

/// One line for a cosigner's refusal: its kind (stable, for scripts), its message, and for a
/// retryable kind what to do.
fn remote_line(e: &WireError) -> String {
    let message = e.message.trim_end_matches('.');
    match e.kind {
        // Some of the enclave's Busy messages already say it: never "try again … try again".
        ErrorKind::Busy if message.contains("try again") => {
            format!("the cosigner is busy (Busy): {message}")
        }
        ErrorKind::Busy => format!("the cosigner is busy (Busy): {message}; try again shortly"),
        kind => format!("the cosigner refused ({kind:?}): {message}"),
    }
}

/// An I/O error in the user's terms, without the OS error number: "is a directory, not a file"
/// rather than "Is a directory (os error 21)".
pub fn io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::NotFound => "no such file or directory".into(),
        K::PermissionDenied => "permission denied".into(),
        K::IsADirectory => "is a directory, not a file".into(),
        K::NotADirectory => "a part of this path is a file, not a directory".into(),
        K::AlreadyExists => "already exists".into(),
        K::InvalidData => "not valid UTF-8 text".into(),
        K::StorageFull => "the disk is full".into(),
        K::ReadOnlyFilesystem => "the file system is read-only".into(),
        _ => strip_os_error(&e.to_string()),
    }
}

/// `"Broken pipe (os error 32)"` → `"broken pipe"`.
fn strip_os_error(text: &str) -> String {
    let text = match text.find(" (os error ") {
        Some(at) => text.get(..at).unwrap_or(text),
        None => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// `text` as one line for the user: line breaks become spaces, and every `http://` or `https://`
/// word goes (with the `: ` before it). Library messages point at their documentation, which
/// tells the user nothing; the `cosigner` binary passes every error line through this.
pub fn one_line(text: &str) -> String {
    let words: Vec<&str> = text
        .split_whitespace()
        .filter(|w| !w.starts_with("https://") && !w.starts_with("http://"))
        .collect();
    words.join(" ").trim_end_matches([':', ' ']).to_owned()
}

/// Result alias of the client library.
pub type Result<T> = std::result::Result<T, ClientError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_reasons_name_no_os_error_number() {
        let dir = std::io::Error::from_raw_os_error(libc::EISDIR);
        assert_eq!(io_reason(&dir), "is a directory, not a file");
        let pipe = std::io::Error::from_raw_os_error(libc::EPIPE);
        let reason = io_reason(&pipe);
        assert!(!reason.contains("os error"), "{reason}");
        assert!(reason.starts_with('b'), "{reason}");
    }

    #[test]
    fn one_line_drops_urls_and_line_breaks() {
        let text = "peer closed connection without sending TLS close_notify: \
                    https://docs.rs/rustls/latest/rustls/manual/_03_howto/index.html#unexpected-eof";
        assert_eq!(
            one_line(text),
            "peer closed connection without sending TLS close_notify"
        );
        assert_eq!(one_line("a\nb:  c"), "a b: c");
    }

    #[test]
    fn a_refusal_is_one_line_with_its_kind() {
        let e = ClientError::Remote(WireError {
            kind: ErrorKind::NotFound,
            message: "unknown wallet ab".into(),
        });
        assert_eq!(
            e.to_string(),
            "the cosigner refused (NotFound): unknown wallet ab"
        );
    }
}
