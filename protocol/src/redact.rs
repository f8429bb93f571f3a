//! `Debug` for values that hold secrets (shares, nonces, HPKE secret keys, deltas): who and where,
//! never a secret, so that a state machine can be logged or shown in a failed assertion.

/// What `Debug` prints in place of a secret.
pub(crate) const REDACTED: &str = "<redacted>";

/// Implements `Debug` for a type that holds secrets: each listed field with the value given (an
/// expression of the value, bound to the name after the type), then each secret's name with
/// [`REDACTED`] for its value, then `..` for whatever else it holds:
///
/// ```text
/// redacted_debug! {
///     RepairParticipant<C: Ciphersuite> |s| {
///         params: s.params,
///     } hides [hpke_secret]
/// }
/// ```
///
/// prints `RepairParticipant { params: …, hpke_secret: "<redacted>", .. }`. A secret that the
/// value may or may not still hold is a listed field instead, e.g.
/// `key_package: s.key_package.as_ref().map(|_| REDACTED)`.
macro_rules! redacted_debug {
    (
        $name:ident $(<$($generic:ident: $bound:path),+>)? |$this:ident| {
            $($field:ident: $value:expr),* $(,)?
        } hides [$($secret:ident),* $(,)?]
    ) => {
        impl$(<$($generic: $bound),+>)? ::std::fmt::Debug for $name$(<$($generic),+>)? {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                let $this = self;
                f.debug_struct(stringify!($name))
                    $(.field(stringify!($field), &$value))*
                    $(.field(stringify!($secret), &$crate::redact::REDACTED))*
                    .finish_non_exhaustive()
            }
        }
    };
}
pub(crate) use redacted_debug;
