//! Bitcoin PSBTs spending the wallet's own Taproot output, read without trusting their labels.
//!
//! The wallet's own script is P2TR with the FROST group key as the *output key* Q (the DKG output
//! is already BIP-341 tweaked): `OP_1 <Q>`. A PSBT is accepted only if every input spends exactly
//! that script through its `witness_utxo` and asks for `SIGHASH_DEFAULT`; then [`analyze`] computes
//! each input's BIP-341 key-path sighash itself and derives what leaves the wallet:
//!
//! * `change` = the sum of the outputs whose script is byte for byte the wallet's own script. The
//!   PSBT's BIP-32/BIP-371 labels (`bip32_derivation`, `tap_internal_key`, `tap_key_origins`) are
//!   never read for this: an output labelled "ours" that pays another script is value leaving.
//! * `value_leaving` = inputs − change (the fee included), `destinations` = every other output.
//!
//! The amounts come from the `witness_utxo`s, which a PSBT could lie about; BIP-341 sighashes commit
//! to every spent output's amount and script (`Prevouts::All`), so a signature over a lie is
//! invalid on chain: the amounts shown are the amounts spent, or nothing is spent.
//!
//! [`finalize`] takes one 64-byte BIP-340 signature per input, checks each against Q and that
//! input's sighash, finalizes the inputs per BIP-174 and extracts the transaction.
//!
//! Versions: BIP-174 version 0 is read by `bitcoin` 0.32. BIP-370 version 2 is rewritten into the
//! equivalent version 0 by [`v2`] (the one crate reading version 2 on top of `bitcoin`, `psbt-v2`
//! 0.3, is experimental and ships no conversion), then checked like any version 0. Other versions
//! are refused with [`ProtocolError::PsbtVersion`].

use bitcoin::consensus::encode;
use bitcoin::hashes::Hash;
use bitcoin::key::TweakedPublicKey;
use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::{Message, Secp256k1, XOnlyPublicKey, schnorr};
use bitcoin::sighash::{Prevouts, SighashCache, TapSighashType};
use bitcoin::{Address, Amount, FeeRate, OutPoint, ScriptBuf, Transaction, TxOut, Witness};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

use crate::{ProtocolError, Result};

pub use bitcoin::Network;

/// Largest binary PSBT read (1 MiB); a file may be a third larger as base64.
pub const MAX_PSBT: usize = 1024 * 1024;

/// Largest PSBT file read: base64 of [`MAX_PSBT`] bytes plus line breaks.
pub const MAX_PSBT_FILE: usize = MAX_PSBT / 3 * 4 + MAX_PSBT / 16 + 64;

/// BIP-174 magic: `psbt` then the separator 0xff.
const MAGIC: &[u8; 5] = b"psbt\xff";

/// BIP-174 global key type of the version number.
const PSBT_GLOBAL_VERSION: u8 = 0xfb;

/// One output that does not pay the wallet's own script.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    /// The address for the network, or `script:<hex>` when the script has no address (OP_RETURN,
    /// non-standard scripts).
    pub address: String,
    /// Satoshis paid to it.
    pub amount: u64,
}

/// What a PSBT does, as the wallet computes it (not as the PSBT labels it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendSummary {
    /// BIP-341 key-path sighash of each input (SIGHASH_DEFAULT, all prevouts), in input order.
    pub sighashes: Vec<[u8; 32]>,
    /// Sum of the inputs' `witness_utxo` values.
    pub input_total: u64,
    /// `input_total` minus the outputs paying the wallet's own script: destinations plus fee.
    pub value_leaving: u64,
    /// `input_total` minus every output.
    pub fee: u64,
    /// Sum of the outputs paying the wallet's own script.
    pub change: u64,
    /// Outputs not paying the wallet's own script, in output order.
    pub destinations: Vec<Destination>,
    /// Txid of the transaction (segwit: the same before and after signing).
    pub txid: String,
}

/// Reads a PSBT file: base64 text (whitespace and line breaks ignored) or binary starting with
/// `psbt\xff`. Returns the binary PSBT, at most [`MAX_PSBT`] bytes. Does not parse it further.
pub fn decode_psbt_file(contents: &[u8]) -> Result<Vec<u8>> {
    if contents.len() > MAX_PSBT_FILE {
        return Err(psbt_error(format!(
            "file of {} bytes exceeds the {MAX_PSBT_FILE}-byte limit",
            contents.len()
        )));
    }
    if contents.starts_with(MAGIC) {
        check_size(contents.len())?;
        return Ok(contents.to_vec());
    }
    let text: Vec<u8> = contents
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if text.is_empty() {
        return Err(psbt_error("empty file"));
    }
    use bitcoin::base64::Engine as _;
    let bytes = bitcoin::base64::engine::general_purpose::STANDARD
        .decode(&text)
        .map_err(|e| psbt_error(format!("neither a binary PSBT nor base64 text ({e})")))?;
    if !bytes.starts_with(MAGIC) {
        return Err(psbt_error(
            "base64 text does not decode to a PSBT (no psbt magic)",
        ));
    }
    check_size(bytes.len())?;
    Ok(bytes)
}

/// Parses a binary PSBT, checks that it spends only the wallet's own script (output key
/// `output_key`, x-only) with SIGHASH_DEFAULT, and computes what it does. Addresses are rendered
/// for `network`.
pub fn analyze(psbt: &[u8], output_key: &[u8; 32], network: Network) -> Result<SpendSummary> {
    let psbt = parse(psbt)?;
    let key = output_key_from_bytes(output_key)?;
    let checked = check(&psbt, &key)?;
    let destinations = psbt
        .unsigned_tx
        .output
        .iter()
        .filter(|out| out.script_pubkey != checked.own_script)
        .map(|out| Destination {
            address: render_script(&out.script_pubkey, network),
            amount: out.value.to_sat(),
        })
        .collect();
    Ok(SpendSummary {
        sighashes: checked.sighashes,
        input_total: checked.input_total,
        value_leaving: checked.value_leaving,
        fee: checked.fee,
        change: checked.change,
        destinations,
        txid: psbt.unsigned_tx.compute_txid().to_string(),
    })
}

/// Finalizes a PSBT with one 64-byte BIP-340 signature per input (in input order) and extracts
/// the signed transaction: returns its txid and its consensus encoding.
///
/// Runs every check of [`analyze`] again, then verifies each signature against the output key
/// and that input's sighash, naming the first input whose signature does not verify. Each input
/// gets `final_script_witness = [signature]` (64 bytes: SIGHASH_DEFAULT appends no type byte) and,
/// per BIP-174's finalizer, loses every other field but its UTXOs and unknown/proprietary pairs.
pub fn finalize(
    psbt: &[u8],
    output_key: &[u8; 32],
    signatures: &[[u8; 64]],
) -> Result<(String, Vec<u8>)> {
    let mut psbt = parse(psbt)?;
    let key = output_key_from_bytes(output_key)?;
    let checked = check(&psbt, &key)?;
    if signatures.len() != checked.sighashes.len() {
        return Err(psbt_error(format!(
            "{} signatures for {} inputs",
            signatures.len(),
            checked.sighashes.len()
        )));
    }
    let secp = Secp256k1::verification_only();
    for (index, ((input, signature), sighash)) in psbt
        .inputs
        .iter_mut()
        .zip(signatures)
        .zip(&checked.sighashes)
        .enumerate()
    {
        let sig =
            schnorr::Signature::from_slice(signature).map_err(|_| ProtocolError::PsbtInput {
                index,
                reason: "not a BIP-340 signature".into(),
            })?;
        secp.verify_schnorr(&sig, &Message::from_digest(*sighash), &key)
            .map_err(|_| ProtocolError::PsbtInput {
                index,
                reason: "the BIP-340 signature does not verify under the wallet's output key for \
                         this input's sighash"
                    .into(),
            })?;
        finalize_input(input, signature);
    }
    let txid = psbt.unsigned_tx.compute_txid();
    let tx = psbt
        .extract_tx()
        .map_err(|e| psbt_error(format!("extracting the transaction: {e}")))?;
    if tx.compute_txid() != txid {
        return Err(psbt_error("the extracted transaction changed its txid"));
    }
    Ok((txid.to_string(), encode::serialize(&tx)))
}

/// The PSBT with one 64-byte BIP-340 signature per input (in input order) recorded as each
/// input's `PSBT_IN_TAP_KEY_SIG` (BIP-371), not finalized: what wallet software combines and
/// finalizes itself (`combinepsbt`/`finalizepsbt`, BDK). Binary, BIP-174 version 0 (a version 2
/// input comes back as its version 0 equivalent).
///
/// Runs every check of [`finalize`] first: the same PSBT rules, and each signature verified
/// against the output key and its input's sighash.
pub fn with_key_sigs(
    psbt: &[u8],
    output_key: &[u8; 32],
    signatures: &[[u8; 64]],
) -> Result<Vec<u8>> {
    finalize(psbt, output_key, signatures)?;
    let mut psbt = parse(psbt)?;
    for (input, signature) in psbt.inputs.iter_mut().zip(signatures) {
        let signature = schnorr::Signature::from_slice(signature)
            .map_err(|_| psbt_error("not a BIP-340 signature"))?;
        input.tap_key_sig = Some(bitcoin::taproot::Signature {
            signature,
            sighash_type: TapSighashType::Default,
        });
    }
    Ok(psbt.serialize())
}

/// A binary PSBT as base64 text (BIP-174's text form, what wallets exchange).
pub fn to_base64(psbt: &[u8]) -> String {
    use bitcoin::base64::Engine as _;
    bitcoin::base64::engine::general_purpose::STANDARD.encode(psbt)
}

/// The network of a name: `bitcoin`/`mainnet`, `testnet`, `testnet4`, `signet`, `regtest`.
pub fn network_from_name(name: &str) -> Result<Network> {
    match name.to_ascii_lowercase().as_str() {
        "bitcoin" | "mainnet" => Ok(Network::Bitcoin),
        "testnet" => Ok(Network::Testnet),
        "testnet4" => Ok(Network::Testnet4),
        "signet" => Ok(Network::Signet),
        "regtest" => Ok(Network::Regtest),
        _ => Err(ProtocolError::UnknownNetwork { name: name.into() }),
    }
}

/// The wallet's own script for an output key: P2TR paying Q directly (no further tweak).
pub fn own_script(output_key: &[u8; 32]) -> Result<Vec<u8>> {
    Ok(own_script_for(&output_key_from_bytes(output_key)?).into_bytes())
}

/// What [`check`] found out about a PSBT that passed.
struct Checked {
    own_script: ScriptBuf,
    sighashes: Vec<[u8; 32]>,
    input_total: u64,
    value_leaving: u64,
    fee: u64,
    change: u64,
}

fn psbt_error(reason: impl Into<String>) -> ProtocolError {
    ProtocolError::Psbt {
        reason: reason.into(),
    }
}

fn value_error(reason: impl Into<String>) -> ProtocolError {
    ProtocolError::PsbtValue {
        reason: reason.into(),
    }
}

fn check_size(len: usize) -> Result<()> {
    if len > MAX_PSBT {
        return Err(psbt_error(format!(
            "PSBT of {len} bytes exceeds the {MAX_PSBT}-byte limit"
        )));
    }
    Ok(())
}

fn output_key_from_bytes(output_key: &[u8; 32]) -> Result<XOnlyPublicKey> {
    XOnlyPublicKey::from_slice(output_key)
        .map_err(|_| ProtocolError::encoding("output key is not an x-only secp256k1 point"))
}

fn own_script_for(key: &XOnlyPublicKey) -> ScriptBuf {
    ScriptBuf::new_p2tr_tweaked(TweakedPublicKey::dangerous_assume_tweaked(*key))
}

fn render_script(script: &ScriptBuf, network: Network) -> String {
    match Address::from_script(script, network) {
        Ok(address) => address.to_string(),
        Err(_) => format!("script:{}", hex::encode(script.as_bytes())),
    }
}

/// Binary PSBT -> `Psbt`: bounded, version 0 only, no trailing bytes.
fn parse(bytes: &[u8]) -> Result<Psbt> {
    check_size(bytes.len())?;
    if !bytes.starts_with(MAGIC) {
        return Err(psbt_error("not a binary PSBT (no psbt magic)"));
    }
    // bitcoin 0.32 reads version 0 only: a version 2 is rewritten as the equivalent version 0
    // (`v2`); any other version is named.
    let converted;
    let bytes = match declared_version(bytes) {
        Some(2) => {
            converted = v2::to_v0(bytes)?;
            converted.as_slice()
        }
        Some(version) if version != 0 => return Err(ProtocolError::PsbtVersion { version }),
        _ => bytes,
    };
    let mut reader = bytes;
    let psbt = Psbt::deserialize_from_reader(&mut reader).map_err(|e| psbt_error(e.to_string()))?;
    if !reader.is_empty() {
        return Err(psbt_error(format!(
            "{} bytes after the end of the PSBT",
            reader.len()
        )));
    }
    if psbt.version != 0 {
        return Err(ProtocolError::PsbtVersion {
            version: psbt.version,
        });
    }
    if psbt.inputs.len() != psbt.unsigned_tx.input.len()
        || psbt.outputs.len() != psbt.unsigned_tx.output.len()
    {
        return Err(psbt_error(
            "maps do not match the transaction's inputs and outputs",
        ));
    }
    Ok(psbt)
}

/// The version in a PSBT's global map (`PSBT_GLOBAL_VERSION`), if the map can be walked and has
/// one; 0 if it has none. `None` when the bytes are malformed (the full parser then says why).
fn declared_version(bytes: &[u8]) -> Option<u32> {
    let mut rest = bytes.get(MAGIC.len()..)?;
    loop {
        let key_len = read_compact_size(&mut rest)?;
        if key_len == 0 {
            return Some(0);
        }
        let key = take(&mut rest, key_len)?;
        let value_len = read_compact_size(&mut rest)?;
        let value = take(&mut rest, value_len)?;
        if key == [PSBT_GLOBAL_VERSION] {
            let value: [u8; 4] = value.try_into().ok()?;
            return Some(u32::from_le_bytes(value));
        }
    }
}

fn take<'a>(rest: &mut &'a [u8], len: usize) -> Option<&'a [u8]> {
    let (head, tail) = rest.split_at_checked(len)?;
    *rest = tail;
    Some(head)
}

fn read_compact_size(rest: &mut &[u8]) -> Option<usize> {
    let (&first, tail) = rest.split_first()?;
    *rest = tail;
    let value = match first {
        0xfd => u64::from(u16::from_le_bytes(take(rest, 2)?.try_into().ok()?)),
        0xfe => u64::from(u32::from_le_bytes(take(rest, 4)?.try_into().ok()?)),
        0xff => u64::from_le_bytes(take(rest, 8)?.try_into().ok()?),
        small => u64::from(small),
    };
    usize::try_from(value).ok()
}

/// Every rule a PSBT must pass before anything is computed from it or signed for it.
fn check(psbt: &Psbt, key: &XOnlyPublicKey) -> Result<Checked> {
    let tx = &psbt.unsigned_tx;
    if tx.input.is_empty() {
        return Err(psbt_error("the transaction has no inputs"));
    }
    if tx.output.is_empty() {
        return Err(psbt_error("the transaction has no outputs"));
    }
    let own_script = own_script_for(key);
    let mut prevouts: Vec<TxOut> = Vec::with_capacity(tx.input.len());
    let mut spent: BTreeSet<OutPoint> = BTreeSet::new();
    let mut input_total: u64 = 0;
    for (index, (txin, input)) in tx.input.iter().zip(&psbt.inputs).enumerate() {
        let refuse = |reason: String| ProtocolError::PsbtInput { index, reason };
        if !spent.insert(txin.previous_output) {
            return Err(refuse(format!(
                "spends {} a second time",
                txin.previous_output
            )));
        }
        let utxo = check_input(index, txin, input, &own_script)?;
        let value = checked_amount(utxo.value, || format!("input {index}"))?;
        input_total = input_total
            .checked_add(value)
            .ok_or_else(|| value_error("the inputs' values overflow"))?;
        prevouts.push(utxo.clone());
    }
    let mut output_total: u64 = 0;
    let mut change: u64 = 0;
    for (index, out) in tx.output.iter().enumerate() {
        let value = checked_amount(out.value, || format!("output {index}"))?;
        output_total = output_total
            .checked_add(value)
            .ok_or_else(|| value_error("the outputs' values overflow"))?;
        if out.script_pubkey == own_script {
            change = change
                .checked_add(value)
                .ok_or_else(|| value_error("the change outputs' values overflow"))?;
        }
    }
    if input_total > Amount::MAX_MONEY.to_sat() || output_total > Amount::MAX_MONEY.to_sat() {
        return Err(value_error("the total exceeds 21 million bitcoin"));
    }
    let fee = input_total.checked_sub(output_total).ok_or_else(|| {
        value_error(format!(
            "the outputs ({output_total} sat) exceed the inputs ({input_total} sat)"
        ))
    })?;
    let value_leaving = input_total
        .checked_sub(change)
        .ok_or_else(|| value_error("the change exceeds the inputs"))?;
    check_fee_rate(tx, fee)?;

    let sighashes = key_spend_sighashes(tx, &prevouts)?;
    Ok(Checked {
        own_script,
        sighashes,
        input_total,
        value_leaving,
        fee,
        change,
    })
}

/// Input `index`'s own rules: a witness UTXO paying the wallet's own P2TR script, the default
/// sighash type only, and a `non_witness_utxo` (if any) that agrees with both. Returns the UTXO.
fn check_input<'a>(
    index: usize,
    txin: &bitcoin::TxIn,
    input: &'a bitcoin::psbt::Input,
    own_script: &ScriptBuf,
) -> Result<&'a TxOut> {
    let refuse = |reason: String| ProtocolError::PsbtInput { index, reason };
    let utxo = input
        .witness_utxo
        .as_ref()
        .ok_or_else(|| refuse("no witness_utxo (BIP-371 key-path inputs need one)".into()))?;
    if utxo.script_pubkey != *own_script {
        return Err(refuse(format!(
            "spends script {}, not the wallet's own P2TR script",
            hex::encode(utxo.script_pubkey.as_bytes())
        )));
    }
    if let Some(sighash_type) = input.sighash_type {
        let requested = sighash_type.to_u32();
        if requested != TapSighashType::Default as u32 {
            return Err(refuse(format!(
                "requests sighash type {requested:#04x}; only SIGHASH_DEFAULT (0x00) is signed"
            )));
        }
    }
    if let Some(previous) = &input.non_witness_utxo {
        let vout = usize::try_from(txin.previous_output.vout).ok();
        let matches = previous.compute_txid() == txin.previous_output.txid
            && vout.and_then(|v| previous.output.get(v)) == Some(utxo);
        if !matches {
            return Err(refuse(
                "non_witness_utxo disagrees with the outpoint or witness_utxo".into(),
            ));
        }
    }
    Ok(utxo)
}

/// The BIP-341 key-path sighash (`SIGHASH_DEFAULT`) of every input, over all the `prevouts`.
fn key_spend_sighashes(tx: &Transaction, prevouts: &[TxOut]) -> Result<Vec<[u8; 32]>> {
    let mut cache = SighashCache::new(tx);
    let all = Prevouts::All(prevouts);
    let mut sighashes = Vec::with_capacity(prevouts.len());
    for index in 0..prevouts.len() {
        let sighash = cache
            .taproot_key_spend_signature_hash(index, &all, TapSighashType::Default)
            .map_err(|e| ProtocolError::PsbtInput {
                index,
                reason: format!("sighash: {e}"),
            })?;
        sighashes.push(sighash.to_byte_array());
    }
    Ok(sighashes)
}

fn checked_amount(amount: Amount, what: impl Fn() -> String) -> Result<u64> {
    if amount > Amount::MAX_MONEY {
        return Err(value_error(format!(
            "{} carries {} sat, more than 21 million bitcoin",
            what(),
            amount.to_sat()
        )));
    }
    Ok(amount.to_sat())
}

/// Refuses what `Psbt::extract_tx` would refuse after signing (a fee rate above 25 000 sat/vB,
/// surely a mistake), before anyone is asked to approve or sign. The signed weight is exact: every
/// input gets one 64-byte witness element.
fn check_fee_rate(tx: &Transaction, fee: u64) -> Result<()> {
    let mut signed = tx.clone();
    for txin in &mut signed.input {
        txin.witness = Witness::from_slice(&[[0u8; 64]]);
        txin.script_sig = ScriptBuf::new();
    }
    let weight = signed.weight().to_wu().max(1);
    let rate = FeeRate::from_sat_per_kwu(fee.saturating_mul(1000) / weight);
    if rate > Psbt::DEFAULT_MAX_FEE_RATE {
        return Err(value_error(format!(
            "fee of {fee} sat is {} sat/vB, above the {} sat/vB sanity limit",
            rate.to_sat_per_vb_floor(),
            Psbt::DEFAULT_MAX_FEE_RATE.to_sat_per_vb_floor()
        )));
    }
    Ok(())
}

/// BIP-174 input finalizer for a key-path spend: the final witness, then only the UTXOs and the
/// unknown/proprietary pairs stay.
fn finalize_input(input: &mut bitcoin::psbt::Input, signature: &[u8; 64]) {
    input.final_script_witness = Some(Witness::from_slice(&[signature]));
    input.final_script_sig = None;
    input.partial_sigs.clear();
    input.sighash_type = None;
    input.redeem_script = None;
    input.witness_script = None;
    input.bip32_derivation.clear();
    input.ripemd160_preimages.clear();
    input.sha256_preimages.clear();
    input.hash160_preimages.clear();
    input.hash256_preimages.clear();
    input.tap_key_sig = None;
    input.tap_script_sigs.clear();
    input.tap_scripts.clear();
    input.tap_key_origins.clear();
    input.tap_internal_key = None;
    input.tap_merkle_root = None;
}

#[cfg(test)]
mod tests;
mod v2;
