//! What the fuzz targets share: the wire round-trip property, and the input-driven edits and
//! party numbers the ceremony targets build their messages from.

use cosigner_protocol::id::PartyId;
use libfuzzer_sys::arbitrary::{self, Result, Unstructured};

#[doc(hidden)]
pub use cosigner_protocol;

/// Any bytes into `wire::decode::<$ty>`: errors are fine, panics are not. Whatever decodes must
/// re-encode to bytes that decode to the same message, and the encoding is canonical from there
/// on: encoding the re-decoded value changes nothing.
///
/// A macro rather than a generic function: naming serde's traits would need serde as a dependency.
#[macro_export]
macro_rules! wire_round_trip {
    ($ty:ty, $data:expr) => {
        if let Ok(message) = $crate::cosigner_protocol::wire::decode::<$ty>($data) {
            let bytes = $crate::cosigner_protocol::wire::encode(&message)
                .expect("a decoded message re-encodes");
            let again = $crate::cosigner_protocol::wire::decode::<$ty>(&bytes)
                .expect("a re-encoded message decodes");
            assert_eq!(again, message);
            assert_eq!(
                $crate::cosigner_protocol::wire::encode(&again).expect("re-encode"),
                bytes
            );
        }
    };
}

/// XORs up to `max_edits` bytes of `bytes`, at places and with masks the input picks. The number
/// of edits is drawn even when `bytes` is empty (then nothing changes).
pub fn xor_edits(u: &mut Unstructured<'_>, bytes: &mut [u8], max_edits: usize) -> Result<()> {
    let edits = u.int_in_range(0..=max_edits)?;
    if bytes.is_empty() {
        return Ok(());
    }
    for _ in 0..edits {
        let index = u.choose_index(bytes.len())?;
        let mask: u8 = u.arbitrary()?;
        if let Some(b) = bytes.get_mut(index) {
            *b ^= mask;
        }
    }
    Ok(())
}

/// A party number: mostly a small one (a party of the targets' 2-of-3 sets, 0, or one just past
/// the set), sometimes any.
pub fn small_party(u: &mut Unstructured<'_>) -> Result<PartyId> {
    // Party 0 cannot be spelled (the wire refuses it where it decodes): any other number.
    let number: u16 = if u.ratio(7, 8)? {
        u.int_in_range(1..=4)?
    } else {
        u.arbitrary::<u16>()?.max(1)
    };
    PartyId::new(number).map_err(|_| arbitrary::Error::IncorrectFormat)
}
