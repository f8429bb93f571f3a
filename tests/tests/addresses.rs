//! Many addresses per wallet: `cosigner wallet descriptor` and `cosigner address` against
//! independent wallet software. BDK (bdkpython, PyPI) imports the descriptors as a watch-only
//! wallet and embit parses them (the multipath one too); both must derive exactly the addresses
//! cosigner hands out. Skips the cross-check (saying so) where those Python packages are absent.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use cosigner_tests::Deployment;
use serde_json::{Value, json};

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn json_of(out: &cosigner_tests::Outcome) -> Value {
    serde_json::from_str(out.ok()).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

/// `wallet descriptor --json` of wallet `id` in `home`.
fn descriptor_of(d: &Deployment, home: &Path, id: &str) -> Value {
    json_of(&d.cosigner([
        "--home",
        p(home),
        "wallet",
        "descriptor",
        "--wallet",
        id,
        "--json",
    ]))
}

fn python_has_wallets() -> bool {
    Command::new("python3")
        .args(["-c", "import bdkpython, embit"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What BDK and embit derive from `descriptors` at the given indices.
fn derived_elsewhere(descriptors: &Value, receive: &[u32], change: &[u32]) -> Value {
    let mut job = descriptors.clone();
    job["receive_indices"] = json!(receive);
    job["change_indices"] = json!(change);
    wallet_software(&job)
}

/// Runs `command` with `stdin` written to it; what it printed and returned.
fn piped(mut command: Command, stdin: &str) -> std::process::Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Runs tests/py/hd_wallets.py with `job` (its modes are documented there).
fn wallet_software(job: &Value) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/hd_wallets.py");
    let mut command = Command::new("python3");
    command.arg(script);
    let out = piped(command, &job.to_string());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn addresses_are_handed_out_in_order_and_match_what_bdk_and_embit_derive() {
    let d = Deployment::start().unwrap();
    let home = d.home("alice");
    let w = json_of(&d.cosigner(["--home", p(&home), "wallet", "create", "--json"]));
    let id = w["wallet_id"].as_str().unwrap().to_owned();
    let address = |extra: &[&str]| {
        let mut a = vec!["--home", p(&home), "address", "--wallet", &id, "--json"];
        a.extend(extra);
        json_of(&d.cosigner(a))
    };
    // The next unused receive address, three times; a change address; a chosen index, after
    // which the next unused one is past it.
    let handed: Vec<Value> = (0..3).map(|_| address(&[])).collect();
    for (i, a) in handed.iter().enumerate() {
        assert_eq!(a["index"], i);
        assert_eq!(a["derivation"], format!("m/0/{i}"));
        assert!(a["address"].as_str().unwrap().starts_with("bcrt1p"), "{a}");
        assert_eq!(a["output_key"].as_str().unwrap().len(), 64);
    }
    let change = address(&["--change"]);
    assert_eq!(change["derivation"], "m/1/0");
    let seventh = address(&["--index", "7"]);
    assert_eq!(seventh["derivation"], "m/0/7");
    assert_eq!(address(&[])["index"], 8);
    assert_eq!(
        address(&["--index", "1"]),
        handed[1],
        "the same index, the same address"
    );
    assert_ne!(
        handed[0]["address"], w["address"],
        "children are not the root key"
    );

    // Out of BIP-32's non-hardened range, and an Ethereum-less typo: one-line errors.
    let out = d.cosigner([
        "--home",
        p(&home),
        "address",
        "--wallet",
        &id,
        "--index",
        "2147483648",
    ]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("above"), "{}", out.stderr);

    let descriptors = descriptor_of(&d, &home, &id);
    let fingerprint = descriptors["fingerprint"].as_str().unwrap();
    let xpub = descriptors["xpub"].as_str().unwrap();
    assert!(xpub.starts_with("tpub"), "regtest keys are tpubs: {xpub}");
    let receive = descriptors["receive"].as_str().unwrap();
    assert!(
        receive.starts_with(&format!("tr([{fingerprint}]{xpub}/0/*)#")),
        "{receive}"
    );
    assert!(
        descriptors["multipath"]
            .as_str()
            .unwrap()
            .contains("/<0;1>/*)#")
    );

    if !python_has_wallets() {
        println!("SKIPPED the BDK/embit cross-check: python3 lacks bdkpython or embit (make deps)");
        return;
    }
    let elsewhere = derived_elsewhere(&descriptors, &[0, 1, 2, 7, 8], &[0]);
    for lib in ["bdk", "embit"] {
        for (i, a) in handed.iter().enumerate() {
            assert_eq!(
                elsewhere[lib]["receive"][i.to_string()],
                a["address"],
                "{lib} {i}"
            );
        }
        assert_eq!(elsewhere[lib]["receive"]["7"], seventh["address"], "{lib}");
        assert_eq!(elsewhere[lib]["change"]["0"], change["address"], "{lib}");
    }
}

/// Signs `psbt` (base64) with the wallet through the provider: the `--json` answer, and the
/// PSBT `--psbt-out` wrote.
fn sign(d: &Deployment, home: &Path, id: &str, psbt: &str) -> (Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let (file, out) = (dir.path().join("in.psbt"), dir.path().join("out.psbt"));
    std::fs::write(&file, psbt).unwrap();
    let signed = json_of(&d.cosigner([
        "--home",
        p(home),
        "sign",
        "--wallet",
        id,
        "--psbt",
        p(&file),
        "--psbt-out",
        p(&out),
        "--json",
    ]));
    let written = std::fs::read_to_string(&out).unwrap().trim().to_owned();
    assert_eq!(signed["psbt"], written.as_str());
    (signed, written)
}

/// The outputs `tx_hex`'s inputs spend, read from `funding` (hex) by their vout.
fn prevouts_in(tx_hex: &str, funding: &str) -> Vec<bitcoin::TxOut> {
    let tx: bitcoin::Transaction =
        bitcoin::consensus::deserialize(&hex::decode(tx_hex).unwrap()).unwrap();
    let funding: bitcoin::Transaction =
        bitcoin::consensus::deserialize(&hex::decode(funding).unwrap()).unwrap();
    tx.input
        .iter()
        .map(|i| {
            assert_eq!(i.previous_output.txid, funding.compute_txid());
            funding.output[i.previous_output.vout as usize].clone()
        })
        .collect()
}

#[test]
fn psbts_spending_derived_addresses_are_signed_and_bdk_finalizes_them() {
    use cosigner_tests::bitcoin_tx;
    let d = Deployment::start().unwrap();
    let home = d.home("bob");
    let w = json_of(&d.cosigner(["--home", p(&home), "wallet", "create", "--json"]));
    let id = w["wallet_id"].as_str().unwrap().to_owned();
    let address = |index: &str| {
        let a = [
            "--home",
            p(&home),
            "address",
            "--wallet",
            &id,
            "--index",
            index,
        ];
        json_of(&d.cosigner([&a[..], &["--json"]].concat()))
    };
    let fourth = address("4");

    // A PSBT without BIP-32 labels spending child m/0/4: found by its script. Its "change" back
    // to that child carries no derivation, so it is counted as leaving (hardware wallets
    // recognise change by derivation only).
    let key = fourth["output_key"].as_str().unwrap();
    let spend = bitcoin_tx::payment(key, &[60_000, 40_000], 50_000, 49_000).unwrap();
    let (signed, _) = sign(&d, &home, &id, &spend.psbt_base64);
    assert_eq!(signed["value_leaving"], 100_000);
    assert_eq!(signed["fee"], 1_000);
    bitcoin_tx::verify_consensus(signed["tx_hex"].as_str().unwrap(), &spend.prevouts).unwrap();

    // A stranger's output is not signed, whatever it says: one line, exit 1.
    // (The stranger's key: secp256k1's generator, whose x-coordinate is a valid x-only key.)
    let generator = "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798";
    let stranger = bitcoin_tx::payment(generator, &[10_000], 9_000, 0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("s.psbt"), &stranger.psbt_base64).unwrap();
    let out = d.cosigner([
        "--home",
        p(&home),
        "sign",
        "--wallet",
        &id,
        "--psbt",
        p(&dir.path().join("s.psbt")),
    ]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("input 0"), "{}", out.stderr);

    if !python_has_wallets() {
        println!("SKIPPED the BDK round trip: python3 lacks bdkpython or embit (make deps)");
        return;
    }
    // BDK, watching the descriptor, sees payments to m/0/4 and m/0/9 and builds a PSBT paying
    // a stranger with change to its own change address; cosigner signs every input with its
    // child's key and recognises the change by its derivation; BDK finalizes what cosigner
    // signed into the transaction cosigner finalized itself.
    let mut job = descriptor_of(&d, &home, &id);
    let ninth = address("9");
    job["mode"] = json!("spend");
    job["fund"] = json!([[fourth["address"], 50_000], [ninth["address"], 30_000]]);
    job["to"] = json!(bitcoin_tx::foreign_address());
    job["amount"] = json!(60_000);
    let built = wallet_software(&job);
    let (signed, written) = sign(&d, &home, &id, built["psbt"].as_str().unwrap());
    let change = signed["change"].as_u64().unwrap();
    assert!(change > 0, "BDK's change output is recognised: {signed}");
    assert_eq!(
        signed["value_leaving"].as_u64().unwrap(),
        60_000 + signed["fee"].as_u64().unwrap()
    );
    let funding = built["funding_tx"].as_str().unwrap();
    let tx_hex = signed["tx_hex"].as_str().unwrap();
    bitcoin_tx::verify_consensus(tx_hex, &prevouts_in(tx_hex, funding)).unwrap();
    job["mode"] = json!("finalize");
    job["funding_tx"] = json!(funding);
    job["psbt"] = json!(written);
    let finalized = wallet_software(&job);
    assert_eq!(finalized["finalized"], true, "{finalized}");
    assert_eq!(finalized["tx_hex"], tx_hex);
}

/// Runs `cosigner-hwi` as Bitcoin Core does: the deployment's environment and `home`, `args`,
/// and `stdin`.
fn hwi(d: &Deployment, home: &Path, args: &[&str], stdin: &str) -> (Option<i32>, Value, String) {
    let mut command = Command::new(cosigner_tests::bin("cosigner-hwi"));
    command
        .args(args)
        .envs(d.env())
        .env("COSIGNER_HOME", home)
        .env_remove("COSIGNER_HWI_WALLET");
    let out = piped(command, stdin);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), value, stderr)
}

#[test]
fn bitcoin_cores_external_signer_commands_are_answered_by_cosigner_hwi() {
    use cosigner_tests::bitcoin_tx;
    use std::str::FromStr;
    let d = Deployment::start().unwrap();
    let home = d.home("carol");
    let w = json_of(&d.cosigner(["--home", p(&home), "wallet", "create", "--json"]));
    let id = w["wallet_id"].as_str().unwrap().to_owned();
    let descriptors = descriptor_of(&d, &home, &id);
    let fp = descriptors["fingerprint"].as_str().unwrap().to_owned();

    // enumerate: this wallet, by its fingerprint.
    let (code, listed, _) = hwi(&d, &home, &["enumerate"], "");
    assert_eq!(code, Some(0));
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["fingerprint"], fp.as_str());
    assert_eq!(listed[0]["label"], id.as_str());

    // getdescriptors: what `wallet descriptor` prints, as Core imports them.
    let core = |cmd: &[&str]| {
        let mut args = vec!["--fingerprint", &fp, "--chain", "regtest"];
        args.extend(cmd);
        hwi(&d, &home, &args, "")
    };
    let (code, got, _) = core(&["getdescriptors", "--account", "0"]);
    assert_eq!(code, Some(0), "{got}");
    assert_eq!(got["receive"][0], descriptors["receive"]);
    assert_eq!(got["internal"][0], descriptors["change"]);
    // Refusals: one line on stderr, HWI's error object on stdout, exit 1.
    for (args, fingerprint) in [
        (vec!["getdescriptors", "--account", "1"], fp.as_str()),
        (vec!["getdescriptors"], "00000000"),
    ] {
        let mut all = vec!["--fingerprint", fingerprint, "--chain", "regtest"];
        all.extend(args);
        let (code, got, stderr) = hwi(&d, &home, &all, "");
        assert_eq!(code, Some(1), "{got}");
        assert!(got["error"].is_string(), "{got}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
    let (code, got, _) = hwi(
        &d,
        &home,
        &["--fingerprint", &fp, "--chain", "main", "getdescriptors"],
        "",
    );
    assert_eq!(code, Some(1), "another network: {got}");
    let (code, got, _) = hwi(&d, &home, &["--fingerprint", &fp, "getdescriptors"], "");
    assert_eq!(code, Some(1), "no network said: {got}");

    // displayaddress: Core's inferred descriptor (origin path, the child's x-only key) and the
    // xpub form both name m/0/3, whose address `cosigner address` hands out.
    let third = json_of(&d.cosigner([
        "--home",
        p(&home),
        "address",
        "--wallet",
        &id,
        "--index",
        "3",
        "--json",
    ]));
    let xpub = bitcoin::bip32::Xpub::from_str(descriptors["xpub"].as_str().unwrap()).unwrap();
    let secp = bitcoin::secp256k1::Secp256k1::verification_only();
    let path = bitcoin::bip32::DerivationPath::from_str("m/0/3").unwrap();
    let internal = xpub.derive_pub(&secp, &path).unwrap().public_key;
    let x_only = hex::encode(internal.x_only_public_key().0.serialize());
    for desc in [
        format!("tr([{fp}/0/3]{x_only})"),
        format!("tr([{fp}]{}/0/3)", descriptors["xpub"].as_str().unwrap()),
    ] {
        let (code, got, _) = core(&["displayaddress", "--desc", &desc]);
        assert_eq!(code, Some(0), "{desc}: {got}");
        assert_eq!(got["address"], third["address"], "{desc}");
    }
    // Another child's key under this path, or another fingerprint: refused.
    let (code, _, _) = core(&[
        "displayaddress",
        "--desc",
        &format!("tr([{fp}/0/4]{x_only})"),
    ]);
    assert_eq!(code, Some(1));
    let (code, _, _) = core(&[
        "displayaddress",
        "--desc",
        &format!("tr([deadbeef/0/3]{x_only})"),
    ]);
    assert_eq!(code, Some(1));

    // signtx, as Core sends it (--stdin, "signtx <psbt>"): every input of child m/0/3 gets its
    // key signature; finalized, the transaction passes Bitcoin's consensus rules.
    let key = third["output_key"].as_str().unwrap();
    let spend = bitcoin_tx::payment(key, &[30_000, 20_000], 40_000, 9_000).unwrap();
    let (code, got, stderr) = hwi(
        &d,
        &home,
        &["--stdin", "--fingerprint", &fp, "--chain", "regtest"],
        &format!("signtx {}\n", spend.psbt_base64),
    );
    assert_eq!(code, Some(0), "{got} {stderr}");
    let tx_hex = bitcoin_tx::finalized_by_hand(got["psbt"].as_str().unwrap()).unwrap();
    bitcoin_tx::verify_consensus(&tx_hex, &spend.prevouts).unwrap();
    // Bitcoin Core 24-27 quote the PSBT.
    let (code, got, stderr) = hwi(
        &d,
        &home,
        &["--stdin", "--fingerprint", &fp, "--chain", "regtest"],
        &format!("signtx \"{}\"", spend.psbt_base64),
    );
    assert_eq!(code, Some(0), "{got} {stderr}");
    assert!(got["psbt"].is_string());
    // Garbage on stdin: an error, not a panic.
    let (code, got, _) = hwi(
        &d,
        &home,
        &["--stdin", "--fingerprint", &fp, "--chain", "regtest"],
        "signtx not-a-psbt",
    );
    assert_eq!(code, Some(1), "{got}");

    // A second wallet: two signers; COSIGNER_HWI_WALLET keeps the one Core should see.
    json_of(&d.cosigner(["--home", p(&home), "wallet", "create", "--json"]));
    let (_, listed, _) = hwi(&d, &home, &["enumerate"], "");
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    let (_, listed, _) = hwi(&d, &home, &["--wallet", &id, "enumerate"], "");
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["fingerprint"], fp.as_str());
}
