//! Bitcoin PSBTs spending the wallet's Taproot outputs, read without trusting their labels.
//!
//! The wallet's own script is P2TR with the FROST group key as the *output key* Q (the DKG output
//! is already BIP-341 tweaked): `OP_1 <Q>`, its first address. Its other addresses are the
//! children of its extended key (`crate::hd`, `m/0/i` receive and `m/1/i` change), each P2TR with
//! the child's BIP-86 output key. [`OwnKeys`] holds both. A PSBT is accepted only if every input
//! spends one of these scripts through its `witness_utxo` and asks for `SIGHASH_DEFAULT`; then
//! [`analyze`] computes each input's BIP-341 key-path sighash itself and derives what leaves the
//! wallet:
//!
//! * An input's key is found from its script: the wallet's own script, or a child that the
//!   input's `PSBT_IN_TAP_BIP32_DERIVATION` names (with the wallet's fingerprint) *and* whose
//!   derived script is byte for byte the input's, or one of the first [`SCAN_WINDOW`] children of
//!   each keychain whose script it is. A label is a hint that is checked, never believed.
//! * `change` = the sum of the outputs paying the wallet's own script, or a child that the
//!   output's `PSBT_OUT_TAP_BIP32_DERIVATION` names and whose derived script is the output's (as
//!   hardware wallets recognise change: by derivation, checked against the script). An output
//!   labelled "ours" that pays another script is value leaving.
//! * `value_leaving` = inputs − change (the fee included), `destinations` = every other output.
//!
//! The amounts come from the `witness_utxo`s, which a PSBT could lie about; BIP-341 sighashes commit
//! to every spent output's amount and script (`Prevouts::All`), so a signature over a lie is
//! invalid on chain: the amounts shown are the amounts spent, or nothing is spent.
//!
//! [`finalize`] takes one 64-byte BIP-340 signature per input, checks each against that input's
//! output key and sighash, finalizes the inputs per BIP-174 and extracts the transaction.
//!
//! Versions: BIP-174 version 0 is read by `bitcoin` 0.32. BIP-370 version 2 is rewritten into the
//! equivalent version 0 by [`v2`] (the one crate reading version 2 on top of `bitcoin`, `psbt-v2`
//! 0.3, is experimental and ships no conversion), then checked like any version 0. Other versions
//! are refused with [`ProtocolError::PsbtVersion`].

use bitcoin::bip32::KeySource;
use bitcoin::consensus::encode;
use bitcoin::hashes::Hash;
use bitcoin::key::{TapTweak, TweakedPublicKey};
use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::{Message, Secp256k1, XOnlyPublicKey, schnorr};
use bitcoin::sighash::{Prevouts, SighashCache, TapSighashType};
use bitcoin::{Address, Amount, FeeRate, OutPoint, ScriptBuf, Transaction, TxOut, Witness};
use serde::{Deserialize, Serialize};
use std::cell::{Cell, OnceCell};
use std::collections::{BTreeMap, BTreeSet};

use crate::hd::{ChildPath, Keychain, WalletXpub};
use crate::wire::WalletId;
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

/// How many children of each keychain an input without a (valid) BIP-32 derivation is matched
/// against by script: BDK's default lookahead is 25, Bitcoin Core's and BDK's PSBTs carry the
/// derivation anyway. Bounded so that an input that pays a stranger costs at most this many
/// derivations, once per PSBT.
pub const SCAN_WINDOW: u32 = 100;

/// Most BIP-32 derivations with the wallet's fingerprint tried for one input or output: a key
/// path spends one key.
const MAX_ORIGINS: usize = 4;

/// Most inputs a PSBT may have: each is a FROST session in the enclave (and a derivation at most).
/// Refused before anything is derived.
pub const MAX_INPUTS: usize = 256;

/// Most outputs a PSBT may have (refused before anything is derived).
pub const MAX_OUTPUTS: usize = 1024;

/// Most children derived to check labels in one PSBT's reading (each about 0.1 ms): a label is
/// first checked for free against the script (its key's BIP-86 output key), so honest PSBTs, one
/// derivation per input and change output, stay far below it; a PSBT of labels crafted to pass
/// that check and fail the derivation costs at most this many.
const MAX_LABEL_DERIVATIONS: u32 = 2 * (MAX_INPUTS as u32) + 64;

/// Highest index of a child whose output counts as change: an output to a child beyond it counts
/// as leaving, so that value kept by the wallet is always where the owner's recovery finds it
/// (scanning this many children of each keychain), never parked at an index only the spender knew.
pub const MAX_CHANGE_INDEX: u32 = 10_000;

/// The wallet's keys a PSBT may spend and pay: its own output key (its first address) and, when
/// its extended key is known, the children of that key (`crate::hd`).
#[derive(Debug)]
pub struct OwnKeys {
    root: XOnlyPublicKey,
    xpub: Option<WalletXpub>,
    /// The scripts of the first [`SCAN_WINDOW`] children of each keychain, derived at first need.
    scanned: OnceCell<BTreeMap<ScriptBuf, ChildPath>>,
    /// Label derivations left for the reading under way ([`MAX_LABEL_DERIVATIONS`], reset by
    /// each `check`).
    budget: Cell<u32>,
}

impl OwnKeys {
    /// The keys of wallet `wallet_id` with group key `group_key` (compressed SEC1): its own
    /// output key (the x-only group key) and its children.
    ///
    /// Errors ([`ProtocolError::Params`]): a group key that is not a compressed point.
    pub fn of_wallet(wallet_id: &WalletId, group_key: &[u8]) -> Result<Self> {
        let xpub = WalletXpub::new(wallet_id, group_key, false)?;
        let root = group_key
            .get(1..)
            .and_then(|x| XOnlyPublicKey::from_slice(x).ok())
            .ok_or_else(|| ProtocolError::encoding("group key is not a secp256k1 point"))?;
        Ok(Self {
            root,
            xpub: Some(xpub),
            scanned: OnceCell::new(),
            budget: Cell::new(MAX_LABEL_DERIVATIONS),
        })
    }

    /// Only the output key `output_key` (x-only), no children: a wallet whose extended key is
    /// not known to the caller.
    pub fn root_only(output_key: &[u8; 32]) -> Result<Self> {
        Ok(Self {
            root: output_key_from_bytes(output_key)?,
            xpub: None,
            scanned: OnceCell::new(),
            budget: Cell::new(MAX_LABEL_DERIVATIONS),
        })
    }

    /// The output key of `path` (`None`: the wallet's own).
    ///
    /// Errors ([`ProtocolError::Params`]): a child without an extended key, or a derivation
    /// BIP-32 declares invalid.
    pub fn output_key(&self, path: Option<ChildPath>) -> Result<XOnlyPublicKey> {
        let Some(path) = path else {
            return Ok(self.root);
        };
        let child = self.xpub()?.child(path.keychain, path.index)?;
        output_key_from_bytes(&child.output_key)
    }

    fn xpub(&self) -> Result<&WalletXpub> {
        self.xpub.as_ref().ok_or_else(|| ProtocolError::Params {
            reason: "a child key of a wallet whose extended key is not known".into(),
        })
    }

    fn own_script(&self) -> ScriptBuf {
        own_script_for(&self.root)
    }

    /// Which of the wallet's keys `script` pays: `Some(None)` its own, `Some(Some(path))` a child
    /// named by one of `origins` (checked against the script), or with `scan` found among the
    /// first [`SCAN_WINDOW`] of each keychain; `None` when it is not the wallet's.
    ///
    /// A label is believed only once its key's BIP-86 output key is the script (one tweak) *and*
    /// the child its path names is that key (a derivation, within this reading's budget).
    fn locate(
        &self,
        script: &ScriptBuf,
        origins: &BTreeMap<XOnlyPublicKey, (Vec<bitcoin::TapLeafHash>, KeySource)>,
        scan: bool,
    ) -> Option<Option<ChildPath>> {
        if *script == self.own_script() {
            return Some(None);
        }
        let xpub = self.xpub.as_ref()?;
        let fingerprint = xpub.fingerprint();
        let secp = Secp256k1::verification_only();
        let named = origins
            .iter()
            .filter(|(_, (_, (fp, _)))| fp.to_bytes() == fingerprint)
            .take(MAX_ORIGINS)
            .filter(|(key, _)| {
                own_script_for(&key.tap_tweak(&secp, None).0.to_x_only_public_key()) == *script
            })
            .filter_map(|(key, (_, (_, path)))| Some((key, ChildPath::of_numbers(path.as_ref())?)))
            .find(|(key, path)| {
                let left = self.budget.get();
                if left == 0 {
                    return false;
                }
                self.budget.set(left - 1);
                xpub.child(path.keychain, path.index)
                    .ok()
                    .is_some_and(|child| child.internal_key.get(1..) == Some(&key.serialize()[..]))
            })
            .map(|(_, path)| path);
        if let Some(path) = named {
            return Some(Some(path));
        }
        if !scan {
            return None;
        }
        self.scanned
            .get_or_init(|| scan_children(xpub))
            .get(script)
            .map(|path| Some(*path))
    }
}

/// The scripts of the first [`SCAN_WINDOW`] children of each keychain.
fn scan_children(xpub: &WalletXpub) -> BTreeMap<ScriptBuf, ChildPath> {
    let mut scripts = BTreeMap::new();
    for keychain in [Keychain::Receive, Keychain::Change] {
        let Ok(chain) = xpub.keychain(keychain) else {
            continue;
        };
        for index in 0..SCAN_WINDOW {
            let Some(key) = chain
                .child(index)
                .ok()
                .and_then(|child| output_key_from_bytes(&child.output_key).ok())
            else {
                continue;
            };
            scripts.insert(own_script_for(&key), ChildPath { keychain, index });
        }
    }
    scripts
}

/// One output that does not pay the wallet (its own script, or a child's it recognises).
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
    /// Which of the wallet's keys each input spends, in input order: `None` its own output key,
    /// or a child (`crate::hd`), whose key package signs that input.
    #[serde(default)]
    pub input_paths: Vec<Option<ChildPath>>,
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

/// Parses a binary PSBT, checks that it spends only the wallet's keys (`keys`) with
/// SIGHASH_DEFAULT, and computes what it does. Addresses are rendered for `network`.
pub fn analyze(psbt: &[u8], keys: &OwnKeys, network: Network) -> Result<SpendSummary> {
    let psbt = parse(psbt)?;
    let checked = check(&psbt, keys)?;
    let destinations = psbt
        .unsigned_tx
        .output
        .iter()
        .zip(&checked.own_outputs)
        .filter(|(_, own)| !**own)
        .map(|(out, _)| Destination {
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
        input_paths: checked.input_paths,
    })
}

/// Finalizes a PSBT with one 64-byte BIP-340 signature per input (in input order) and extracts
/// the signed transaction: returns its txid and its consensus encoding.
///
/// Runs every check of [`analyze`] again, then verifies each signature against that input's
/// output key (the wallet's own, or its child's) and sighash, naming the first input whose
/// signature does not verify. Each input gets `final_script_witness = [signature]` (64 bytes:
/// SIGHASH_DEFAULT appends no type byte) and, per BIP-174's finalizer, loses every other field but
/// its UTXOs and unknown/proprietary pairs.
pub fn finalize(psbt: &[u8], keys: &OwnKeys, signatures: &[[u8; 64]]) -> Result<(String, Vec<u8>)> {
    let mut psbt = parse(psbt)?;
    let checked = check(&psbt, keys)?;
    if signatures.len() != checked.sighashes.len() {
        return Err(psbt_error(format!(
            "{} signatures for {} inputs",
            signatures.len(),
            checked.sighashes.len()
        )));
    }
    let secp = Secp256k1::verification_only();
    for (index, (((input, signature), sighash), key)) in psbt
        .inputs
        .iter_mut()
        .zip(signatures)
        .zip(&checked.sighashes)
        .zip(&checked.input_keys)
        .enumerate()
    {
        let sig =
            schnorr::Signature::from_slice(signature).map_err(|_| ProtocolError::PsbtInput {
                index,
                reason: "not a BIP-340 signature".into(),
            })?;
        secp.verify_schnorr(&sig, &Message::from_digest(*sighash), key)
            .map_err(|_| ProtocolError::PsbtInput {
                index,
                reason: "the BIP-340 signature does not verify under this input's output key for \
                         its sighash"
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
/// against its input's output key and sighash.
pub fn with_key_sigs(psbt: &[u8], keys: &OwnKeys, signatures: &[[u8; 64]]) -> Result<Vec<u8>> {
    finalize(psbt, keys, signatures)?;
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

/// [`with_key_sigs`] with the signatures read from `tx`, the PSBT's transaction as it was
/// signed and published (each input's witness one 64-byte BIP-340 signature): what a DAO member,
/// who sees the provider's published transaction, gives wallet software that wants the PSBT.
///
/// Errors: a transaction that does not decode or is not the PSBT's (another txid), an input
/// whose witness is not one 64-byte signature, and whatever [`with_key_sigs`] refuses (each
/// signature is verified).
pub fn with_key_sigs_of_tx(psbt: &[u8], keys: &OwnKeys, tx: &[u8]) -> Result<Vec<u8>> {
    let tx: Transaction =
        encode::deserialize(tx).map_err(|e| psbt_error(format!("the signed transaction: {e}")))?;
    if tx.compute_txid() != parse(psbt)?.unsigned_tx.compute_txid() {
        return Err(psbt_error(
            "the signed transaction is not this PSBT's (another txid)",
        ));
    }
    let signatures = tx
        .input
        .iter()
        .enumerate()
        .map(|(index, input)| {
            Some(input.witness.len())
                .filter(|n| *n == 1)
                .and_then(|_| input.witness.nth(0))
                .and_then(|sig| <[u8; 64]>::try_from(sig).ok())
                .ok_or_else(|| ProtocolError::PsbtInput {
                    index,
                    reason: "its witness is not one 64-byte key-path signature".into(),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    with_key_sigs(psbt, keys, &signatures)
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
    /// Whether each output pays one of the wallet's keys, in output order.
    own_outputs: Vec<bool>,
    /// Which key each input spends, in input order.
    input_paths: Vec<Option<ChildPath>>,
    /// Each input's output key, in input order: the witness program of the script it spends,
    /// which `check_input` found to be one of the wallet's.
    input_keys: Vec<XOnlyPublicKey>,
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

/// The output key of a P2TR script (its witness program), if it is one.
fn p2tr_output_key(script: &ScriptBuf) -> Option<XOnlyPublicKey> {
    if !script.is_p2tr() {
        return None;
    }
    XOnlyPublicKey::from_slice(script.as_bytes().get(2..)?).ok()
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
fn check(psbt: &Psbt, keys: &OwnKeys) -> Result<Checked> {
    let tx = &psbt.unsigned_tx;
    if tx.input.is_empty() {
        return Err(psbt_error("the transaction has no inputs"));
    }
    if tx.output.is_empty() {
        return Err(psbt_error("the transaction has no outputs"));
    }
    keys.budget.set(MAX_LABEL_DERIVATIONS);
    // Bounded before anything is derived: every later step is per input or output.
    if tx.input.len() > MAX_INPUTS || tx.output.len() > MAX_OUTPUTS {
        return Err(psbt_error(format!(
            "{} inputs and {} outputs: at most {MAX_INPUTS} inputs and {MAX_OUTPUTS} outputs",
            tx.input.len(),
            tx.output.len()
        )));
    }
    let mut prevouts: Vec<TxOut> = Vec::with_capacity(tx.input.len());
    let mut input_paths = Vec::with_capacity(tx.input.len());
    let mut input_keys = Vec::with_capacity(tx.input.len());
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
        let (utxo, path) = check_input(index, txin, input, keys)?;
        input_paths.push(path);
        input_keys.push(p2tr_output_key(&utxo.script_pubkey).ok_or_else(|| {
            ProtocolError::PsbtInput {
                index,
                reason: "its script is not P2TR".into(),
            }
        })?);
        let value = checked_amount(utxo.value, || format!("input {index}"))?;
        input_total = input_total
            .checked_add(value)
            .ok_or_else(|| value_error("the inputs' values overflow"))?;
        prevouts.push(utxo.clone());
    }
    let mut output_total: u64 = 0;
    let mut change: u64 = 0;
    let mut own_outputs = Vec::with_capacity(tx.output.len());
    for (index, (out, labels)) in tx.output.iter().zip(&psbt.outputs).enumerate() {
        let value = checked_amount(out.value, || format!("output {index}"))?;
        output_total = output_total
            .checked_add(value)
            .ok_or_else(|| value_error("the outputs' values overflow"))?;
        // Change at an index beyond MAX_CHANGE_INDEX counts as leaving (see there).
        let own = match keys.locate(&out.script_pubkey, &labels.tap_key_origins, false) {
            Some(Some(path)) => path.index <= MAX_CHANGE_INDEX,
            Some(None) => true,
            None => false,
        };
        own_outputs.push(own);
        if own {
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
        own_outputs,
        input_paths,
        input_keys,
        sighashes,
        input_total,
        value_leaving,
        fee,
        change,
    })
}

/// Input `index`'s own rules: a witness UTXO paying one of the wallet's P2TR scripts, the default
/// sighash type only, and a `non_witness_utxo` (if any) that agrees with both. Returns the UTXO
/// and the key it pays.
fn check_input<'a>(
    index: usize,
    txin: &bitcoin::TxIn,
    input: &'a bitcoin::psbt::Input,
    keys: &OwnKeys,
) -> Result<(&'a TxOut, Option<ChildPath>)> {
    let refuse = |reason: String| ProtocolError::PsbtInput { index, reason };
    let utxo = input
        .witness_utxo
        .as_ref()
        .ok_or_else(|| refuse("no witness_utxo (BIP-371 key-path inputs need one)".into()))?;
    let Some(path) = keys.locate(&utxo.script_pubkey, &input.tap_key_origins, true) else {
        return Err(refuse(format!(
            "spends script {}, not one of the wallet's P2TR scripts (its own, a child its \
             PSBT_IN_TAP_BIP32_DERIVATION names, or one of the first {SCAN_WINDOW} of a keychain)",
            hex::encode(utxo.script_pubkey.as_bytes())
        )));
    };
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
    Ok((utxo, path))
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
