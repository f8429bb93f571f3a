#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
use bitcoin::bip32::{DerivationPath, Fingerprint};
use bitcoin::hashes::sha256;
use bitcoin::key::TapTweak;
use bitcoin::psbt::PsbtSighashType;
use bitcoin::secp256k1::{Keypair, SecretKey};
use bitcoin::{Sequence, Txid, absolute, transaction};
use std::str::FromStr;

/// The wallet: a keypair whose x-only key is the output key Q (as the FROST group key is).
struct Wallet {
    keypair: Keypair,
    q: [u8; 32],
}

/// The test wallet's id (its chain code depends on it).
const WALLET: WalletId = WalletId([0x77; 16]);

fn wallet(seed: u8) -> Wallet {
    let secp = Secp256k1::new();
    let secret = SecretKey::from_slice(&[seed; 32]).unwrap();
    let keypair = Keypair::from_secret_key(&secp, &secret);
    let q = keypair.x_only_public_key().0.serialize();
    Wallet { keypair, q }
}

impl Wallet {
    /// Its keys: the keypair's public key as the group key, so that its children are known too.
    fn keys(&self) -> OwnKeys {
        OwnKeys::of_wallet(&WALLET, &self.keypair.public_key().serialize()).unwrap()
    }

    /// The keypair that signs for `path`'s output key: the secret plus the path's BIP-32 tweak,
    /// then BIP-86's tweak (what the FROST shares of a child add up to, `crate::hd`).
    fn child_keypair(&self, path: ChildPath) -> Keypair {
        let secp = Secp256k1::new();
        let xpub = WalletXpub::new(&WALLET, &self.keypair.public_key().serialize(), false).unwrap();
        let child = xpub.child(path.keychain, path.index).unwrap();
        let tweak = bitcoin::secp256k1::Scalar::from_be_bytes(child.tweak).unwrap();
        let secret = self.keypair.secret_key().add_tweak(&tweak).unwrap();
        let internal = Keypair::from_secret_key(&secp, &secret);
        internal.tap_tweak(&secp, None).to_keypair()
    }

    /// The script of `path`.
    fn child_script(&self, path: ChildPath) -> ScriptBuf {
        ScriptBuf::from_bytes(
            own_script(&self.keys().output_key(Some(path)).unwrap().serialize()).unwrap(),
        )
    }

    /// Signs each sighash with the key of its input's path.
    fn sign_paths(&self, sighashes: &[[u8; 32]], paths: &[Option<ChildPath>]) -> Vec<[u8; 64]> {
        let secp = Secp256k1::new();
        sighashes
            .iter()
            .zip(paths)
            .map(|(h, path)| {
                let keypair = path.map_or(self.keypair, |p| self.child_keypair(p));
                secp.sign_schnorr_with_aux_rand(&Message::from_digest(*h), &keypair, &[7; 32])
                    .serialize()
            })
            .collect()
    }

    fn script(&self) -> ScriptBuf {
        ScriptBuf::from_bytes(own_script(&self.q).unwrap())
    }

    fn sign(&self, sighashes: &[[u8; 32]]) -> Vec<[u8; 64]> {
        let secp = Secp256k1::new();
        sighashes
            .iter()
            .map(|h| {
                secp.sign_schnorr_with_aux_rand(&Message::from_digest(*h), &self.keypair, &[7; 32])
                    .serialize()
            })
            .collect()
    }
}

/// A foreign P2WPKH script (someone else's address).
fn foreign_script() -> ScriptBuf {
    ScriptBuf::new_p2wpkh(&bitcoin::WPubkeyHash::from_byte_array([0x11; 20]))
}

fn outpoint(n: u32) -> OutPoint {
    let byte = u8::try_from(n % 256).unwrap();
    OutPoint::new(Txid::from_byte_array([byte; 32]), n)
}

/// Inputs (value, script) and outputs (value, script) -> unsigned PSBT with witness_utxos.
fn build(inputs: &[(u64, ScriptBuf)], outputs: &[(u64, ScriptBuf)]) -> Psbt {
    let tx = Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: (0..inputs.len())
            .map(|i| bitcoin::TxIn {
                previous_output: outpoint(u32::try_from(i).unwrap() + 1),
                script_sig: ScriptBuf::new(),
                sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                witness: Witness::new(),
            })
            .collect(),
        output: outputs
            .iter()
            .map(|(v, s)| TxOut {
                value: Amount::from_sat(*v),
                script_pubkey: s.clone(),
            })
            .collect(),
    };
    let mut psbt = Psbt::from_unsigned_tx(tx).unwrap();
    for (input, (v, s)) in psbt.inputs.iter_mut().zip(inputs) {
        input.witness_utxo = Some(TxOut {
            value: Amount::from_sat(*v),
            script_pubkey: s.clone(),
        });
    }
    psbt
}

/// The standard case: 2 inputs of ours (60 000 + 50 000), 70 000 to a foreign address,
/// 39 000 back to us, fee 1 000.
fn two_by_two(w: &Wallet) -> Psbt {
    build(
        &[(60_000, w.script()), (50_000, w.script())],
        &[(70_000, foreign_script()), (39_000, w.script())],
    )
}

fn is_psbt_input(e: &ProtocolError, want: usize) -> bool {
    matches!(e, ProtocolError::PsbtInput { index, .. } if *index == want)
}

#[test]
fn two_inputs_two_outputs_summary() {
    let w = wallet(1);
    let psbt = two_by_two(&w);
    let s = analyze(&psbt.serialize(), &w.keys(), Network::Regtest).unwrap();
    assert_eq!(s.input_total, 110_000);
    assert_eq!(s.change, 39_000);
    assert_eq!(s.fee, 1_000);
    assert_eq!(s.value_leaving, 71_000);
    assert_eq!(
        s.destinations,
        vec![Destination {
            address: "bcrt1qzyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3lgth6c".into(),
            amount: 70_000
        }]
    );
    assert_eq!(s.sighashes.len(), 2);
    assert_ne!(s.sighashes[0], s.sighashes[1]);
    assert_eq!(s.txid, psbt.unsigned_tx.compute_txid().to_string());
    // The sighash is bitcoin's own BIP-341 key-path sighash over every prevout.
    let prevouts = prevouts_of(&psbt);
    let expected = SighashCache::new(&psbt.unsigned_tx)
        .taproot_key_spend_signature_hash(1, &Prevouts::All(&prevouts), TapSighashType::Default)
        .unwrap();
    assert_eq!(s.sighashes[1], expected.to_byte_array());
    // Same PSBT on mainnet renders the mainnet address.
    let main = analyze(&psbt.serialize(), &w.keys(), Network::Bitcoin).unwrap();
    assert!(main.destinations[0].address.starts_with("bc1q"));
}

#[test]
fn outputs_without_address_render_as_script() {
    let w = wallet(1);
    let op_return = ScriptBuf::new_op_return([0xab; 4]);
    let psbt = build(
        &[(10_000, w.script())],
        &[(0, op_return.clone()), (9_000, w.script())],
    );
    let s = analyze(&psbt.serialize(), &w.keys(), Network::Regtest).unwrap();
    assert_eq!(
        s.destinations,
        vec![Destination {
            address: format!("script:{}", hex::encode(op_return.as_bytes())),
            amount: 0
        }]
    );
    assert_eq!(s.value_leaving, 1_000);
}

#[test]
fn labelled_foreign_output_is_value_leaving() {
    let w = wallet(1);
    let attacker = wallet(9);
    let secp = Secp256k1::new();
    // Output 1 claims, through every BIP-32/BIP-371 label, to be the wallet's change, but pays the
    // attacker's key.
    let mut psbt = build(
        &[(100_000, w.script())],
        &[(10_000, foreign_script()), (89_000, attacker.script())],
    );
    let ours = w.keypair.x_only_public_key().0;
    let origin = (
        Fingerprint::from([1, 2, 3, 4]),
        DerivationPath::from_str("m/86'/0'/0'/1/0").unwrap(),
    );
    let out = &mut psbt.outputs[1];
    out.tap_internal_key = Some(ours);
    out.tap_key_origins.insert(ours, (vec![], origin.clone()));
    out.bip32_derivation
        .insert(w.keypair.public_key(), origin.clone());
    let s = analyze(&psbt.serialize(), &w.keys(), Network::Regtest).unwrap();
    assert_eq!(s.change, 0);
    assert_eq!(s.value_leaving, 100_000);
    assert_eq!(s.destinations.len(), 2);

    // Paying the wallet's *internal* key P is not change either: with Q = P + H_TapTweak(P)·G the
    // wallet's script is OP_1 <Q>; OP_1 <P> and a second tweak of Q are other scripts.
    let internal = Keypair::from_secret_key(&secp, &SecretKey::from_slice(&[5; 32]).unwrap());
    let (p, _) = internal.x_only_public_key();
    let (tweaked, _) = p.tap_tweak(&secp, None);
    let q = tweaked.to_x_only_public_key().serialize();
    let untweaked_p = ScriptBuf::new_p2tr_tweaked(TweakedPublicKey::dangerous_assume_tweaked(p));
    let bip86_of_q = ScriptBuf::new_p2tr(&secp, XOnlyPublicKey::from_slice(&q).unwrap(), None);
    assert_eq!(
        ScriptBuf::new_p2tr(&secp, p, None).as_bytes(),
        own_script(&q).unwrap()
    );
    let own = ScriptBuf::from_bytes(own_script(&q).unwrap());
    let psbt = build(
        &[(50_000, own.clone())],
        &[(20_000, untweaked_p), (20_000, bip86_of_q), (9_000, own)],
    );
    let s = analyze(
        &psbt.serialize(),
        &OwnKeys::root_only(&q).unwrap(),
        Network::Regtest,
    )
    .unwrap();
    assert_eq!(s.change, 9_000);
    assert_eq!(s.value_leaving, 41_000);
    assert_eq!(s.destinations.len(), 2);
}

#[test]
fn foreign_input_is_refused_by_index() {
    let w = wallet(1);
    let psbt = build(
        &[(60_000, w.script()), (50_000, wallet(2).script())],
        &[(100_000, foreign_script())],
    );
    let e = analyze(&psbt.serialize(), &w.keys(), Network::Regtest).unwrap_err();
    assert!(is_psbt_input(&e, 1), "{e}");
    assert!(e.to_string().contains("input 1"), "{e}");
}

#[test]
fn input_without_witness_utxo_is_refused() {
    let w = wallet(1);
    let mut psbt = two_by_two(&w);
    psbt.inputs[0].witness_utxo = None;
    let e = analyze(&psbt.serialize(), &w.keys(), Network::Regtest).unwrap_err();
    assert!(is_psbt_input(&e, 0), "{e}");
}

#[test]
fn other_sighash_types_are_refused() {
    let w = wallet(1);
    for ty in [
        TapSighashType::All,
        TapSighashType::None,
        TapSighashType::SinglePlusAnyoneCanPay,
        TapSighashType::AllPlusAnyoneCanPay,
    ] {
        let mut psbt = two_by_two(&w);
        psbt.inputs[1].sighash_type = Some(PsbtSighashType::from(ty));
        let e = analyze(&psbt.serialize(), &w.keys(), Network::Regtest).unwrap_err();
        assert!(is_psbt_input(&e, 1), "{ty}: {e}");
        assert!(e.to_string().contains("sighash type"), "{e}");
    }
    // An explicit SIGHASH_DEFAULT is fine.
    let mut psbt = two_by_two(&w);
    psbt.inputs[0].sighash_type = Some(PsbtSighashType::from(TapSighashType::Default));
    analyze(&psbt.serialize(), &w.keys(), Network::Regtest).unwrap();
}

#[test]
fn amounts_are_checked() {
    let w = wallet(1);
    // Outputs above inputs.
    let psbt = build(&[(10_000, w.script())], &[(10_001, foreign_script())]);
    let e = analyze(&psbt.serialize(), &w.keys(), Network::Regtest).unwrap_err();
    assert!(matches!(e, ProtocolError::PsbtValue { .. }), "{e}");
    // u64 overflow of the inputs.
    let psbt = build(
        &[(u64::MAX, w.script()), (u64::MAX, w.script())],
        &[(1, foreign_script())],
    );
    let e = analyze(&psbt.serialize(), &w.keys(), Network::Regtest).unwrap_err();
    assert!(matches!(e, ProtocolError::PsbtValue { .. }), "{e}");
    // Above 21 million bitcoin.
    let max = Amount::MAX_MONEY.to_sat();
    let psbt = build(
        &[(max, w.script()), (max, w.script())],
        &[(1, foreign_script())],
    );
    let e = analyze(&psbt.serialize(), &w.keys(), Network::Regtest).unwrap_err();
    assert!(matches!(e, ProtocolError::PsbtValue { .. }), "{e}");
    // An absurd fee rate (what extract_tx would refuse after signing) is refused up front.
    let psbt = build(&[(100_000_000, w.script())], &[(1_000, foreign_script())]);
    let e = analyze(&psbt.serialize(), &w.keys(), Network::Regtest).unwrap_err();
    assert!(e.to_string().contains("sat/vB"), "{e}");
}

#[test]
fn duplicate_and_empty_transactions_are_refused() {
    let w = wallet(1);
    let mut psbt = two_by_two(&w);
    psbt.unsigned_tx.input[1].previous_output = psbt.unsigned_tx.input[0].previous_output;
    let e = analyze(&psbt.serialize(), &w.keys(), Network::Regtest).unwrap_err();
    assert!(is_psbt_input(&e, 1), "{e}");

    let mut psbt = two_by_two(&w);
    psbt.unsigned_tx.output.clear();
    psbt.outputs.clear();
    assert!(analyze(&psbt.serialize(), &w.keys(), Network::Regtest).is_err());
}

#[test]
fn non_witness_utxo_must_agree() {
    let w = wallet(1);
    let mut psbt = two_by_two(&w);
    let previous = Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![],
        output: vec![TxOut {
            value: Amount::from_sat(60_000),
            script_pubkey: w.script(),
        }],
    };
    psbt.unsigned_tx.input[0].previous_output = OutPoint::new(previous.compute_txid(), 0);
    psbt.inputs[0].non_witness_utxo = Some(previous.clone());
    analyze(&psbt.serialize(), &w.keys(), Network::Regtest).unwrap();
    psbt.inputs[0].witness_utxo.as_mut().unwrap().value = Amount::from_sat(6_000_000);
    let e = analyze(&psbt.serialize(), &w.keys(), Network::Regtest).unwrap_err();
    assert!(is_psbt_input(&e, 0), "{e}");
}

#[test]
fn finalize_produces_the_signed_transaction() {
    let w = wallet(1);
    let mut psbt = two_by_two(&w);
    // Labels a wallet would add: all cleared by the finalizer.
    psbt.inputs[0].tap_internal_key = Some(w.keypair.x_only_public_key().0);
    psbt.inputs[0].sighash_type = Some(PsbtSighashType::from(TapSighashType::Default));
    let bytes = psbt.serialize();
    let s = analyze(&bytes, &w.keys(), Network::Regtest).unwrap();
    let (txid, raw) = finalize(&bytes, &w.keys(), &w.sign(&s.sighashes)).unwrap();
    assert_eq!(txid, s.txid);
    let tx: Transaction = encode::deserialize(&raw).unwrap();
    assert_eq!(tx.compute_txid().to_string(), txid);
    for input in &tx.input {
        assert!(input.script_sig.is_empty());
        assert_eq!(input.witness.len(), 1);
        assert_eq!(input.witness.nth(0).unwrap().len(), 64);
    }
    assert_eq!(tx.output, psbt.unsigned_tx.output);
}

#[test]
fn signed_psbts_carry_each_inputs_key_signature_and_finalize_alike() {
    let w = wallet(1);
    let bytes = two_by_two(&w).serialize();
    let s = analyze(&bytes, &w.keys(), Network::Regtest).unwrap();
    let sigs = w.sign(&s.sighashes);
    let signed = with_key_sigs(&bytes, &w.keys(), &sigs).unwrap();
    let parsed = Psbt::deserialize(&signed).unwrap();
    for (input, sig) in parsed.inputs.iter().zip(&sigs) {
        let key_sig = input.tap_key_sig.unwrap();
        assert_eq!(key_sig.sighash_type, TapSighashType::Default);
        assert_eq!(key_sig.signature.serialize(), *sig);
        assert!(input.final_script_witness.is_none(), "not finalized");
    }
    // Finalized by anyone, it is the transaction cosigner itself would publish.
    let (txid, raw) = finalize(&bytes, &w.keys(), &sigs).unwrap();
    let mut theirs = parsed;
    for input in &mut theirs.inputs {
        let sig = input.tap_key_sig.take().unwrap();
        input.final_script_witness = Some(Witness::from_slice(&[sig.to_vec()]));
    }
    let tx = theirs.extract_tx().unwrap();
    assert_eq!(tx.compute_txid().to_string(), txid);
    assert_eq!(encode::serialize(&tx), raw);
    // A bad signature is refused, naming its input.
    let mut bad = sigs.clone();
    bad[1][3] ^= 1;
    assert!(is_psbt_input(
        &with_key_sigs(&bytes, &w.keys(), &bad).unwrap_err(),
        1
    ));
}

#[test]
fn bad_signatures_are_refused_by_input() {
    let w = wallet(1);
    let bytes = two_by_two(&w).serialize();
    let s = analyze(&bytes, &w.keys(), Network::Regtest).unwrap();
    let good = w.sign(&s.sighashes);

    // A valid signature for another message (the inputs' sighashes swapped).
    let swapped = vec![good[1], good[0]];
    let e = finalize(&bytes, &w.keys(), &swapped).unwrap_err();
    assert!(is_psbt_input(&e, 0), "{e}");

    // A flipped bit in the second signature.
    let mut flipped = good.clone();
    flipped[1][10] ^= 1;
    let e = finalize(&bytes, &w.keys(), &flipped).unwrap_err();
    assert!(is_psbt_input(&e, 1), "{e}");

    // Signed by another key.
    let other = wallet(2).sign(&s.sighashes);
    let e = finalize(&bytes, &w.keys(), &other).unwrap_err();
    assert!(is_psbt_input(&e, 0), "{e}");

    // Not a signature at all (r not on the curve / s out of range).
    let e = finalize(&bytes, &w.keys(), &[[0xff; 64], good[1]]).unwrap_err();
    assert!(is_psbt_input(&e, 0), "{e}");

    // Wrong count.
    assert!(matches!(
        finalize(&bytes, &w.keys(), &good[..1]).unwrap_err(),
        ProtocolError::Psbt { .. }
    ));
}

#[test]
fn base64_and_binary_files() {
    let w = wallet(1);
    let psbt = two_by_two(&w);
    let binary = psbt.serialize();
    assert_eq!(decode_psbt_file(&binary).unwrap(), binary);
    let text = psbt.to_string();
    assert_eq!(decode_psbt_file(text.as_bytes()).unwrap(), binary);
    // Trailing newline, CRLF and line-wrapped base64 as editors and tools write it.
    let wrapped: String = text
        .as_bytes()
        .chunks(64)
        .map(|c| format!("{}\r\n", std::str::from_utf8(c).unwrap()))
        .collect();
    assert_eq!(
        decode_psbt_file(format!("  {wrapped}\n").as_bytes()).unwrap(),
        binary
    );
    // Base64 of something that is not a PSBT, non-base64 text, empty file.
    use bitcoin::base64::Engine as _;
    let not_psbt = bitcoin::base64::engine::general_purpose::STANDARD.encode(b"hello world");
    assert!(decode_psbt_file(not_psbt.as_bytes()).is_err());
    assert!(decode_psbt_file(b"this is not base64!").is_err());
    assert!(decode_psbt_file(b" \n").is_err());
    assert!(decode_psbt_file(b"").is_err());
    // Too large, both forms.
    let mut big = MAGIC.to_vec();
    big.resize(MAX_PSBT + 1, 0);
    assert!(decode_psbt_file(&big).is_err());
    assert!(analyze(&big, &w.keys(), Network::Regtest).is_err());
    assert!(decode_psbt_file(&vec![b'A'; MAX_PSBT_FILE + 1]).is_err());
}

#[test]
fn truncated_and_garbage_psbts_are_errors() {
    let w = wallet(1);
    let binary = two_by_two(&w).serialize();
    for len in 0..binary.len() {
        assert!(
            analyze(&binary[..len], &w.keys(), Network::Regtest).is_err(),
            "prefix of {len} bytes accepted"
        );
    }
    let mut trailing = binary.clone();
    trailing.push(0);
    assert!(analyze(&trailing, &w.keys(), Network::Regtest).is_err());
    // Every single-byte change either is refused or still describes a valid spend; none panics.
    for i in 0..binary.len() {
        for bit in [0x01, 0x80] {
            let mut bent = binary.clone();
            bent[i] ^= bit;
            let _ = analyze(&bent, &w.keys(), Network::Regtest);
            let _ = finalize(&bent, &w.keys(), &[[1; 64], [2; 64]]);
        }
    }
    // Pseudo-random garbage after the magic.
    let mut state = sha256::Hash::hash(b"garbage").to_byte_array();
    for _ in 0..200 {
        state = sha256::Hash::hash(&state).to_byte_array();
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&state);
        bytes.extend_from_slice(&sha256::Hash::hash(&bytes).to_byte_array());
        assert!(analyze(&bytes, &w.keys(), Network::Regtest).is_err());
        assert!(decode_psbt_file(&bytes).is_ok());
    }
    // An invalid output key.
    assert!(OwnKeys::root_only(&[0xff; 32]).is_err());
}

/// A version-0 PSBT rewritten as BIP-370 version 2 (written independently of `v2.rs`).
fn to_v2(psbt: &Psbt, fallback_locktime: bool) -> Vec<u8> {
    fn compact(out: &mut Vec<u8>, n: usize) {
        match n {
            0..=0xfc => out.push(n as u8),
            _ => {
                out.push(0xfd);
                out.extend_from_slice(&(n as u16).to_le_bytes());
            }
        }
    }
    fn pair(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
        compact(out, key.len());
        out.extend_from_slice(key);
        compact(out, value.len());
        out.extend_from_slice(value);
    }
    fn maps(bytes: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut r = &bytes[5..];
        let mut all = Vec::new();
        let mut cur = Vec::new();
        while !r.is_empty() {
            let kl = usize::from(r[0]);
            r = &r[1..];
            if kl == 0 {
                all.push(std::mem::take(&mut cur));
                continue;
            }
            let key = r[..kl].to_vec();
            r = &r[kl..];
            let (vl, skip) = if r[0] == 0xfd {
                (usize::from(u16::from_le_bytes([r[1], r[2]])), 3)
            } else {
                (usize::from(r[0]), 1)
            };
            r = &r[skip..];
            cur.push((key, r[..vl].to_vec()));
            r = &r[vl..];
        }
        all
    }
    let all = maps(&psbt.serialize());
    let tx = &psbt.unsigned_tx;
    let mut out = MAGIC.to_vec();
    for (k, v) in &all[0] {
        if k.as_slice() != [0u8] {
            pair(&mut out, k, v);
        }
    }
    pair(&mut out, &[0x02], &tx.version.0.to_le_bytes());
    if fallback_locktime {
        pair(
            &mut out,
            &[0x03],
            &tx.lock_time.to_consensus_u32().to_le_bytes(),
        );
    }
    pair(&mut out, &[0x04], &[u8::try_from(tx.input.len()).unwrap()]);
    pair(&mut out, &[0x05], &[u8::try_from(tx.output.len()).unwrap()]);
    pair(&mut out, &[0xfb], &2u32.to_le_bytes());
    out.push(0);
    for (i, input) in tx.input.iter().enumerate() {
        for (k, v) in &all[1 + i] {
            pair(&mut out, k, v);
        }
        pair(
            &mut out,
            &[0x0e],
            &input.previous_output.txid.to_byte_array(),
        );
        pair(&mut out, &[0x0f], &input.previous_output.vout.to_le_bytes());
        pair(&mut out, &[0x10], &input.sequence.0.to_le_bytes());
        out.push(0);
    }
    for (i, output) in tx.output.iter().enumerate() {
        for (k, v) in &all[1 + tx.input.len() + i] {
            pair(&mut out, k, v);
        }
        pair(&mut out, &[0x03], &output.value.to_sat().to_le_bytes());
        pair(&mut out, &[0x04], output.script_pubkey.as_bytes());
        out.push(0);
    }
    out
}

#[test]
fn other_versions_are_refused_by_name() {
    let w = wallet(1);
    let mut psbt = two_by_two(&w);
    for version in [1u32, 3] {
        psbt.version = version;
        let e = analyze(&psbt.serialize(), &w.keys(), Network::Regtest).unwrap_err();
        assert!(
            matches!(e, ProtocolError::PsbtVersion { version: v } if v == version),
            "{e}"
        );
        assert!(e.to_string().contains(&format!("version {version}")));
    }
}

#[test]
fn version_2_reads_as_its_version_0_equivalent_and_signs() {
    let w = wallet(1);
    let psbt = two_by_two(&w);
    let v0 = psbt.serialize();
    for fallback in [false, true] {
        let v2 = to_v2(&psbt, fallback);
        assert_ne!(v2, v0);
        let a = analyze(&v0, &w.keys(), Network::Regtest).unwrap();
        let b = analyze(&v2, &w.keys(), Network::Regtest).unwrap();
        assert_eq!(a, b, "same transaction, same sighashes and values");
        let (txid, raw) = finalize(&v2, &w.keys(), &w.sign(&b.sighashes)).unwrap();
        assert_eq!(txid, a.txid);
        let prevouts = prevouts_of(&psbt);
        consensus_verify(&raw, &prevouts).unwrap();
        // The base64 file form too.
        let text = {
            use bitcoin::base64::Engine;
            bitcoin::base64::engine::general_purpose::STANDARD.encode(&v2)
        };
        assert_eq!(decode_psbt_file(text.as_bytes()).unwrap(), v2);
    }
}

#[test]
fn malformed_version_2_is_an_error_not_a_panic() {
    let w = wallet(1);
    let v2 = to_v2(&two_by_two(&w), true);
    for len in 0..v2.len() {
        let _ = analyze(&v2[..len], &w.keys(), Network::Regtest);
    }
    for i in 5..v2.len() {
        let mut bad = v2.clone();
        bad[i] ^= 0x5a;
        let _ = analyze(&bad, &w.keys(), Network::Regtest);
    }
    // No maps behind the counts.
    let mut bare = MAGIC.to_vec();
    for (key, value) in [
        (0x02u8, 2u32.to_le_bytes().to_vec()),
        (0x04, vec![1]),
        (0x05, vec![1]),
        (0xfb, 2u32.to_le_bytes().to_vec()),
    ] {
        bare.extend_from_slice(&[1, key, u8::try_from(value.len()).unwrap()]);
        bare.extend_from_slice(&value);
    }
    bare.push(0);
    let e = analyze(&bare, &w.keys(), Network::Regtest).unwrap_err();
    assert!(e.to_string().contains("version 2"), "{e}");
}

#[test]
fn network_names() {
    assert_eq!(network_from_name("bitcoin").unwrap(), Network::Bitcoin);
    assert_eq!(network_from_name("mainnet").unwrap(), Network::Bitcoin);
    assert_eq!(network_from_name("testnet").unwrap(), Network::Testnet);
    assert_eq!(network_from_name("signet").unwrap(), Network::Signet);
    assert_eq!(network_from_name("regtest").unwrap(), Network::Regtest);
    assert!(matches!(
        network_from_name("litecoin").unwrap_err(),
        ProtocolError::UnknownNetwork { .. }
    ));
}

/// Bitcoin Core's script interpreter (libbitcoinconsensus 26, Taproot flag on, every spent output
/// given) accepts the finalized transaction and refuses it with one signature bit flipped.
///
/// `bitcoin` 0.32's own `bitcoinconsensus` feature binds libbitcoinconsensus 25, which has no
/// Taproot: its `Transaction::verify` accepts a P2TR key-path spend with *any* 64 bytes as the
/// signature (witness v1 is "unknown future version" to it), so it cannot be this check.
#[test]
fn finalized_transaction_passes_consensus_verification() {
    let w = wallet(3);
    let psbt = build(
        &[
            (60_000, w.script()),
            (50_000, w.script()),
            (1_000, w.script()),
        ],
        &[(70_000, foreign_script()), (40_000, w.script())],
    );
    let bytes = psbt.serialize();
    let s = analyze(&bytes, &w.keys(), Network::Regtest).unwrap();
    let (_, raw) = finalize(&bytes, &w.keys(), &w.sign(&s.sighashes)).unwrap();
    let prevouts = prevouts_of(&psbt);
    consensus_verify(&raw, &prevouts).unwrap();

    let tx: Transaction = encode::deserialize(&raw).unwrap();
    let mut bent = tx.clone();
    let mut sig = bent.input[2].witness.nth(0).unwrap().to_vec();
    sig[5] ^= 1;
    bent.input[2].witness = Witness::from_slice(&[sig]);
    let e = consensus_verify(&encode::serialize(&bent), &prevouts).unwrap_err();
    assert!(e.starts_with("input 2"), "{e}");

    // Spending claims a different amount than the PSBT said: the signature no longer verifies.
    let mut lied = prevouts.clone();
    lied[0].value = Amount::from_sat(600_000);
    assert!(consensus_verify(&raw, &lied).is_err());
}

/// The outputs every input of `psbt` spends (its witness UTXOs).
fn prevouts_of(psbt: &Psbt) -> Vec<TxOut> {
    psbt.inputs
        .iter()
        .map(|i| i.witness_utxo.clone().unwrap())
        .collect()
}

fn consensus_verify(raw_tx: &[u8], prevouts: &[TxOut]) -> std::result::Result<(), String> {
    let utxos: Vec<bitcoinconsensus::Utxo> = prevouts
        .iter()
        .map(|p| bitcoinconsensus::Utxo {
            script_pubkey: p.script_pubkey.as_bytes().as_ptr(),
            script_pubkey_len: u32::try_from(p.script_pubkey.len()).unwrap(),
            value: i64::try_from(p.value.to_sat()).unwrap(),
        })
        .collect();
    for (index, prevout) in prevouts.iter().enumerate() {
        bitcoinconsensus::verify_with_flags(
            prevout.script_pubkey.as_bytes(),
            prevout.value.to_sat(),
            raw_tx,
            Some(&utxos),
            index,
            bitcoinconsensus::VERIFY_ALL_PRE_TAPROOT | bitcoinconsensus::VERIFY_TAPROOT,
        )
        .map_err(|e| format!("input {index}: {e:?}"))?;
    }
    Ok(())
}

fn receive(index: u32) -> ChildPath {
    ChildPath {
        keychain: Keychain::Receive,
        index,
    }
}

fn change(index: u32) -> ChildPath {
    ChildPath {
        keychain: Keychain::Change,
        index,
    }
}

/// `PSBT_{IN,OUT}_TAP_BIP32_DERIVATION` as wallets write it for a key path: the internal key,
/// no leaf, the origin `[fingerprint]` and the path `c/i`.
fn origin(
    w: &Wallet,
    path: ChildPath,
    fingerprint: [u8; 4],
) -> BTreeMap<XOnlyPublicKey, (Vec<bitcoin::TapLeafHash>, KeySource)> {
    let xpub = WalletXpub::new(&WALLET, &w.keypair.public_key().serialize(), false).unwrap();
    let child = xpub.child(path.keychain, path.index).unwrap();
    let internal = XOnlyPublicKey::from_slice(&child.internal_key[1..]).unwrap();
    let source = (
        Fingerprint::from(fingerprint),
        DerivationPath::from(path.numbers().to_vec()),
    );
    BTreeMap::from([(internal, (Vec::new(), source))])
}

fn fingerprint(w: &Wallet) -> [u8; 4] {
    WalletXpub::new(&WALLET, &w.keypair.public_key().serialize(), false)
        .unwrap()
        .fingerprint()
}

/// Inputs spending the wallet's own key, a child named by its derivation and a child found by
/// script; change to a child named by its derivation. Each input is signed with its own key,
/// the transaction finalizes and Bitcoin Core's interpreter accepts it.
#[test]
fn children_are_spent_and_recognised_as_change_by_derivation() {
    let w = wallet(4);
    let fp = fingerprint(&w);
    let mut psbt = build(
        &[
            (10_000, w.script()),
            (20_000, w.child_script(receive(500))),
            (30_000, w.child_script(change(7))),
        ],
        &[
            (25_000, foreign_script()),
            (34_000, w.child_script(change(8))),
        ],
    );
    psbt.inputs[1].tap_key_origins = origin(&w, receive(500), fp);
    psbt.outputs[1].tap_key_origins = origin(&w, change(8), fp);
    let bytes = psbt.serialize();
    let s = analyze(&bytes, &w.keys(), Network::Regtest).unwrap();
    assert_eq!(
        s.input_paths,
        vec![None, Some(receive(500)), Some(change(7))]
    );
    assert_eq!(s.change, 34_000);
    assert_eq!(s.value_leaving, 26_000);
    assert_eq!(s.destinations.len(), 1);
    let sigs = w.sign_paths(&s.sighashes, &s.input_paths);
    let (txid, raw) = finalize(&bytes, &w.keys(), &sigs).unwrap();
    assert_eq!(txid, s.txid);
    consensus_verify(&raw, &prevouts_of(&psbt)).unwrap();
    with_key_sigs(&bytes, &w.keys(), &sigs).unwrap();
    // The wallet's own key does not sign for a child's input.
    let e = finalize(&bytes, &w.keys(), &w.sign(&s.sighashes)).unwrap_err();
    assert!(is_psbt_input(&e, 1), "{e}");
}

#[test]
fn a_derivation_is_believed_only_when_its_script_is_the_outputs() {
    let w = wallet(5);
    let fp = fingerprint(&w);
    // The output pays child 9, its label names child 10: value leaving, not change.
    let mut psbt = build(
        &[(50_000, w.script())],
        &[(49_000, w.child_script(change(9)))],
    );
    psbt.outputs[0].tap_key_origins = origin(&w, change(10), fp);
    let s = analyze(&psbt.serialize(), &w.keys(), Network::Regtest).unwrap();
    assert_eq!((s.change, s.value_leaving), (0, 50_000));
    // Another wallet's fingerprint: not ours either.
    psbt.outputs[0].tap_key_origins = origin(&w, change(9), [1, 2, 3, 4]);
    let s = analyze(&psbt.serialize(), &w.keys(), Network::Regtest).unwrap();
    assert_eq!((s.change, s.value_leaving), (0, 50_000));
    // No label: outputs are recognised by derivation only (as hardware wallets do).
    psbt.outputs[0].tap_key_origins.clear();
    let s = analyze(&psbt.serialize(), &w.keys(), Network::Regtest).unwrap();
    assert_eq!(s.change, 0);
    // Its true derivation: change.
    psbt.outputs[0].tap_key_origins = origin(&w, change(9), fp);
    let s = analyze(&psbt.serialize(), &w.keys(), Network::Regtest).unwrap();
    assert_eq!((s.change, s.value_leaving), (49_000, 1_000));
    // Without the extended key, a child is a stranger.
    let root = OwnKeys::root_only(&w.q).unwrap();
    let s = analyze(&psbt.serialize(), &root, Network::Regtest).unwrap();
    assert_eq!(s.change, 0);
}

#[test]
fn an_input_beyond_the_scan_window_needs_its_derivation() {
    let w = wallet(6);
    let fp = fingerprint(&w);
    let far = receive(SCAN_WINDOW);
    let mut psbt = build(&[(50_000, w.child_script(far))], &[(49_000, w.script())]);
    let e = analyze(&psbt.serialize(), &w.keys(), Network::Regtest).unwrap_err();
    assert!(is_psbt_input(&e, 0), "{e}");
    // A label naming another child (its script differs) is no help.
    psbt.inputs[0].tap_key_origins = origin(&w, receive(SCAN_WINDOW + 1), fp);
    let e = analyze(&psbt.serialize(), &w.keys(), Network::Regtest).unwrap_err();
    assert!(is_psbt_input(&e, 0), "{e}");
    psbt.inputs[0].tap_key_origins = origin(&w, far, fp);
    let s = analyze(&psbt.serialize(), &w.keys(), Network::Regtest).unwrap();
    assert_eq!(s.input_paths, vec![Some(far)]);
    // The last child inside the window is found by its script alone.
    let near = change(SCAN_WINDOW - 1);
    let psbt = build(&[(50_000, w.child_script(near))], &[(49_000, w.script())]);
    let s = analyze(&psbt.serialize(), &w.keys(), Network::Regtest).unwrap();
    assert_eq!(s.input_paths, vec![Some(near)]);
}

#[test]
fn key_signatures_are_read_back_from_the_published_transaction() {
    let w = wallet(7);
    let bytes = two_by_two(&w).serialize();
    let s = analyze(&bytes, &w.keys(), Network::Regtest).unwrap();
    let sigs = w.sign(&s.sighashes);
    let (_, tx) = finalize(&bytes, &w.keys(), &sigs).unwrap();
    assert_eq!(
        with_key_sigs_of_tx(&bytes, &w.keys(), &tx).unwrap(),
        with_key_sigs(&bytes, &w.keys(), &sigs).unwrap()
    );
    // Another transaction, or a bent signature: refused.
    let other = build(&[(5_000, w.script())], &[(4_000, foreign_script())]).serialize();
    assert!(with_key_sigs_of_tx(&other, &w.keys(), &tx).is_err());
    let mut bent: Transaction = encode::deserialize(&tx).unwrap();
    let mut sig = bent.input[1].witness.nth(0).unwrap().to_vec();
    sig[9] ^= 1;
    bent.input[1].witness = Witness::from_slice(&[sig]);
    let e = with_key_sigs_of_tx(&bytes, &w.keys(), &encode::serialize(&bent)).unwrap_err();
    assert!(is_psbt_input(&e, 1), "{e}");
    assert!(with_key_sigs_of_tx(&bytes, &w.keys(), b"junk").is_err());
}

#[test]
fn change_beyond_the_recoverable_range_counts_as_leaving() {
    let w = wallet(8);
    let fp = fingerprint(&w);
    for (index, counted) in [(MAX_CHANGE_INDEX, true), (MAX_CHANGE_INDEX + 1, false)] {
        let mut psbt = build(
            &[(50_000, w.script())],
            &[(49_000, w.child_script(change(index)))],
        );
        psbt.outputs[0].tap_key_origins = origin(&w, change(index), fp);
        let s = analyze(&psbt.serialize(), &w.keys(), Network::Regtest).unwrap();
        assert_eq!(s.change == 49_000, counted, "index {index}");
    }
}

#[test]
fn a_label_with_the_childs_key_but_another_path_is_not_believed() {
    let w = wallet(9);
    let fp = fingerprint(&w);
    let mut psbt = build(
        &[(50_000, w.script())],
        &[(49_000, w.child_script(change(3)))],
    );
    // The key is child 3's (its BIP-86 output key is the script), the path says child 4.
    let mut label = origin(&w, change(3), fp);
    for (_, (_, (_, path))) in label.iter_mut() {
        *path = DerivationPath::from(change(4).numbers().to_vec());
    }
    psbt.outputs[0].tap_key_origins = label;
    let s = analyze(&psbt.serialize(), &w.keys(), Network::Regtest).unwrap();
    assert_eq!(s.change, 0);
}

#[test]
fn too_many_inputs_or_outputs_are_refused_before_any_derivation() {
    let w = wallet(10);
    let inputs: Vec<(u64, ScriptBuf)> = (0..=MAX_INPUTS).map(|_| (1_000, w.script())).collect();
    let psbt = build(&inputs, &[(1_000, foreign_script())]);
    assert!(analyze(&psbt.serialize(), &w.keys(), Network::Regtest).is_err());
    let outputs: Vec<(u64, ScriptBuf)> = (0..=MAX_OUTPUTS).map(|_| (1, foreign_script())).collect();
    let psbt = build(&[(100_000, w.script())], &outputs);
    assert!(analyze(&psbt.serialize(), &w.keys(), Network::Regtest).is_err());
}

/// Outputs whose labels pass the cheap check (the key's output key is the script) but name the
/// wrong path, beyond the reading's derivation budget: still read, every one counted as leaving.
#[test]
fn crafted_labels_beyond_the_derivation_budget_are_read_as_leaving() {
    let w = wallet(11);
    let fp = fingerprint(&w);
    let n = usize::try_from(MAX_LABEL_DERIVATIONS).unwrap() + 10;
    let outputs: Vec<(u64, ScriptBuf)> = (0..n).map(|_| (10, w.child_script(change(3)))).collect();
    let mut psbt = build(&[(100_000, w.script())], &outputs);
    let mut label = origin(&w, change(3), fp);
    for (_, (_, (_, path))) in label.iter_mut() {
        *path = DerivationPath::from(change(4).numbers().to_vec());
    }
    for output in &mut psbt.outputs {
        output.tap_key_origins = label.clone();
    }
    let s = analyze(&psbt.serialize(), &w.keys(), Network::Regtest).unwrap();
    assert_eq!(s.change, 0);
    assert_eq!(s.destinations.len(), n);
}
