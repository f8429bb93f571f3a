//! Amounts written with a unit, as people write them in policies: `"0.1 BTC"`, `"250000 sat"`,
//! `"10 ETH"`, `"30 gwei"`. A plain integer stays the asset's base unit (satoshi, wei). Parsed
//! exactly, in integers (no floating point): `"0.1 BTC"` is 10 000 000 sat, and a number with
//! more decimals than its unit has (`"0.000000001 BTC"`) is refused rather than rounded.

use serde::Deserialize;

/// A unit of an asset: its name and how many decimals of the base unit it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unit {
    /// The name written after the number (case-sensitive).
    pub name: &'static str,
    /// 10^decimals base units make one of it.
    pub decimals: u8,
}

/// Bitcoin's units: the bitcoin and the satoshi (its base unit).
pub const BTC_UNITS: &[Unit] = &[
    Unit {
        name: "BTC",
        decimals: 8,
    },
    Unit {
        name: "sat",
        decimals: 0,
    },
];

/// Ether's units: the ether, the gwei and the wei (its base unit).
pub const ETH_UNITS: &[Unit] = &[
    Unit {
        name: "ETH",
        decimals: 18,
    },
    Unit {
        name: "gwei",
        decimals: 9,
    },
    Unit {
        name: "wei",
        decimals: 0,
    },
];

/// An amount as a policy file writes it: an integer of base units, or a string with a unit.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum AmountText {
    /// Base units.
    Base(u64),
    /// A number and a unit, one space apart.
    Text(String),
}

impl AmountText {
    /// The amount in base units, where `units` are the asset's.
    pub fn to_base(&self, units: &[Unit]) -> Result<u128, String> {
        match self {
            Self::Base(n) => Ok(u128::from(*n)),
            Self::Text(text) => parse_amount(text, units),
        }
    }
}

/// `"<number> <unit>"` in base units: the number is digits with at most one `.`, and no more
/// decimals than the unit has.
pub fn parse_amount(text: &str, units: &[Unit]) -> Result<u128, String> {
    let names = || units.iter().map(|u| u.name).collect::<Vec<_>>().join(", ");
    let (number, unit) = text
        .split_once(' ')
        .ok_or_else(|| format!("{text:?}: expected a number and a unit ({})", names()))?;
    let unit = units
        .iter()
        .find(|u| u.name == unit)
        .ok_or_else(|| format!("{text:?}: unknown unit {unit:?} (one of {})", names()))?;
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || (number.contains('.') && !digits(fraction)) {
        return Err(format!("{text:?}: {number:?} is not a decimal number"));
    }
    if fraction.len() > usize::from(unit.decimals) {
        return Err(format!(
            "{text:?}: more than {} decimals (the {} has no smaller part)",
            unit.decimals, unit.name
        ));
    }
    let overflow = || format!("{text:?}: too large");
    let scale = |n: u128, places: usize| -> Result<u128, String> {
        let factor = 10u128.checked_pow(u32::try_from(places).map_err(|_| overflow())?);
        factor.and_then(|f| n.checked_mul(f)).ok_or_else(overflow)
    };
    let whole: u128 = whole.parse().map_err(|_| overflow())?;
    let padded = if fraction.is_empty() {
        0
    } else {
        fraction.parse().map_err(|_| overflow())?
    };
    let decimals = usize::from(unit.decimals);
    scale(whole, decimals)?
        .checked_add(scale(padded, decimals - fraction.len())?)
        .ok_or_else(overflow)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn amounts_with_units_are_exact() {
        assert_eq!(parse_amount("0.1 BTC", BTC_UNITS), Ok(10_000_000));
        assert_eq!(
            parse_amount("21000000 BTC", BTC_UNITS),
            Ok(2_100_000_000_000_000)
        );
        assert_eq!(parse_amount("250000 sat", BTC_UNITS), Ok(250_000));
        assert_eq!(parse_amount("0.00000001 BTC", BTC_UNITS), Ok(1));
        assert_eq!(
            parse_amount("10 ETH", ETH_UNITS),
            Ok(10_000_000_000_000_000_000)
        );
        assert_eq!(
            parse_amount("1.5 ETH", ETH_UNITS),
            Ok(1_500_000_000_000_000_000)
        );
        assert_eq!(parse_amount("30 gwei", ETH_UNITS), Ok(30_000_000_000));
        assert_eq!(AmountText::Base(7).to_base(BTC_UNITS), Ok(7));
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "0.000000001 BTC", // finer than a satoshi
            "1.5 sat",
            "0.1 btc", // units are case-sensitive
            "0.1BTC",
            "0.1  BTC",
            ".5 BTC",
            "5. BTC",
            "-1 BTC",
            "1e3 sat",
            "1_000 sat",
            "0x10 sat",
            " 1 BTC",
            "1 BTC ",
            "10 ETH",
            "99999999999999999999999999999999999999999 BTC",
            "",
        ] {
            assert!(parse_amount(bad, BTC_UNITS).is_err(), "{bad:?}");
        }
    }
}
