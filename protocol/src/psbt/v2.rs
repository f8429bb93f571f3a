//! BIP-370 (PSBT version 2) read by rewriting it as the equivalent BIP-174 version 0 PSBT.
//!
//! Version 2 moves the unsigned transaction into per-map fields: the globals carry
//! `PSBT_GLOBAL_TX_VERSION` (0x02), `PSBT_GLOBAL_FALLBACK_LOCKTIME` (0x03), the input and output
//! counts (0x04, 0x05) and `PSBT_GLOBAL_TX_MODIFIABLE` (0x06); each input its
//! `PREVIOUS_TXID` (0x0e), `OUTPUT_INDEX` (0x0f), `SEQUENCE` (0x10) and required locktimes
//! (0x11 time, 0x12 height); each output its `AMOUNT` (0x03) and `SCRIPT` (0x04). This module
//! rebuilds the transaction from them (BIP-370 "Determining Lock Time" for the locktime), drops
//! those fields and the version, and writes every other key-value pair unchanged into a
//! version-0 PSBT, which then goes through exactly the checks a version-0 PSBT does. Signing does
//! not depend on the version: the sighashes are those of the rebuilt transaction, which is the
//! transaction a BIP-370 extractor produces.

use crate::{ProtocolError, Result};

use super::{MAGIC, PSBT_GLOBAL_VERSION, read_compact_size, take};

const GLOBAL_UNSIGNED_TX: u8 = 0x00;
const GLOBAL_TX_VERSION: u8 = 0x02;
const GLOBAL_FALLBACK_LOCKTIME: u8 = 0x03;
const GLOBAL_INPUT_COUNT: u8 = 0x04;
const GLOBAL_OUTPUT_COUNT: u8 = 0x05;
const GLOBAL_TX_MODIFIABLE: u8 = 0x06;
const IN_PREVIOUS_TXID: u8 = 0x0e;
const IN_OUTPUT_INDEX: u8 = 0x0f;
const IN_SEQUENCE: u8 = 0x10;
const IN_REQUIRED_TIME_LOCKTIME: u8 = 0x11;
const IN_REQUIRED_HEIGHT_LOCKTIME: u8 = 0x12;
const OUT_AMOUNT: u8 = 0x03;
const OUT_SCRIPT: u8 = 0x04;

/// Locktimes at or above this are times (BIP-370: time locktimes are >= 500000000).
const LOCKTIME_THRESHOLD: u32 = 500_000_000;

type Pair<'a> = (&'a [u8], &'a [u8]);

fn v2_error(reason: impl Into<String>) -> ProtocolError {
    ProtocolError::Psbt {
        reason: format!("PSBT version 2: {}", reason.into()),
    }
}

/// One key-value map (up to its 0x00 separator); keys are unique within a map.
fn read_map<'a>(rest: &mut &'a [u8], what: &str) -> Result<Vec<Pair<'a>>> {
    let mut pairs: Vec<Pair<'a>> = Vec::new();
    loop {
        let key_len =
            read_compact_size(rest).ok_or_else(|| v2_error(format!("{what} is truncated")))?;
        if key_len == 0 {
            return Ok(pairs);
        }
        let key = take(rest, key_len).ok_or_else(|| v2_error(format!("{what} is truncated")))?;
        let value_len =
            read_compact_size(rest).ok_or_else(|| v2_error(format!("{what} is truncated")))?;
        let value =
            take(rest, value_len).ok_or_else(|| v2_error(format!("{what} is truncated")))?;
        if pairs.iter().any(|(k, _)| *k == key) {
            return Err(v2_error(format!("{what} repeats a key")));
        }
        pairs.push((key, value));
    }
}

/// The value of the key that is exactly `[key_type]` (a field without key data).
fn field<'a>(pairs: &[Pair<'a>], key_type: u8) -> Option<&'a [u8]> {
    pairs
        .iter()
        .find(|(k, _)| *k == [key_type])
        .map(|(_, v)| *v)
}

fn u32_field(pairs: &[Pair<'_>], key_type: u8, what: &str) -> Result<Option<u32>> {
    field(pairs, key_type)
        .map(|v| {
            <[u8; 4]>::try_from(v)
                .map(u32::from_le_bytes)
                .map_err(|_| v2_error(format!("{what} is {} bytes, expected 4", v.len())))
        })
        .transpose()
}

fn count(pairs: &[Pair<'_>], key_type: u8, what: &str, bound: usize) -> Result<usize> {
    let mut value = field(pairs, key_type).ok_or_else(|| v2_error(format!("no {what}")))?;
    let n = read_compact_size(&mut value)
        .filter(|_| value.is_empty())
        .ok_or_else(|| v2_error(format!("{what} is not a compact size")))?;
    // Every map takes at least its separator byte: a larger count cannot be honest.
    if n > bound {
        return Err(v2_error(format!(
            "{what} {n} exceeds what the PSBT can hold"
        )));
    }
    Ok(n)
}

fn write_compact_size(out: &mut Vec<u8>, n: usize) {
    let n = n as u64;
    match n {
        0..=0xfc => out.push(n as u8),
        0xfd..=0xffff => {
            out.push(0xfd);
            out.extend_from_slice(&(n as u16).to_le_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(0xfe);
            out.extend_from_slice(&(n as u32).to_le_bytes());
        }
        _ => {
            out.push(0xff);
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
}

fn write_pair(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    write_compact_size(out, key.len());
    out.extend_from_slice(key);
    write_compact_size(out, value.len());
    out.extend_from_slice(value);
}

/// Writes `pairs` but those whose key is exactly one of `dropped`, then the separator.
fn write_map(out: &mut Vec<u8>, pairs: &[Pair<'_>], dropped: &[u8]) {
    for (key, value) in pairs {
        let is_dropped = matches!(key, [t] if dropped.contains(t));
        if !is_dropped {
            write_pair(out, key, value);
        }
    }
    out.push(0);
}

/// BIP-370 "Determining Lock Time": the fallback (or 0) when no input requires one; otherwise
/// the maximum of the required kind — time only if some input accepts nothing but time, height
/// when every requiring input accepts height.
fn locktime(fallback: Option<u32>, inputs: &[(Option<u32>, Option<u32>)]) -> Result<u32> {
    let requiring: Vec<&(Option<u32>, Option<u32>)> = inputs
        .iter()
        .filter(|(t, h)| t.is_some() || h.is_some())
        .collect();
    if requiring.is_empty() {
        return Ok(fallback.unwrap_or(0));
    }
    let all_height = requiring.iter().all(|(_, h)| h.is_some());
    let all_time = requiring.iter().all(|(t, _)| t.is_some());
    if all_height {
        Ok(requiring.iter().filter_map(|(_, h)| *h).max().unwrap_or(0))
    } else if all_time {
        Ok(requiring.iter().filter_map(|(t, _)| *t).max().unwrap_or(0))
    } else {
        Err(v2_error(
            "inputs require a time locktime and others a height locktime: no locktime satisfies both",
        ))
    }
}

/// The unsigned transaction the version-2 maps describe, in the legacy serialization (no
/// witness yet), its locktime determined as BIP-370 says.
fn unsigned_tx(
    tx_version: u32,
    fallback: Option<u32>,
    inputs: &[Vec<Pair<'_>>],
    outputs: &[Vec<Pair<'_>>],
) -> Result<Vec<u8>> {
    let mut tx = tx_version.to_le_bytes().to_vec();
    write_compact_size(&mut tx, inputs.len());
    let mut required = Vec::new();
    for (i, map) in inputs.iter().enumerate() {
        let txid = field(map, IN_PREVIOUS_TXID)
            .filter(|v| v.len() == 32)
            .ok_or_else(|| v2_error(format!("input {i}: no 32-byte PREVIOUS_TXID")))?;
        let vout = u32_field(map, IN_OUTPUT_INDEX, "OUTPUT_INDEX")?
            .ok_or_else(|| v2_error(format!("input {i}: no OUTPUT_INDEX")))?;
        let sequence = u32_field(map, IN_SEQUENCE, "SEQUENCE")?.unwrap_or(u32::MAX);
        let time = u32_field(map, IN_REQUIRED_TIME_LOCKTIME, "REQUIRED_TIME_LOCKTIME")?;
        let height = u32_field(map, IN_REQUIRED_HEIGHT_LOCKTIME, "REQUIRED_HEIGHT_LOCKTIME")?;
        if time.is_some_and(|t| t < LOCKTIME_THRESHOLD)
            || height.is_some_and(|h| h == 0 || h >= LOCKTIME_THRESHOLD)
        {
            return Err(v2_error(format!(
                "input {i}: a required locktime out of its range"
            )));
        }
        required.push((time, height));
        tx.extend_from_slice(txid);
        tx.extend_from_slice(&vout.to_le_bytes());
        tx.push(0); // empty scriptSig
        tx.extend_from_slice(&sequence.to_le_bytes());
    }
    write_compact_size(&mut tx, outputs.len());
    for (i, map) in outputs.iter().enumerate() {
        let amount = field(map, OUT_AMOUNT)
            .filter(|v| v.len() == 8)
            .ok_or_else(|| v2_error(format!("output {i}: no 8-byte AMOUNT")))?;
        let script =
            field(map, OUT_SCRIPT).ok_or_else(|| v2_error(format!("output {i}: no SCRIPT")))?;
        tx.extend_from_slice(amount);
        write_compact_size(&mut tx, script.len());
        tx.extend_from_slice(script);
    }
    tx.extend_from_slice(&locktime(fallback, &required)?.to_le_bytes());
    Ok(tx)
}

/// Rewrites a version-2 PSBT as version 0 (see the module docs).
pub(super) fn to_v0(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut rest = bytes
        .get(MAGIC.len()..)
        .ok_or_else(|| v2_error("truncated"))?;
    let bound = rest.len();
    let globals = read_map(&mut rest, "the global map")?;
    if field(&globals, GLOBAL_UNSIGNED_TX).is_some() {
        return Err(v2_error(
            "it carries an unsigned transaction, which version 2 forbids",
        ));
    }
    let tx_version = u32_field(&globals, GLOBAL_TX_VERSION, "TX_VERSION")?
        .ok_or_else(|| v2_error("no TX_VERSION"))?;
    if tx_version < 2 {
        return Err(v2_error(format!("TX_VERSION {tx_version}, at least 2")));
    }
    let fallback = u32_field(&globals, GLOBAL_FALLBACK_LOCKTIME, "FALLBACK_LOCKTIME")?;
    let n_inputs = count(&globals, GLOBAL_INPUT_COUNT, "INPUT_COUNT", bound)?;
    let n_outputs = count(&globals, GLOBAL_OUTPUT_COUNT, "OUTPUT_COUNT", bound)?;

    let mut inputs = Vec::new();
    for i in 0..n_inputs {
        inputs.push(read_map(&mut rest, &format!("input map {i}"))?);
    }
    let mut outputs = Vec::new();
    for i in 0..n_outputs {
        outputs.push(read_map(&mut rest, &format!("output map {i}"))?);
    }
    if !rest.is_empty() {
        return Err(v2_error(format!("{} bytes after the last map", rest.len())));
    }

    let tx = unsigned_tx(tx_version, fallback, &inputs, &outputs)?;

    let mut out = MAGIC.to_vec();
    write_pair(&mut out, &[GLOBAL_UNSIGNED_TX], &tx);
    write_map(
        &mut out,
        &globals,
        &[
            GLOBAL_TX_VERSION,
            GLOBAL_FALLBACK_LOCKTIME,
            GLOBAL_INPUT_COUNT,
            GLOBAL_OUTPUT_COUNT,
            GLOBAL_TX_MODIFIABLE,
            PSBT_GLOBAL_VERSION,
        ],
    );
    for map in &inputs {
        write_map(
            &mut out,
            map,
            &[
                IN_PREVIOUS_TXID,
                IN_OUTPUT_INDEX,
                IN_SEQUENCE,
                IN_REQUIRED_TIME_LOCKTIME,
                IN_REQUIRED_HEIGHT_LOCKTIME,
            ],
        );
    }
    for map in &outputs {
        write_map(&mut out, map, &[OUT_AMOUNT, OUT_SCRIPT]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn locktime_follows_bip370() {
        assert_eq!(locktime(None, &[(None, None)]).unwrap(), 0);
        assert_eq!(locktime(Some(7), &[(None, None)]).unwrap(), 7);
        let t = LOCKTIME_THRESHOLD + 10;
        assert_eq!(
            locktime(Some(7), &[(Some(t), None), (None, None)]).unwrap(),
            t
        );
        assert_eq!(
            locktime(None, &[(None, Some(100)), (Some(t), Some(50))]).unwrap(),
            100
        );
        assert_eq!(
            locktime(None, &[(Some(t), None), (Some(t + 1), Some(9))]).unwrap(),
            t + 1
        );
        assert!(locktime(None, &[(Some(t), None), (None, Some(9))]).is_err());
    }

    #[test]
    fn compact_sizes_round_trip() {
        for n in [
            0usize,
            1,
            0xfc,
            0xfd,
            0xffff,
            0x1_0000,
            0xffff_ffff,
            0x1_0000_0000,
        ] {
            let mut out = Vec::new();
            write_compact_size(&mut out, n);
            let mut r = out.as_slice();
            assert_eq!(read_compact_size(&mut r), Some(n));
            assert!(r.is_empty());
        }
    }
}
