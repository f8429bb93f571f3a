//! The Nitro enclave build cannot select the local attester.
//!
//! The image is built as `cargo build -p cosigner-enclave --no-default-features --features nitro`
//! (`scripts/enclave-image.sh`). These tests ask cargo itself which features that build resolves
//! (`cargo tree`, normal and build dependencies only, for the image's target) and check:
//!
//! * no package in it has the `local-attester` feature: not `cosigner-enclave`, not
//!   `cosigner-attestation` (whose `local-attester` feature is what links `LocalAttester` and its
//!   PKCS#11 signing path through `cosigner-kms`), not any other crate that might grow one;
//! * `cosigner-attestation` is built with `nitro` and does not depend on `cosigner-kms` at all;
//! * the default build, by contrast, *does* have `local-attester` and that dependency, so the
//!   check can fail and is not vacuous;
//! * and, from the source, `run.rs` maps `AttesterConfig::Local` to an error when the feature is
//!   off (a configuration that asks for the local attester is refused, not silently served).
//!
//! Cargo: `$CARGO` (set by cargo for the tests it runs), else the cargo that compiled this test,
//! else `cargo` on `PATH`; not found is a failure, not a skip. `--locked` always; `--offline` first
//! (the lock file's packages are normally fetched by the build that compiled this test), then once
//! more online if offline resolution fails (a clean clone that never built the `nitro` feature).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The image's target (the test host may be another; features are resolved for this one).
const TARGET: &str = "x86_64-unknown-linux-gnu";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("enclave/ has a parent")
        .to_path_buf()
}

fn cargo() -> String {
    std::env::var("CARGO")
        .ok()
        .or_else(|| option_env!("CARGO").map(str::to_owned))
        .unwrap_or_else(|| "cargo".to_owned())
}

/// One resolved package of the tree: name, enabled features, and the names of its dependencies.
#[derive(Debug, Default, Clone)]
struct Package {
    features: Vec<String>,
    deps: Vec<String>,
}

/// `cargo tree` for cosigner-enclave with `feature_args`, as package name -> [`Package`].
fn resolve(feature_args: &[&str]) -> std::collections::BTreeMap<String, Package> {
    let cargo = cargo();
    let run = |offline: bool| {
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(workspace_root())
            .args(["tree", "-p", "cosigner-enclave"])
            .args(feature_args)
            .args(["-e", "normal,build", "--target", TARGET])
            .args(["--prefix", "depth", "--format", "{p}|{f}", "--locked"])
            // Ours only: a terminal's colour settings must not reach the output we parse.
            .env("CARGO_TERM_COLOR", "never");
        if offline {
            cmd.arg("--offline");
        }
        cmd.output().unwrap_or_else(|e| {
            panic!("cannot run cargo ({cargo:?}): {e}; set CARGO to the cargo binary")
        })
    };
    let mut out = run(true);
    if !out.status.success() {
        let offline_err = String::from_utf8_lossy(&out.stderr).into_owned();
        out = run(false);
        assert!(
            out.status.success(),
            "cargo tree {feature_args:?} failed offline:\n{offline_err}\nand online:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_tree(&String::from_utf8(out.stdout).expect("cargo tree prints UTF-8"))
}

/// Parses `--prefix depth --format '{p}|{f}'`: `<depth><name> v<version>[ (...)]|<f1,f2>[ (*)]`.
fn parse_tree(text: &str) -> std::collections::BTreeMap<String, Package> {
    let mut packages = std::collections::BTreeMap::<String, Package>::new();
    // The chain of names from the root to the current line's parent.
    let mut stack: Vec<String> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let digits = line.bytes().take_while(u8::is_ascii_digit).count();
        let depth: usize = line[..digits]
            .parse()
            .unwrap_or_else(|_| panic!("no depth in {line:?}"));
        let rest = &line[digits..];
        let (package, features) = rest
            .split_once('|')
            .unwrap_or_else(|| panic!("no '|' in {line:?}"));
        let name = package
            .split_whitespace()
            .next()
            .unwrap_or_else(|| panic!("no name in {line:?}"))
            .to_owned();
        let features: Vec<String> = features
            .trim_end_matches(" (*)")
            .split(',')
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .map(str::to_owned)
            .collect();
        stack.truncate(depth);
        if let Some(parent) = stack.last() {
            let deps = &mut packages.entry(parent.clone()).or_default().deps;
            if !deps.contains(&name) {
                deps.push(name.clone());
            }
        }
        let entry = packages.entry(name.clone()).or_default();
        for f in features {
            if !entry.features.contains(&f) {
                entry.features.push(f);
            }
        }
        stack.push(name);
    }
    assert!(
        packages.contains_key("cosigner-enclave"),
        "cargo tree printed no cosigner-enclave:\n{text}"
    );
    packages
}

fn with_local_attester(packages: &std::collections::BTreeMap<String, Package>) -> Vec<&str> {
    packages
        .iter()
        .filter(|(_, p)| p.features.iter().any(|f| f == "local-attester"))
        .map(|(name, _)| name.as_str())
        .collect()
}

#[test]
fn the_nitro_build_has_no_local_attester() {
    let nitro = resolve(&["--no-default-features", "--features", "nitro"]);
    assert_eq!(
        with_local_attester(&nitro),
        Vec::<&str>::new(),
        "the Nitro enclave build enables `local-attester`"
    );
    let attestation = nitro
        .get("cosigner-attestation")
        .expect("the enclave depends on cosigner-attestation");
    assert!(
        attestation.features.iter().any(|f| f == "nitro"),
        "{attestation:?}"
    );
    assert!(
        !attestation.deps.iter().any(|d| d == "cosigner-kms"),
        "cosigner-attestation pulls cosigner-kms (the PKCS#11 attester path) in the Nitro build: \
         {attestation:?}"
    );
    let enclave = &nitro["cosigner-enclave"];
    assert!(enclave.features.iter().any(|f| f == "nitro"), "{enclave:?}");
}

/// The same check on the default build finds the local attester: the test above can fail.
#[test]
fn the_default_build_has_the_local_attester() {
    let default = resolve(&[]);
    let found = with_local_attester(&default);
    assert!(found.contains(&"cosigner-enclave"), "{found:?}");
    assert!(found.contains(&"cosigner-attestation"), "{found:?}");
    assert!(
        default["cosigner-attestation"]
            .deps
            .iter()
            .any(|d| d == "cosigner-kms"),
        "{:?}",
        default["cosigner-attestation"]
    );
}

/// Without the feature, a configuration asking for the local attester is an error in `run.rs`:
/// every `AttesterConfig::Local` arm is under a `local-attester` cfg, and the one for the
/// feature's absence fails.
#[test]
fn run_refuses_a_local_attester_config_without_the_feature() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/run.rs");
    let source = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = source.lines().map(str::trim).collect();
    let arms: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("AttesterConfig::Local"))
        .map(|(i, _)| i)
        .collect();
    assert!(!arms.is_empty(), "no AttesterConfig::Local arm in {path:?}");
    let mut refused = false;
    for i in arms {
        let cfg = if i > 0 { lines[i - 1] } else { "" };
        match cfg {
            "#[cfg(feature = \"local-attester\")]" => {}
            "#[cfg(not(feature = \"local-attester\"))]" => {
                // The arm, up to the next arm or the end of the match.
                let body: Vec<&str> = lines[i..]
                    .iter()
                    .take_while(|l| !l.starts_with("#[cfg"))
                    .take(12)
                    .copied()
                    .collect();
                let body = body.join(" ");
                assert!(
                    body.contains("bail!") || body.contains("Err("),
                    "the arm without the feature does not fail: {body}"
                );
                assert!(!body.contains("LocalAttester::"), "{body}");
                refused = true;
            }
            other => panic!(
                "AttesterConfig::Local at {path:?}:{} is not under a local-attester cfg ({other:?})",
                i + 1
            ),
        }
    }
    assert!(
        refused,
        "no `#[cfg(not(feature = \"local-attester\"))] AttesterConfig::Local` arm in {path:?}"
    );
}

#[test]
fn the_tree_parser_reads_depths_features_and_dedup_marks() {
    let packages = parse_tree(
        "0cosigner-enclave v0.1.0 (/x/enclave)|nitro\n\
         1cosigner-attestation v0.1.0 (/x/attestation)|nitro\n\
         2thiserror v2.0.0|default,std\n\
         1cosigner-kms v0.1.0 (/x/kms)|\n\
         2thiserror v2.0.0|default,std (*)\n",
    );
    assert_eq!(
        packages["cosigner-enclave"].deps,
        ["cosigner-attestation", "cosigner-kms"]
    );
    assert_eq!(packages["cosigner-attestation"].deps, ["thiserror"]);
    assert_eq!(packages["cosigner-kms"].deps, ["thiserror"]);
    assert_eq!(packages["thiserror"].features, ["default", "std"]);
    assert!(packages["cosigner-kms"].features.is_empty());
}
