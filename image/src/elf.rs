//! Just enough ELF to refuse an executable that cannot run in the enclave's ramdisk: the ramdisk
//! has no dynamic loader and no shared libraries, so the enclave and init binaries must be x86-64
//! ELF executables without a program interpreter (`PT_INTERP`), i.e. statically linked.

const PT_INTERP: u32 = 3;
const EM_X86_64: u16 = 62;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    let raw = bytes.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes(raw.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let raw = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(raw.try_into().ok()?))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    let raw = bytes.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(raw.try_into().ok()?))
}

/// `Ok(())` for a static x86-64 ELF executable; otherwise why not, in a few words.
pub fn check_static_x86_64(bytes: &[u8]) -> Result<(), String> {
    if bytes.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err("not an ELF file".into());
    }
    // EI_CLASS = 2 (64-bit), EI_DATA = 1 (little-endian).
    if bytes.get(4..6) != Some([2u8, 1].as_slice()) {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let bad = || "truncated ELF header".to_owned();
    let kind = u16_at(bytes, 16).ok_or_else(bad)?;
    if kind != ET_EXEC && kind != ET_DYN {
        return Err("not an ELF executable".into());
    }
    if u16_at(bytes, 18).ok_or_else(bad)? != EM_X86_64 {
        return Err("not an x86-64 executable".into());
    }
    let phoff = usize::try_from(u64_at(bytes, 32).ok_or_else(bad)?).map_err(|_| bad())?;
    let phentsize = usize::from(u16_at(bytes, 54).ok_or_else(bad)?);
    let phnum = usize::from(u16_at(bytes, 56).ok_or_else(bad)?);
    if phnum > 0 && phentsize < 4 {
        return Err("bad ELF program header size".into());
    }
    for i in 0..phnum {
        let at = i
            .checked_mul(phentsize)
            .and_then(|o| o.checked_add(phoff))
            .ok_or_else(bad)?;
        let p_type = u32_at(bytes, at).ok_or_else(|| "truncated ELF program headers".to_owned())?;
        if p_type == PT_INTERP {
            return Err(
                "dynamically linked (it names a program interpreter); the ramdisk has no loader: \
                 build it with crt-static (make enclave-image)"
                    .into(),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    /// A minimal x86-64 ELF header with these program header types.
    fn fake_executable(program_headers: &[u32]) -> Vec<u8> {
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[6] = 1;
        elf[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        elf[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        elf[32..40].copy_from_slice(&64u64.to_le_bytes());
        elf[54..56].copy_from_slice(&56u16.to_le_bytes());
        elf[56..58].copy_from_slice(&u16::try_from(program_headers.len()).unwrap().to_le_bytes());
        for p_type in program_headers {
            let mut header = vec![0u8; 56];
            header[..4].copy_from_slice(&p_type.to_le_bytes());
            elf.extend_from_slice(&header);
        }
        elf
    }

    #[test]
    fn static_passes_dynamic_and_non_elf_are_refused() {
        assert_eq!(check_static_x86_64(&fake_executable(&[1, 1, 4])), Ok(()));
        let dynamic = check_static_x86_64(&fake_executable(&[6, PT_INTERP, 1])).unwrap_err();
        assert!(dynamic.contains("dynamically linked"), "{dynamic}");
        assert!(check_static_x86_64(b"#!/bin/sh\n").is_err());
        assert!(check_static_x86_64(b"").is_err());
        let mut truncated = fake_executable(&[1, 1]);
        truncated.truncate(70);
        assert!(check_static_x86_64(&truncated).is_err());
        let mut arm = fake_executable(&[]);
        arm[18] = 183;
        assert!(check_static_x86_64(&arm).unwrap_err().contains("x86-64"));
    }

    #[test]
    fn a_real_dynamic_executable_is_refused() {
        // Test binaries are ordinary, dynamically linked, executables.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let verdict = check_static_x86_64(&me).unwrap_err();
        assert!(verdict.contains("dynamically linked"), "{verdict}");
    }
}
