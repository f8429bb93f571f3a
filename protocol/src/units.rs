//! Amounts written with a unit, as people write them in policies: `"0.1 BTC"`, `"250000 sat"`,
//! `"10 ETH"`, `"30 gwei"`. A plain integer stays the asset's base unit (satoshi, wei). Parsed
//! exactly, in integers (no floating point): `"0.1 BTC"` is 10 000 000 sat, and a number with
//! more decimals than its unit has (`"0.000000001 BTC"`) is refused rather than rounded.

use serde::Deserialize;

/// A unit of an asset: its name and how many decimals of the base unit it is. (`'a`: a token's
/// unit is named by its policy's token table.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unit<'a> {
    /// The name written after the number (case-sensitive).
    pub name: &'a str,
    /// 10^decimals base units make one of it.
    pub decimals: u8,
}

/// Bitcoin's units: the bitcoin and the satoshi (its base unit).
pub const BTC_UNITS: &[Unit<'static>] = &[
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
pub const ETH_UNITS: &[Unit<'static>] = &[
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
    pub fn to_base(&self, units: &[Unit<'_>]) -> Result<u128, String> {
        match self {
            Self::Base(n) => Ok(u128::from(*n)),
            Self::Text(text) => parse_amount(text, units),
        }
    }
}

/// `"<number> <unit>"` in base units: the number is digits with at most one `.`, and no more
/// decimals than the unit has.
pub fn parse_amount(text: &str, units: &[Unit<'_>]) -> Result<u128, String> {
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

/// `base` base units written in `unit`, exactly, without trailing zeros: `12.5 ETH`, `0 ETH`.
pub fn format_amount(base: u128, unit: &Unit<'_>) -> String {
    let scale = 10u128.checked_pow(u32::from(unit.decimals));
    let Some(scale) = scale else {
        return format!("{base} (base units of {})", unit.name);
    };
    let (whole, fraction) = (base / scale, base % scale);
    if fraction == 0 {
        return format!("{whole} {}", unit.name);
    }
    let digits = format!("{fraction:0width$}", width = usize::from(unit.decimals));
    format!("{whole}.{} {}", digits.trim_end_matches('0'), unit.name)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

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
    fn amounts_are_written_back_exactly() {
        let eth = &ETH_UNITS[0];
        assert_eq!(format_amount(12_500_000_000_000_000_000, eth), "12.5 ETH");
        assert_eq!(format_amount(1, eth), "0.000000000000000001 ETH");
        assert_eq!(format_amount(0, eth), "0 ETH");
        assert_eq!(
            format_amount(u128::MAX, &BTC_UNITS[1]),
            format!("{} sat", u128::MAX)
        );
        for text in ["10 ETH", "1.5 ETH", "0.000000001 ETH"] {
            let base = parse_amount(text, ETH_UNITS).unwrap();
            assert_eq!(format_amount(base, eth), text);
        }
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
