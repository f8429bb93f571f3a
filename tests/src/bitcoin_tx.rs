//! Bitcoin transactions for tests: PSBTs spending a wallet's Taproot output key, and the
//! consensus check of what cosigner produced (Bitcoin Core's libbitcoinconsensus, Taproot rules,
//! spending exactly the prevouts the PSBT named).

use anyhow::{Context, bail};
use bitcoin::absolute::LockTime;
use bitcoin::hashes::Hash;
use bitcoin::key::{TweakedPublicKey, XOnlyPublicKey};
use bitcoin::psbt::Psbt;
use bitcoin::{
    Address, Amount, Network, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid,
    Witness, transaction,
};

/// Where an output goes.
#[derive(Debug, Clone)]
pub enum Pay {
    /// Back to the wallet (change).
    Change,
    /// To this address.
    To(String),
    /// To a raw script (hex).
    Script(String),
}

/// A PSBT and the outputs its inputs spend.
#[derive(Debug, Clone)]
pub struct Spend {
    /// The PSBT, base64.
    pub psbt_base64: String,
    /// The spent outputs, in input order.
    pub prevouts: Vec<TxOut>,
}

/// The wallet's script: P2TR with the FROST group key as output key.
pub fn wallet_script(x_only_hex: &str) -> anyhow::Result<ScriptBuf> {
    let bytes = hex::decode(x_only_hex).context("group key hex")?;
    let key = XOnlyPublicKey::from_slice(&bytes).context("group key")?;
    Ok(ScriptBuf::new_p2tr_tweaked(
        TweakedPublicKey::dangerous_assume_tweaked(key),
    ))
}

/// A regtest P2TR address of a fresh random key (somebody else's).
pub fn foreign_address() -> String {
    let secp = bitcoin::secp256k1::Secp256k1::new();
    let secret = loop {
        if let Ok(k) = bitcoin::secp256k1::SecretKey::from_slice(&rand::random::<[u8; 32]>()) {
            break k;
        }
    };
    let (x, _) = secret.x_only_public_key(&secp);
    Address::p2tr_tweaked(
        TweakedPublicKey::dangerous_assume_tweaked(x),
        Network::Regtest,
    )
    .to_string()
}

/// A PSBT spending `inputs` (satoshis, each a fresh outpoint paying the wallet) to `outputs`.
pub fn build(x_only_hex: &str, inputs: &[u64], outputs: &[(Pay, u64)]) -> anyhow::Result<Spend> {
    let ours = wallet_script(x_only_hex)?;
    let mut tx = Transaction {
        version: transaction::Version::TWO,
        lock_time: LockTime::ZERO,
        input: Vec::new(),
        output: Vec::new(),
    };
    let mut prevouts = Vec::new();
    for (i, value) in inputs.iter().enumerate() {
        let mut txid = [0u8; 32];
        txid[..8].copy_from_slice(&rand::random::<u64>().to_le_bytes());
        txid[31] = i as u8;
        tx.input.push(TxIn {
            previous_output: OutPoint::new(Txid::from_byte_array(txid), i as u32),
            script_sig: ScriptBuf::new(),
            sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
            witness: Witness::new(),
        });
        prevouts.push(TxOut {
            value: Amount::from_sat(*value),
            script_pubkey: ours.clone(),
        });
    }
    for (pay, value) in outputs {
        let script_pubkey = match pay {
            Pay::Change => ours.clone(),
            Pay::To(addr) => addr
                .parse::<Address<_>>()
                .context("address")?
                .require_network(Network::Regtest)
                .context("regtest address")?
                .script_pubkey(),
            Pay::Script(h) => ScriptBuf::from_bytes(hex::decode(h)?),
        };
        tx.output.push(TxOut {
            value: Amount::from_sat(*value),
            script_pubkey,
        });
    }
    let mut psbt = Psbt::from_unsigned_tx(tx)?;
    for (input, prevout) in psbt.inputs.iter_mut().zip(&prevouts) {
        input.witness_utxo = Some(prevout.clone());
    }
    Ok(Spend {
        psbt_base64: psbt.to_string(),
        prevouts,
    })
}

/// A spend of `inputs` (as [`build`]) paying `amount` to a stranger's fresh address and `change`
/// back to the wallet; the fee is what the inputs leave over.
pub fn payment(
    x_only_hex: &str,
    inputs: &[u64],
    amount: u64,
    change: u64,
) -> anyhow::Result<Spend> {
    let outputs = [(Pay::To(foreign_address()), amount), (Pay::Change, change)];
    build(x_only_hex, inputs, &outputs)
}

/// A PSBT (BIP-174, binary) spending two of the wallet's outputs (70 000 and 50 000 sat): 60 000
/// sat away, 50 000 back as change. What the benches and the one-round tests sign.
pub fn two_input_psbt(x_only_hex: &str) -> anyhow::Result<Vec<u8>> {
    let spend = payment(x_only_hex, &[70_000, 50_000], 60_000, 50_000)?;
    Ok(cosigner_protocol::psbt::decode_psbt_file(
        spend.psbt_base64.as_bytes(),
    )?)
}

/// Checks a finished transaction under Bitcoin's consensus rules (Taproot included), spending
/// `prevouts`: every input must verify.
pub fn verify_consensus(tx_hex: &str, prevouts: &[TxOut]) -> anyhow::Result<()> {
    let tx_bytes = hex::decode(tx_hex).context("tx hex")?;
    let tx: Transaction = bitcoin::consensus::deserialize(&tx_bytes).context("tx decode")?;
    if tx.input.len() != prevouts.len() {
        bail!("{} inputs for {} prevouts", tx.input.len(), prevouts.len());
    }
    let scripts: Vec<Vec<u8>> = prevouts
        .iter()
        .map(|p| p.script_pubkey.to_bytes())
        .collect();
    let utxos: Vec<bitcoinconsensus::Utxo> = prevouts
        .iter()
        .zip(&scripts)
        .map(|(p, s)| bitcoinconsensus::Utxo {
            script_pubkey: s.as_ptr(),
            script_pubkey_len: s.len() as u32,
            value: p.value.to_sat() as i64,
        })
        .collect();
    for (i, (p, s)) in prevouts.iter().zip(&scripts).enumerate() {
        bitcoinconsensus::verify_with_flags(
            s,
            p.value.to_sat(),
            &tx_bytes,
            Some(&utxos),
            i,
            bitcoinconsensus::VERIFY_ALL_PRE_TAPROOT | bitcoinconsensus::VERIFY_TAPROOT,
        )
        .map_err(|e| anyhow::anyhow!("input {i} fails consensus: {e:?}"))?;
    }
    Ok(())
}

/// Labels output `index` of `spend`'s PSBT as the wallet's own (BIP-371 `tap_internal_key` and
/// a `tap_key_origins` entry with the wallet's key), without changing where it pays: what a
/// malicious PSBT does to pass a payment off as change.
pub fn disguise_as_change(spend: &Spend, index: usize, x_only_hex: &str) -> anyhow::Result<Spend> {
    let mut psbt: Psbt = spend.psbt_base64.parse().context("psbt")?;
    let key = XOnlyPublicKey::from_slice(&hex::decode(x_only_hex)?).context("group key")?;
    let output = psbt.outputs.get_mut(index).context("no such output")?;
    output.tap_internal_key = Some(key);
    output.tap_key_origins.insert(
        key,
        (
            Vec::new(),
            (
                bitcoin::bip32::Fingerprint::from([1, 2, 3, 4]),
                "m/86'/1'/0'/1/0".parse().context("path")?,
            ),
        ),
    );
    Ok(Spend {
        psbt_base64: psbt.to_string(),
        prevouts: spend.prevouts.clone(),
    })
}

/// `spend` with input `index`'s `witness_utxo` claiming `sat` instead: the same transaction (one
/// txid), other sighashes. What a PSBT author lies with to get a spend valued low.
///
/// # Errors
/// If the PSBT does not parse or has no such input.
pub fn claiming(spend: &Spend, index: usize, sat: u64) -> anyhow::Result<Spend> {
    let mut psbt: Psbt = spend.psbt_base64.parse().context("psbt")?;
    let mut prevouts = spend.prevouts.clone();
    let utxo = psbt
        .inputs
        .get_mut(index)
        .and_then(|i| i.witness_utxo.as_mut())
        .context("no such input")?;
    utxo.value = Amount::from_sat(sat);
    if let Some(p) = prevouts.get_mut(index) {
        p.value = Amount::from_sat(sat);
    }
    Ok(Spend {
        psbt_base64: psbt.to_string(),
        prevouts,
    })
}

/// Finalizes a base64 PSBT whose inputs carry `PSBT_IN_TAP_KEY_SIG` the way any BIP-174
/// finalizer does for a key-path spend (the witness is the signature); the transaction's hex.
///
/// # Errors
/// If the PSBT does not parse, an input has no key signature, or the transaction cannot be
/// extracted.
pub fn finalized_by_hand(psbt_base64: &str) -> anyhow::Result<String> {
    let mut psbt: Psbt = psbt_base64.parse().context("psbt")?;
    for (index, input) in psbt.inputs.iter_mut().enumerate() {
        let sig = input
            .tap_key_sig
            .take()
            .with_context(|| format!("input {index} has no key signature"))?;
        input.final_script_witness = Some(Witness::from_slice(&[sig.to_vec()]));
    }
    let tx = psbt.extract_tx().context("extracting the transaction")?;
    Ok(hex::encode(bitcoin::consensus::serialize(&tx)))
}
