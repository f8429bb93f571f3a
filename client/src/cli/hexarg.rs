//! Parsers for hex-valued flags. Every flag is validated before anything runs.

/// A byte string given in hex on the command line (a newtype, so clap takes it as one value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hex(pub Vec<u8>);

/// Lowercase or uppercase hex, even length; `""` is the empty value.
pub fn bytes(s: &str) -> Result<Hex, String> {
    hex::decode(s).map(Hex).map_err(|e| format!("not hex: {e}"))
}

/// `INDEX=HEX`: a PCR index 0..32 and a 32, 48 or 64-byte value.
pub fn pcr(s: &str) -> Result<(u8, Vec<u8>), String> {
    let (index, value) = s
        .split_once('=')
        .ok_or_else(|| "expected INDEX=HEX".to_owned())?;
    let index: u8 = index
        .parse()
        .ok()
        .filter(|i| *i < 32)
        .ok_or_else(|| format!("PCR index {index:?} is not in 0..32"))?;
    let value = bytes(value)?.0;
    if ![32, 48, 64].contains(&value.len()) {
        return Err(format!(
            "PCR{index} value is {} bytes, expected 32, 48 or 64",
            value.len()
        ));
    }
    Ok((index, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcr_flags() {
        assert_eq!(
            pcr(&format!("3={}", "ab".repeat(48))),
            Ok((3, vec![0xab; 48]))
        );
        for bad in ["", "3", "x=00", "32=00", "-1=00", "0=zz", "0=00"] {
            assert!(pcr(bad).is_err(), "{bad}");
        }
    }
}
