//! `cosigner attestation …` and `cosigner-enclave local-attester …` as processes: documents made by
//! one process verify in another; every bad input is a one-line refusal, never a panic.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::path::{Path, PathBuf};

use cosigner_tests::{Outcome, SoftHsm, require_fixtures, run};
use serde_json::Value;

const REAL: &str = "nitro/real-2022-10-13.cose";
const DEBUG: &str = "nitro/real-debug-2022-10-12.cose";
const AWS_ROOT: &str = "nitro/aws-nitro-root-g1.pem";
/// One second after real-2022-10-13.cose was made.
const REAL_AT: &str = "1665651483";
/// One second after real-debug-2022-10-12.cose was made.
const DEBUG_AT: &str = "1665582607";

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn verify_cmd(doc: &Path, root: &Path, extra: &[&str]) -> Outcome {
    let mut args = vec!["attestation", "verify", "--doc", p(doc), "--root", p(root)];
    args.extend_from_slice(extra);
    run("cosigner", args, &[])
}

/// A local attester made by `cosigner-enclave local-attester init` in a private SoftHSM.
struct Local {
    hsm: SoftHsm,
    dir: PathBuf,
    env: Vec<(String, String)>,
}

impl Local {
    fn new() -> Self {
        let hsm = SoftHsm::new().unwrap();
        let pin = hsm.dir().join("pin");
        let so_pin = hsm.dir().join("so-pin");
        std::fs::write(&pin, "4711-user\n").unwrap();
        std::fs::write(&so_pin, "4711-so\n").unwrap();
        let dir = hsm.dir().join("attester");
        let env = hsm.env();
        let out = run(
            "cosigner-enclave",
            [
                "local-attester",
                "init",
                "--dir",
                p(&dir),
                "--token-label",
                "cli-test",
                "--pin-file",
                p(&pin),
                "--so-pin-file",
                p(&so_pin),
            ],
            &env,
        );
        let json: Value = serde_json::from_str(out.ok()).unwrap();
        assert!(json["module_id"].as_str().unwrap().starts_with("local-"));
        assert_eq!(json["root_sha256"].as_str().unwrap().len(), 64);
        Self { hsm, dir, env }
    }

    fn attest(&self, name: &str, extra: &[&str]) -> PathBuf {
        let out_path = self.hsm.dir().join(name);
        let pin = self.hsm.dir().join("pin");
        let mut args = vec![
            "attest",
            "--dir",
            p(&self.dir),
            "--pin-file",
            p(&pin),
            "--out",
            p(&out_path),
        ];
        args.extend_from_slice(extra);
        self.command(&args).ok();
        out_path
    }

    /// `cosigner-enclave local-attester ARGS` with this attester's SoftHSM.
    fn command(&self, args: &[&str]) -> Outcome {
        let mut all = vec!["local-attester"];
        all.extend_from_slice(args);
        run("cosigner-enclave", all, &self.env)
    }

    fn root(&self) -> PathBuf {
        self.dir.join("root.pem")
    }
}

fn enclave_measurement() -> String {
    run("cosigner-enclave", ["measure"], &[])
        .ok()
        .trim()
        .to_owned()
}

#[test]
fn local_document_made_in_one_process_verifies_in_another() {
    let local = Local::new();
    let doc = local.attest(
        "doc.cose",
        &[
            "--nonce",
            "00ff",
            "--user-data",
            "abcd",
            "--public-key",
            "04aa",
        ],
    );
    let pcr0 = enclave_measurement();
    let out = verify_cmd(
        &doc,
        &local.root(),
        &[
            "--pcr",
            &format!("0={pcr0}"),
            "--pcr",
            &format!("2={pcr0}"),
            "--nonce",
            "00FF",
            "--user-data",
            "abcd",
            "--public-key",
            "04aa",
            "--max-age",
            "60",
        ],
    );
    let line = out.ok();
    assert_eq!(line.lines().count(), 1);
    let json: Value = serde_json::from_str(line).unwrap();
    assert_eq!(json["pcrs"]["0"], Value::String(pcr0));
    assert_eq!(json["nonce"], "00ff");
    assert_eq!(json["user_data"], "abcd");
    assert_eq!(json["public_key"], "04aa");
    assert_eq!(json["digest"], "SHA384");
    assert_eq!(json["debug"], false);
    assert!(json["timestamp"].as_u64().unwrap() > 1_700_000_000_000);
}

#[test]
fn local_document_is_refused_under_the_aws_root_and_with_wrong_expectations() {
    let fixtures = require_fixtures!();
    let local = Local::new();
    let doc = local.attest("doc.cose", &["--nonce", "01"]);
    let line = verify_cmd(&doc, &fixtures.join(AWS_ROOT), &[])
        .refused()
        .to_owned();
    assert!(line.contains("check `chain`"), "{line}");
    let line = verify_cmd(&doc, &local.root(), &["--nonce", "02"])
        .refused()
        .to_owned();
    assert!(line.contains("check `nonce`"), "{line}");
    let wrong_pcr = format!("0={}", "00".repeat(48));
    let line = verify_cmd(&doc, &local.root(), &["--pcr", &wrong_pcr])
        .refused()
        .to_owned();
    assert!(line.contains("check `pcr`"), "{line}");
    // An operator root from another token does not verify it either.
    let other = Local::new();
    let line = verify_cmd(&doc, &other.root(), &[]).refused().to_owned();
    assert!(line.contains("check `chain`"), "{line}");
}

#[test]
fn attest_without_a_pin_or_with_a_wrong_pin_is_refused() {
    let local = Local::new();
    let attest = ["attest", "--dir", p(&local.dir), "--out", "/dev/null"];
    let out = local.command(&attest);
    assert!(
        out.refused().contains("COSIGNER_PKCS11_PIN"),
        "{}",
        out.stderr
    );
    let wrong = local.hsm.dir().join("wrong-pin");
    std::fs::write(&wrong, "not-the-pin").unwrap();
    let out = local.command(&[&attest[..], &["--pin-file", p(&wrong)]].concat());
    out.refused();
    // And init refuses to overwrite an existing attester.
    let pin = local.hsm.dir().join("pin");
    let (dir, pin) = (p(&local.dir), p(&pin));
    let out = local.command(&[
        "init",
        "--dir",
        dir,
        "--pin-file",
        pin,
        "--so-pin-file",
        pin,
    ]);
    assert!(out.refused().contains("already holds an attester"));
}

#[test]
fn real_aws_document_verifies_at_its_own_time_with_the_documented_json() {
    let fixtures = require_fixtures!();
    let out = verify_cmd(
        &fixtures.join(REAL),
        &fixtures.join(AWS_ROOT),
        &["--at", REAL_AT],
    );
    let json: Value = serde_json::from_str(out.ok()).unwrap();
    assert_eq!(json["module_id"], "i-020b6af9246d90e92-enc0183d09086c24190");
    assert_eq!(json["timestamp"], 1_665_651_482_136u64);
    assert_eq!(json["digest"], "SHA384");
    let pcrs = json["pcrs"].as_object().unwrap();
    assert_eq!(pcrs.len(), 16);
    assert!(pcrs["0"].as_str().unwrap().starts_with("f4d48b81a460c991"));
    assert_eq!(json["nonce"].as_str().unwrap().len(), 512);
    assert_eq!(json["user_data"], Value::Null);
    assert_eq!(json["public_key"], Value::Null);
    assert_eq!(json["debug"], false);
    // Pinning what it carries still verifies.
    let pcr0 = format!("0={}", pcrs["0"].as_str().unwrap());
    let nonce = json["nonce"].as_str().unwrap().to_owned();
    verify_cmd(
        &fixtures.join(REAL),
        &fixtures.join(AWS_ROOT),
        &[
            "--at",
            REAL_AT,
            "--pcr",
            &pcr0,
            "--nonce",
            &nonce,
            "--max-age",
            "5",
        ],
    )
    .ok();
}

#[test]
fn real_aws_document_is_refused_now_and_with_wrong_pins() {
    let fixtures = require_fixtures!();
    let (doc, root) = (fixtures.join(REAL), fixtures.join(AWS_ROOT));
    let line = verify_cmd(&doc, &root, &[]).refused().to_owned();
    assert!(
        line.contains("check `chain`") && line.contains("expired"),
        "{line}"
    );
    let line = verify_cmd(&doc, &root, &["--at", REAL_AT, "--nonce", "00"])
        .refused()
        .to_owned();
    assert!(line.contains("check `nonce`"), "{line}");
    let wrong = format!("1={}", "ab".repeat(48));
    let line = verify_cmd(&doc, &root, &["--at", REAL_AT, "--pcr", &wrong])
        .refused()
        .to_owned();
    assert!(
        line.contains("check `pcr`") && line.contains("PCR1"),
        "{line}"
    );
    // 1.1 s before the document was made: a verifier whose clock is a second slow. Refused
    // without skew; accepted with the default five minutes.
    let line = verify_cmd(
        &doc,
        &root,
        &["--at", "1665651481", "--max-clock-skew", "0"],
    )
    .refused()
    .to_owned();
    assert!(
        line.contains("check `timestamp`") && line.contains("clock skew of 0 ms"),
        "{line}"
    );
    verify_cmd(&doc, &root, &["--at", "1665651481"]).ok();
}

#[test]
fn max_clock_skew_flag_sets_how_far_ahead_a_document_may_be() {
    let local = Local::new();
    let doc = local.attest("doc.cose", &[]);
    let out = verify_cmd(&doc, &local.root(), &[]);
    let json: Value = serde_json::from_str(out.ok()).unwrap();
    let made_s = json["timestamp"].as_u64().unwrap() / 1000;
    // Verify as a clock 30 to 31 s behind the attester's (the attester's leaf has a minute of
    // slack before it was made, so its chain is valid then too).
    let behind = (made_s - 30).to_string();
    let refuse = |skew: &str| {
        let line = verify_cmd(
            &doc,
            &local.root(),
            &["--at", &behind, "--max-clock-skew", skew],
        )
        .refused()
        .to_owned();
        assert!(line.contains("check `timestamp`"), "{skew}: {line}");
        line
    };
    // The default (300 s) accepts it, with --max-age too: the skew never ages a document.
    verify_cmd(&doc, &local.root(), &["--at", &behind]).ok();
    verify_cmd(&doc, &local.root(), &["--at", &behind, "--max-age", "1"]).ok();
    verify_cmd(
        &doc,
        &local.root(),
        &["--at", &behind, "--max-clock-skew", "32"],
    )
    .ok();
    assert!(refuse("0").contains("clock skew of 0 ms"));
    assert!(refuse("10").contains("clock skew of 10000 ms"));
    // Out of range or not a number: clap's usage error, exit 2.
    for bad in ["-1", "soon", "86401"] {
        let out = verify_cmd(&doc, &local.root(), &["--max-clock-skew", bad]);
        assert_eq!(out.code, Some(2), "{bad}: {}", out.stderr);
        assert!(!out.stderr.contains("panicked"));
    }
    verify_cmd(&doc, &local.root(), &["--max-clock-skew", "86400"]).ok();
}

#[test]
fn debug_document_only_with_allow_debug() {
    let fixtures = require_fixtures!();
    let (doc, root) = (fixtures.join(DEBUG), fixtures.join(AWS_ROOT));
    let line = verify_cmd(&doc, &root, &["--at", DEBUG_AT])
        .refused()
        .to_owned();
    assert!(line.contains("check `debug`"), "{line}");
    let out = verify_cmd(&doc, &root, &["--at", DEBUG_AT, "--allow-debug"]);
    let json: Value = serde_json::from_str(out.ok()).unwrap();
    assert_eq!(json["debug"], true);
    assert_eq!(json["pcrs"]["0"], "00".repeat(48));
    assert!(json["user_data"].is_string() && json["public_key"].is_string());
    assert_eq!(json["nonce"], Value::Null);
}

#[test]
fn inspect_labels_its_output_unverified() {
    let fixtures = require_fixtures!();
    let out = run(
        "cosigner",
        ["attestation", "inspect", "--doc", p(&fixtures.join(REAL))],
        &[],
    );
    assert!(out.stderr.contains("UNVERIFIED"));
    let json: Value = serde_json::from_str(out.ok()).unwrap();
    assert_eq!(json["status"], "UNVERIFIED");
    assert_eq!(json["cabundle"].as_array().unwrap().len(), 4);
    assert_eq!(
        json["cabundle"][0]["sha256"],
        "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"
    );
}

#[test]
fn bad_documents_are_refused_in_one_line_without_panicking() {
    let hsm = SoftHsm::new().unwrap(); // only for its temp dir
    let dir = hsm.dir();
    let real = cosigner_tests::shared_fixtures().map(|f| std::fs::read(f.join(REAL)).unwrap());
    // Without the fixtures, a local attester's root; kept alive (its directory) for the test.
    let local;
    let root = match cosigner_tests::shared_fixtures() {
        Some(f) => f.join(AWS_ROOT),
        None => {
            local = Local::new();
            local.root()
        }
    };
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("oversized", vec![0x84; 16 * 1024 + 1]),
        ("a CBOR map", vec![0xa1, 0x01, 0x02]),
        ("an empty array", vec![0x80]),
        ("deep nesting", vec![0x81; 4000]),
        (
            "random",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect(),
        ),
    ];
    if let Some(real) = &real {
        cases.push(("truncated", real[..real.len() / 2].to_vec()));
        cases.push(("trailing byte", [real.as_slice(), &[0]].concat()));
    }
    for (what, bytes) in cases {
        let path = dir.join("bad.cose");
        std::fs::write(&path, &bytes).unwrap();
        let out = verify_cmd(&path, &root, &[]);
        let line = out.refused();
        assert!(line.contains("check `structure`"), "{what}: {line}");
        let out = run(
            "cosigner",
            ["attestation", "inspect", "--doc", p(&path)],
            &[],
        );
        out.refused();
    }
}

#[test]
fn bad_flags_and_files_are_refused_without_panicking() {
    let hsm = SoftHsm::new().unwrap();
    let not_pem = hsm.dir().join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let missing = hsm.dir().join("missing");
    // Unreadable or unusable files: exit 1 and one line.
    verify_cmd(&missing, &not_pem, &[]).refused();
    verify_cmd(&not_pem, &not_pem, &[]).refused();
    let doc = hsm.dir().join("doc");
    std::fs::write(&doc, [0x80]).unwrap();
    let line = verify_cmd(&doc, &not_pem, &[]).refused().to_owned();
    assert!(line.contains("root"), "{line}");
    // Malformed flags: clap's usage error, exit 2, no panic.
    for flags in [
        &["--nonce", "zz"][..],
        &["--pcr", "0=00"],
        &["--pcr", "40=00"],
        &["--at", "-5"],
        &["--max-age", "soon"],
    ] {
        let out = verify_cmd(&doc, &not_pem, flags);
        assert_eq!(out.code, Some(2), "{flags:?}: {}", out.stderr);
        assert!(!out.stderr.contains("panicked"));
    }
}
