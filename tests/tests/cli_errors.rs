//! The `cosigner` binary's errors as a user meets them: exit code 1 and one line on stderr, in
//! the user's terms (the file or cosigner it concerns named, no library URL, no OS error number);
//! `status` reporting every cosigner; `wallet show` offline and for DAO wallets.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cosigner_tests::wallets::{deployment_with_alice, p, show, sign};
use cosigner_tests::{Deployment, Outcome, run};
use serde_json::Value;

/// The user-facing contract of a refusal: exit 1, one line, no URL, no OS error number.
fn refused(out: &Outcome) -> String {
    let line = out.refused().to_owned();
    assert!(!line.contains("https://"), "{line}");
    assert!(!line.contains("http://"), "{line}");
    assert!(!line.contains("os error"), "{line}");
    line
}

fn json(out: &Outcome) -> Value {
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {:?}", out.stdout))
}

#[test]
fn files_are_named_in_their_errors_without_a_cosigner() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let a_dir = dir.path().join("a-directory");
    std::fs::create_dir(&a_dir).unwrap();
    let a_file = dir.path().join("a-file");
    std::fs::write(&a_file, "not a key").unwrap();
    let env = [
        (
            "COSIGNER_PROVIDER".to_owned(),
            "tcp://127.0.0.1:1".to_owned(),
        ),
        ("COSIGNER_TRUST".to_owned(), p(&a_dir).to_owned()),
    ];
    let cosigner = |args: &[&str]| run("cosigner", args, &env);

    // The trust file is a directory; then missing.
    let line = refused(&cosigner(&["status"]));
    assert!(line.contains(p(&a_dir)), "{line}");
    let missing = dir.path().join("missing.toml");
    let line = refused(&cosigner(&["--trust", p(&missing), "status", "--json"]));
    assert!(line.contains(p(&missing)), "{line}");
    // A root the trust file names is missing: that root is named.
    let trust = dir.path().join("trust.toml");
    std::fs::write(&trust, "roots = [\"nowhere.pem\"]\n").unwrap();
    let line = refused(&cosigner(&["--trust", p(&trust), "status"]));
    assert!(line.contains("nowhere.pem"), "{line}");
    // A trust file that is not TOML: one line (toml's own message spans several).
    std::fs::write(&trust, "roots = [\n").unwrap();
    let line = refused(&cosigner(&["--trust", p(&trust), "status"]));
    assert!(line.contains(p(&trust)), "{line}");

    // The home is a file.
    let line = refused(&cosigner(&["--home", p(&a_file), "wallet", "list"]));
    assert!(line.contains(p(&a_file)), "{line}");
    assert!(
        !line.contains("wallets"),
        "names the home, not a path inside it: {line}"
    );

    // Files given on the command line.
    for flag in ["--policy", "--enrollment-token"] {
        let line = refused(&cosigner(&[
            "--home",
            p(&home),
            "wallet",
            "create",
            flag,
            p(&a_dir),
        ]));
        assert!(line.contains(p(&a_dir)), "{line}");
    }
    let id = "00".repeat(16);
    for key in [&a_dir, &a_file] {
        let line = refused(&cosigner(&[
            "--home",
            p(&home),
            "wallet",
            "set-policy",
            "--wallet",
            &id,
            "--recovery-key",
            p(key),
            "--remove",
        ]));
        assert!(line.contains(p(key)), "{line}");
    }
    let line = refused(&cosigner(&[
        "attestation",
        "verify",
        "--doc",
        p(&a_dir),
        "--root",
        p(&a_dir),
    ]));
    assert!(line.contains(p(&a_dir)), "{line}");

    // An unknown wallet, offline.
    let line = refused(&cosigner(&[
        "--home",
        p(&home),
        "wallet",
        "show",
        "--wallet",
        &id,
    ]));
    assert!(line.contains(&id), "{line}");

    // A bad command line is exit 2.
    assert_eq!(cosigner(&["--no-such-flag"]).code, Some(2));
    assert_eq!(cosigner(&["wallet", "show"]).code, Some(2));
}

#[test]
fn status_reports_every_cosigner_reachable_or_not_and_why() {
    let mut d = Deployment::start().unwrap();
    let all = d.cosigner(["status", "--json"]);
    let report = json(&all);
    all.ok();
    for name in ["provider", "recovery"] {
        assert_eq!(report[name]["attested"], true, "{report}");
        assert_eq!(report[name]["reachable"], true, "{report}");
        assert!(report[name]["error"].is_null(), "{report}");
        assert_eq!(report[name]["audit_key"].as_str().unwrap().len(), 66);
    }

    // A trust file pinning only the recovery cosigner's root: the provider answers, unattested.
    let trust = d.dir.path().join("recovery-only.toml");
    let pcr0 = run("cosigner-enclave", ["measure"], &[]).stdout;
    std::fs::write(
        &trust,
        format!(
            "roots = [\"{}\"]\n[[measurement]]\npcr0 = \"{}\"\n",
            d.recovery.root_pem().display(),
            pcr0.trim()
        ),
    )
    .unwrap();
    let out = d.cosigner(["--trust", p(&trust), "status", "--json"]);
    let line = refused(&out);
    assert!(line.contains(&d.provider.addr()), "{line}");
    let report = json(&out);
    assert_eq!(report["provider"]["reachable"], true, "{report}");
    assert_eq!(report["provider"]["attested"], false, "{report}");
    assert!(
        report["provider"]["error"]
            .as_str()
            .unwrap()
            .contains("root")
    );
    assert_eq!(report["recovery"]["attested"], true, "{report}");

    // The provider stopped: reported unreachable, the recovery cosigner still attested.
    d.provider.stop();
    let out = d.cosigner(["status"]);
    let line = refused(&out);
    assert!(line.contains(&d.provider.addr()), "{line}");
    let report = json(&out);
    assert_eq!(report["provider"]["reachable"], false, "{report}");
    assert_eq!(report["recovery"]["attested"], true, "{report}");
    // Every command that needs it says the same, in one line.
    let w = d.home("alice");
    let line = refused(&d.cosigner(["--home", p(&w), "wallet", "create", "--json"]));
    assert!(line.contains(&d.provider.addr()), "{line}");
}

#[test]
fn a_clock_gap_is_named_as_such() {
    let d = Deployment::start().unwrap();
    // Documents may be at most 0 s old: any document made before this device verified it
    // is "from the past", i.e. this device's clock is ahead. (A document verified within the
    // millisecond it was made passes: retry.)
    let trust = std::fs::read_to_string(d.dir.path().join("trust.toml")).unwrap();
    let strict = d.dir.path().join("strict.toml");
    std::fs::write(
        &strict,
        trust.replace("max_age_seconds = 300", "max_age_seconds = 0"),
    )
    .unwrap();
    let started = Instant::now();
    let line = loop {
        let out = d.cosigner(["--trust", p(&strict), "status", "--json"]);
        if out.code == Some(1) {
            break refused(&out);
        }
        assert!(started.elapsed() < Duration::from_secs(30), "never refused");
    };
    assert!(line.contains("clock"), "{line}");
    assert!(line.contains("max_age_seconds"), "{line}");
}

#[test]
fn a_damaged_share_names_its_file_and_changes_nothing() {
    let (d, w) = deployment_with_alice();
    let share = w.home.join("wallets").join(format!("{}.share", w.id));
    let good = std::fs::read(&share).unwrap();
    let sign = || sign(&d, &w.home, &w.id);
    let refresh = || d.cosigner(["--home", p(&w.home), "refresh", "--wallet", &w.id]);
    // Truncated; then one bit flipped (still a key package, but not this wallet's).
    let mut flipped = good.clone();
    let last = flipped.len() - 5;
    flipped[last] ^= 1;
    for damage in [good[..40].to_vec(), flipped] {
        std::fs::write(&share, &damage).unwrap();
        for out in [sign(), refresh()] {
            let line = refused(&out);
            assert!(line.contains(p(&share)), "{line}");
            assert!(line.contains("recover"), "{line}");
            assert!(!line.contains("party"), "{line}");
        }
    }
    std::fs::remove_file(&share).unwrap();
    let line = refused(&sign());
    assert!(line.contains(p(&share)), "{line}");
    // Restored: the wallet signs as before (nothing changed anywhere).
    std::fs::write(&share, &good).unwrap();
    sign().ok();
}

#[test]
fn wallet_show_works_offline_and_shows_the_policy_and_what_is_left() {
    let mut d = Deployment::start().unwrap();
    let home = d.home("alice");
    let policy = d.dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[rule]]\nname = \"daily\"\nvelocity = { window_hours = 24, limit = 200000 }\napprovals = 1\n",
    )
    .unwrap();
    // The test deployment's provider is open (no enrollment token).
    let created = json(&d.cosigner([
        "--home",
        p(&home),
        "wallet",
        "create",
        "--policy",
        p(&policy),
        "--json",
    ]));
    let id = created["wallet_id"].as_str().unwrap().to_owned();

    let online = show(&d, &home, &id);
    let shown = json(&online);
    assert_eq!(shown["source"], "cosigner", "{shown}");
    assert_eq!(shown["kind"], "personal", "{shown}");
    assert_eq!(shown["provider"]["party"], 2, "{shown}");
    let rule = &shown["policy"]["rules"][0];
    assert_eq!(rule["name"], "daily", "{shown}");
    assert_eq!(rule["unit"], "sat", "{shown}");
    assert_eq!(rule["velocity"]["limit"], 200_000, "{shown}");
    assert_eq!(rule["velocity"]["left"], 200_000, "{shown}");

    d.provider.stop();
    let offline = show(&d, &home, &id);
    let shown = json(&offline);
    assert_eq!(shown["source"], "local", "{shown}");
    assert!(
        shown["offline_reason"]
            .as_str()
            .unwrap()
            .contains(&d.provider.addr())
    );
    assert_eq!(shown["policy"]["rules"][0]["velocity"]["left"], 200_000);
    let text = d.cosigner(["--home", p(&home), "wallet", "show", "--wallet", &id]);
    assert!(
        text.ok().contains("(offline: from local files"),
        "{}",
        text.stdout
    );
    assert!(text.ok().contains("200000 sat"), "{}", text.stdout);
}

#[test]
fn wallet_show_works_for_a_dao_wallet_online_and_offline() {
    let mut d = Deployment::start().unwrap();
    let names = ["alice", "bob"];
    let homes: Vec<_> = names.iter().map(|n| d.home(n)).collect();
    let mut members = String::new();
    for (name, home) in names.iter().zip(&homes) {
        let out = d.cosigner(["--home", p(home), "device-key"]);
        let key = out.ok().trim().to_owned();
        members.push_str(&format!(
            "[[member]]\nname = \"{name}\"\ndevice_key = \"{key}\"\n"
        ));
    }
    let file = |name: &str| d.dir.path().join(name);
    std::fs::write(file("members.toml"), members).unwrap();
    std::fs::write(
        file("policy.toml"),
        "[[rule]]\nname = \"small\"\nbelow = 100000\napprovals = 1\n[[rule]]\nname = \"any\"\napprovals = 2\n",
    )
    .unwrap();
    let invitation = file("invitation");
    let mut env = d.env();
    env.push(("COSIGNER_MAILBOX".into(), d.mailbox.clone()));
    let spawn = |args: Vec<String>| -> JoinHandle<Outcome> {
        let env = env.clone();
        std::thread::spawn(move || run("cosigner", args, &env))
    };
    let s = |v: &str| v.to_owned();
    let creator = spawn(vec![
        s("--home"),
        s(p(&homes[0])),
        s("dao"),
        s("create"),
        s("--members"),
        s(p(&file("members.toml"))),
        s("--policy"),
        s(p(&file("policy.toml"))),
        s("--invitation-out"),
        s(p(&invitation)),
        s("--timeout"),
        s("120"),
        s("--json"),
    ]);
    wait_for(&invitation);
    let joiner = spawn(vec![
        s("--home"),
        s(p(&homes[1])),
        s("join"),
        s(p(&invitation)),
        s("--timeout"),
        s("120"),
        s("--json"),
    ]);
    let created = json(&creator.join().unwrap());
    joiner.join().unwrap().ok();
    let id = created["wallet_id"].as_str().unwrap().to_owned();

    let shown = json(&show(&d, &homes[1], &id));
    assert_eq!(shown["kind"], "dao", "{shown}");
    assert_eq!(shown["source"], "cosigner", "{shown}");
    assert_eq!(shown["policy"]["version"], 1, "{shown}");
    assert_eq!(shown["policy"]["rules"][0]["name"], "small", "{shown}");
    assert_eq!(shown["policy"]["rules"][0]["below"], 100_000, "{shown}");

    d.provider.stop();
    let offline = show(&d, &homes[1], &id);
    let shown = json(&offline);
    offline.ok();
    assert_eq!(shown["source"], "local", "{shown}");
    assert_eq!(shown["policy"]["rules"][1]["name"], "any", "{shown}");
}

fn wait_for(path: &Path) {
    let started = Instant::now();
    while !path.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{path:?} never appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
