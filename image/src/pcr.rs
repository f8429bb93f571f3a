//! The measurements of an EIF, computed the way `aws-nitro-enclaves-image-format` computes them
//! (`EifBuilder::measure` and `get_pcrs`), with its own `EifHasher`:
//!
//! * each PCR starts as 48 zero bytes and is extended once: `PCR = SHA-384(0^48 ‖ SHA-384(data))`
//!   (`EifHasher::new_without_cache` + `tpm_extend_finalize_reset`);
//! * PCR0 data: the kernel, the command line, then every ramdisk in order;
//! * PCR1 data: the kernel, the command line, the first ramdisk (the "bootstrap" one);
//! * PCR2 data: every ramdisk after the first, concatenated (the application);
//! * PCR8 (signed EIFs only, not used here): the signing certificate.
//!
//! PCR2 depends on the application ramdisk alone, so it can be computed (and pinned, audited)
//! without AWS's kernel blobs; PCR0 and PCR1 need them (see [`crate::eif`]).

use std::io::Write;

use aws_nitro_enclaves_image_format::defs::eif_hasher::EifHasher;
use sha2::{Digest, Sha384};

/// A PCR value: SHA-384.
pub type Pcr = [u8; 48];

/// The measurement of `parts` concatenated, extended into a zero PCR.
pub fn extend_from_zero(parts: &[&[u8]]) -> Result<Pcr, String> {
    let mut hasher = EifHasher::new_without_cache(Sha384::new())?;
    for part in parts {
        hasher
            .write_all(part)
            .map_err(|e| format!("hashing: {e}"))?;
    }
    let value = hasher
        .tpm_extend_finalize_reset()
        .map_err(|e| format!("hashing: {e}"))?;
    Pcr::try_from(value.as_slice()).map_err(|_| format!("PCR of {} bytes", value.len()))
}

/// PCR2 of an EIF whose ramdisks after the first are `application_ramdisks`, in order.
pub fn pcr2(application_ramdisks: &[&[u8]]) -> Result<Pcr, String> {
    extend_from_zero(application_ramdisks)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn pcr2_of_a_fixed_input_is_pinned() {
        // Independently: python3 -c 'import hashlib; h=hashlib.sha384;
        //   print(h(bytes(48) + h(b"cosigner").digest()).hexdigest())'
        assert_eq!(
            hex::encode(pcr2(&[b"cosigner"]).unwrap()),
            "82893e1b4899058d5f7e249045c9045fbf3fb6cf016df0db251a3a676f305127ec3b97754c5d238dcb01337aeb9c895c"
        );
        // The empty application (no ramdisk after the first): SHA-384(0^48 ‖ SHA-384("")).
        assert_eq!(
            hex::encode(pcr2(&[]).unwrap()),
            "21b9efbc184807662e966d34f390821309eeac6802309798826296bf3e8bec7c10edb30948c90ba67310f7b964fc500a"
        );
    }

    #[test]
    fn pcr2_is_the_extend_of_the_concatenation() {
        let direct = |data: &[u8]| -> Pcr {
            let inner = Sha384::digest(data);
            let mut outer = Sha384::new();
            outer.update([0u8; 48]);
            outer.update(inner);
            outer.finalize().into()
        };
        assert_eq!(pcr2(&[b"ab", b"cd"]).unwrap(), direct(b"abcd"));
        assert_eq!(pcr2(&[b"abcd"]).unwrap(), direct(b"abcd"));
        assert_ne!(pcr2(&[b"abce"]).unwrap(), direct(b"abcd"));
    }
}
