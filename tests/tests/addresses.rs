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
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/hd_wallets.py");
    let mut job = descriptors.clone();
    job["receive_indices"] = json!(receive);
    job["change_indices"] = json!(change);
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(job.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
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

    let descriptors = json_of(&d.cosigner([
        "--home",
        p(&home),
        "wallet",
        "descriptor",
        "--wallet",
        &id,
        "--json",
    ]));
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
