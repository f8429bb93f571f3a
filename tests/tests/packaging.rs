//! The packaging in `packaging/` (docs/deployment.md, "Packaging") against what this workspace
//! builds: the systemd units parse (`systemd-analyze verify` where it is installed, a small INI
//! reader always), every command they run is a binary of this workspace (or the Nitro wrapper
//! shipped beside them) called with subcommands and flags its `--help` lists, every configuration
//! they name is among the examples and loads with the crate's own loader, and the Containerfile
//! builds packages this workspace has.
//!
//! Fast (no process but `--help`, `cargo metadata` and the wrapper against a stand-in
//! `nitro-cli`): no Nitro hardware and no systemd manager run here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The repository root (this crate is `tests/`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn packaging() -> PathBuf {
    root().join("packaging")
}

/// Where the examples mirror an installed path: `/etc/cosigner/X` is `packaging/etc/cosigner/X`.
fn example_of(installed: &str) -> PathBuf {
    packaging().join(installed.trim_start_matches('/'))
}

/// One `Key=value` of a unit file, with its section and line.
#[derive(Debug, Clone)]
struct Entry {
    section: String,
    key: String,
    value: String,
    line: usize,
}

/// A unit file as systemd reads it (systemd.syntax(7)): `[Section]` headers, `Key=value` lines,
/// `#`/`;` comments, a trailing backslash continuing the line. Anything else is an error naming
/// the line, as are sections other than a service's three.
fn parse_unit(text: &str) -> Result<Vec<Entry>, String> {
    let mut entries = Vec::new();
    let mut section: Option<String> = None;
    let mut lines = text.lines().enumerate();
    while let Some((index, raw)) = lines.next() {
        let number = index + 1;
        let mut line = raw.trim().to_owned();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        while line.ends_with('\\') {
            line.pop();
            match lines.next() {
                Some((_, next)) => {
                    line.push(' ');
                    line.push_str(next.trim());
                }
                None => return Err(format!("line {number}: continuation at end of file")),
            }
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            if !["Unit", "Service", "Install"].contains(&name) {
                return Err(format!("line {number}: unexpected section [{name}]"));
            }
            section = Some(name.to_owned());
            continue;
        }
        let Some(section) = &section else {
            return Err(format!("line {number}: `{line}` before any section"));
        };
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {number}: `{line}` is not Key=value"));
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(format!("line {number}: bad key `{key}`"));
        }
        entries.push(Entry {
            section: section.clone(),
            key: key.to_owned(),
            value: value.trim().to_owned(),
            line: number,
        });
    }
    Ok(entries)
}

/// The unit files of `packaging/systemd/`, parsed: file name -> entries.
fn units() -> BTreeMap<String, Vec<Entry>> {
    let mut units = BTreeMap::new();
    for entry in std::fs::read_dir(packaging().join("systemd")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("service") {
            continue;
        }
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let parsed = parse_unit(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        units.insert(name, parsed);
    }
    assert!(
        units.contains_key("cosigner-parent.service")
            && units.contains_key("cosigner-enclave@.service")
            && units.contains_key("cosigner-nitro-enclave@.service"),
        "the three units: {:?}",
        units.keys()
    );
    units
}

fn values<'a>(entries: &'a [Entry], section: &str, key: &str) -> Vec<&'a str> {
    entries
        .iter()
        .filter(|e| e.section == section && e.key == key)
        .map(|e| e.value.as_str())
        .collect()
}

fn value<'a>(unit: &str, entries: &'a [Entry], key: &str) -> &'a str {
    let found = values(entries, "Service", key);
    assert_eq!(
        found.len(),
        1,
        "{unit}: one [Service] {key}=, found {found:?}"
    );
    found[0]
}

/// The instance a template is checked as: enclave instance 1, the Nitro enclave at CID 16 (the
/// examples' `enclave = "vsock:16:5000"`).
fn instance(unit: &str) -> Option<&'static str> {
    match unit {
        "cosigner-enclave@.service" => Some("1"),
        "cosigner-nitro-enclave@.service" => Some("16"),
        _ => None,
    }
}

/// `value` with the unit's `%i` replaced (the only specifier the units use).
fn expand(unit: &str, value: &str) -> String {
    match instance(unit) {
        Some(i) => value.replace("%i", i),
        None => {
            assert!(
                !value.contains('%'),
                "{unit}: a specifier in a non-template: {value}"
            );
            value.to_owned()
        }
    }
}

/// `cargo metadata` of this workspace: package name -> its binary targets.
fn workspace_packages() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut packages = BTreeMap::new();
    for package in metadata["packages"].as_array().unwrap() {
        let bins = package["targets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect();
        packages.insert(package["name"].as_str().unwrap().to_owned(), bins);
    }
    packages
}

fn workspace_bins() -> BTreeSet<String> {
    workspace_packages().into_values().flatten().collect()
}

/// The Exec lines of every unit, expanded: (unit, key, argv).
fn commands() -> Vec<(String, String, Vec<String>)> {
    let mut all = Vec::new();
    for (unit, entries) in units() {
        for e in entries
            .iter()
            .filter(|e| e.section == "Service" && e.key.starts_with("Exec"))
        {
            // No prefixes (`-`, `+`, `!`, `@`): every command must succeed as itself.
            assert!(
                e.value.starts_with('/'),
                "{unit}:{}: {}= must name an absolute program without prefixes",
                e.line,
                e.key
            );
            let argv = expand(&unit, &e.value)
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            all.push((unit.clone(), e.key.clone(), argv));
        }
    }
    all
}

fn run_help(program: &Path, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    assert!(
        out.status.success(),
        "{} {args:?} --help failed: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn units_parse_and_keep_their_hardening_and_restart_policy() {
    for (unit, entries) in units() {
        assert_eq!(value(&unit, &entries, "Restart"), "always", "{unit}");
        let restart_sec: u32 = value(&unit, &entries, "RestartSec").parse().unwrap();
        assert!(
            restart_sec <= 5,
            "{unit}: RestartSec={restart_sec} is not small"
        );
        for (key, expected) in [
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("PrivateTmp", "yes"),
        ] {
            assert_eq!(value(&unit, &entries, key), expected, "{unit}: {key}");
        }
        let user = value(&unit, &entries, "User");
        assert!(user != "root", "{unit}: runs as root");
        // Rate limits are [Unit] settings; in [Service] systemd ignores them.
        assert!(values(&entries, "Service", "StartLimitIntervalSec").is_empty());
        assert_eq!(
            values(&entries, "Install", "WantedBy"),
            ["multi-user.target"]
        );
        // No secret on a command line: PINs come as credentials.
        for e in &entries {
            assert!(
                !e.value.contains("--pin") && !e.value.contains("COSIGNER_PKCS11_PIN"),
                "{unit}:{}: a PIN outside LoadCredential=",
                e.line
            );
        }
    }
}

#[test]
fn descriptor_and_task_limits_cover_the_connection_caps() {
    let units = units();
    let limit =
        |unit: &str, key: &str| -> usize { value(unit, &units[unit], key).parse().unwrap() };
    // The parent: every client connection has its relayed twin to the enclave, and the mailbox
    // has a cap of its own (MAX_CONNECTIONS per listener).
    let parent_fds = 3 * cosigner_parent::server::MAX_CONNECTIONS;
    assert!(limit("cosigner-parent.service", "LimitNOFILE") > parent_fds);
    assert!(
        limit("cosigner-parent.service", "TasksMax") > 2 * cosigner_parent::server::MAX_CONNECTIONS
    );
    // An enclave instance: one socket and one thread per connection, then the store and token.
    let enclave = cosigner_enclave::server::DEFAULT_MAX_CONNECTIONS;
    assert!(limit("cosigner-enclave@.service", "LimitNOFILE") > 2 * enclave);
    assert!(limit("cosigner-enclave@.service", "TasksMax") > enclave);
}

/// `from` copied to `to`, symbolic links copied as links.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().unwrap();
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&source).unwrap(), &target).unwrap();
        } else if kind.is_dir() {
            copy_tree(&source, &target);
        } else {
            std::fs::copy(&source, &target).unwrap();
        }
    }
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!(
            "skipping: systemd-analyze is not installed (the units are still read by \
             units_parse_and_keep_their_hardening_and_restart_policy)"
        );
        return;
    };
    assert!(version.status.success());
    // A root holding what the units need: systemd's own units (sysinit.target, …), the
    // programs at their installed paths (hard links to the debug builds, or copies), and a
    // stand-in for the allocator unit that aws-nitro-enclaves-cli installs on Nitro hosts.
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tempfile::Builder::new()
        .prefix("packaging-root-")
        .tempdir_in(base)
        .unwrap();
    let fake_root = dir.path();
    let system_units = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .into_iter()
        .map(Path::new)
        .find(|d| d.join("sysinit.target").exists())
        .expect("systemd-analyze without systemd's units");
    // Copied, links as links: they point at absolute paths, which systemd resolves inside --root.
    copy_tree(system_units, &fake_root.join("usr/lib/systemd/system"));
    let unit_dir = fake_root.join("etc/systemd/system");
    std::fs::create_dir_all(&unit_dir).unwrap();
    let bins = workspace_bins();
    for (_, _, argv) in commands() {
        let installed = fake_root.join(argv[0].trim_start_matches('/'));
        if installed.exists() {
            continue;
        }
        std::fs::create_dir_all(installed.parent().unwrap()).unwrap();
        let name = Path::new(&argv[0]).file_name().unwrap().to_str().unwrap();
        let source = if bins.contains(name) {
            cosigner_tests::bin(name)
        } else {
            packaging().join("systemd").join(name)
        };
        if std::fs::hard_link(&source, &installed).is_err() {
            std::fs::copy(&source, &installed).unwrap();
        }
    }
    std::fs::write(
        unit_dir.join("nitro-enclaves-allocator.service"),
        "[Unit]\nDescription=stand-in for aws-nitro-enclaves-cli's allocator\n\
         [Service]\nType=oneshot\nExecStart=/bin/true\n",
    )
    .unwrap();
    let mut names = Vec::new();
    for unit in units().keys() {
        std::fs::copy(packaging().join("systemd").join(unit), unit_dir.join(unit)).unwrap();
        names.push(match instance(unit) {
            Some(i) => unit.replace('@', &format!("@{i}")),
            None => unit.clone(),
        });
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no", "--generators=no"])
        .arg(format!("--root={}", fake_root.display()))
        .args(&names)
        .env("SYSTEMD_LOG_LEVEL", "info")
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Warnings (an unknown key, a key in the wrong section) exit 0 too: any output fails.
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify {names:?}:\n{said}"
    );
}

/// The long flags a `--help` text lists (`--name`, whole words only: `--confi` is not `--config`).
fn long_flags(help: &str) -> BTreeSet<&str> {
    help.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .collect()
}

#[test]
fn every_command_is_a_workspace_binary_or_the_nitro_wrapper_with_flags_it_has() {
    let bins = workspace_bins();
    for (unit, key, argv) in commands() {
        let program = Path::new(&argv[0]);
        let name = program.file_name().unwrap().to_str().unwrap();
        let args: Vec<&str> = argv[1..].iter().map(String::as_str).collect();
        // Subcommands are the words before the first flag.
        let split = args
            .iter()
            .position(|a| a.starts_with('-'))
            .unwrap_or(args.len());
        let (words, flags) = args.split_at(split);
        if bins.contains(name) {
            assert_eq!(
                program.parent(),
                Some(Path::new("/usr/local/bin")),
                "{unit} {key}: workspace binaries are installed in /usr/local/bin"
            );
            let help = run_help(&cosigner_tests::bin(name), words);
            let known = long_flags(&help);
            for flag in flags.iter().filter(|f| f.starts_with("--")) {
                let flag = flag.split('=').next().unwrap_or(flag);
                assert!(
                    known.contains(flag),
                    "{unit} {key}: `{name} {}` has no {flag}:\n{help}",
                    words.join(" ")
                );
            }
        } else {
            let script = packaging().join("systemd").join(name);
            assert!(
                script.is_file(),
                "{unit} {key}: {name} is neither a workspace binary ({bins:?}) nor in \
                 packaging/systemd/"
            );
            let help = run_help(&script, &[]);
            let subcommand = words.first().expect("the wrapper takes a subcommand");
            assert!(
                help.contains(&format!("  {subcommand} ")),
                "{unit} {key}: {name} has no `{subcommand}`:\n{help}"
            );
        }
    }
}

#[test]
fn configuration_named_by_the_units_is_among_the_examples() {
    for (unit, entries) in units() {
        let mut named = Vec::new();
        for (_, key, argv) in commands().into_iter().filter(|(u, ..)| *u == unit) {
            named.extend(
                argv.into_iter()
                    .filter(|a| a.starts_with("/etc/"))
                    .map(|a| (key.clone(), a)),
            );
        }
        for file in values(&entries, "Service", "EnvironmentFile") {
            named.push(("EnvironmentFile".into(), expand(&unit, file)));
        }
        for (key, path) in &named {
            assert!(
                example_of(path).is_file(),
                "{unit} {key}: {path} has no example at {}",
                example_of(path).display()
            );
        }
        // What a unit hands over by Environment= that names a file is an example too.
        for env in values(&entries, "Service", "Environment") {
            let (_, path) = env.split_once('=').unwrap();
            if path.starts_with("/etc/") {
                assert!(example_of(path).is_file(), "{unit}: {path}");
            }
        }
    }
}

/// The example configurations' paths under /run and /var/lib, with the unit that reads them:
/// each must sit in a RuntimeDirectory= or StateDirectory= of that unit, or systemd's
/// ProtectSystem=strict makes it unwritable.
fn assert_in_unit_directories(unit: &str, entries: &[Entry], what: &str, path: &Path) {
    let path = path.to_str().unwrap();
    let listed = |key| -> Vec<&str> {
        values(entries, "Service", key)
            .into_iter()
            .flat_map(str::split_whitespace)
            .collect()
    };
    let dirs: Vec<String> = listed("RuntimeDirectory")
        .iter()
        .map(|d| format!("/run/{d}/"))
        .chain(
            listed("StateDirectory")
                .iter()
                .map(|d| format!("/var/lib/{d}/")),
        )
        .collect();
    if path.starts_with("/run/credentials/") {
        return;
    }
    assert!(
        dirs.iter().any(|d| path.starts_with(d.as_str())),
        "{unit}: {what} {path} is outside its directories {dirs:?}"
    );
}

#[test]
fn example_configurations_load_and_match_their_units() {
    let units = units();
    let parent_unit = &units["cosigner-parent.service"];
    let enclave_unit = &units["cosigner-enclave@.service"];
    let dir = packaging().join("etc/cosigner");

    let mut parents = 0;
    let mut enclaves = BTreeSet::new();
    let mut unix_instances = BTreeSet::new();
    let mut instance_sockets = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name.starts_with("parent") && name.ends_with(".toml") {
            let config =
                cosigner_parent::Config::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            let mut files = vec![("store_socket", config.store_socket.clone())];
            if let cosigner_parent::store::database::Database::Sqlite(db) = &config.database {
                files.push(("database", db.clone()));
            }
            if let Some(tls) = &config.mailbox.tls {
                files.push(("mailbox tls_certificate", tls.certificate.clone()));
                files.push(("mailbox tls_key", tls.key.clone()));
            }
            for (what, p) in &files {
                assert_in_unit_directories("cosigner-parent.service", parent_unit, what, p);
            }
            // Local instances: exactly the examples' enclave-K.toml sockets.
            for enclave in &config.enclaves {
                if let cosigner_parent::EnclaveAddr::Unix(socket) = enclave {
                    assert_in_unit_directories(
                        "cosigner-enclave@.service",
                        enclave_unit,
                        "enclave",
                        socket,
                    );
                    unix_instances.insert(socket.clone());
                }
            }
            parents += 1;
        } else if let Some(k) = name
            .strip_prefix("enclave-")
            .and_then(|n| n.strip_suffix(".toml"))
        {
            let config = cosigner_enclave::config::Config::load(&path)
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
            let unit = format!("cosigner-enclave@{k}.service");
            // LoadCredential=NAME:… puts the PIN at /run/credentials/UNIT/NAME.
            let credential = values(enclave_unit, "Service", "LoadCredential");
            assert_eq!(credential.len(), 1);
            let (credential, _) = credential[0].split_once(':').unwrap();
            let pin = config.token.as_ref().and_then(|t| t.pin_file.clone());
            assert_eq!(
                pin,
                Some(PathBuf::from(format!(
                    "/run/credentials/{unit}/{credential}"
                ))),
                "{name}: [token] pin_file"
            );
            let cosigner_enclave::transport::Endpoint::Unix(listen) = &config.listen else {
                panic!("{name}: an HSM-host instance listens on a unix socket");
            };
            assert_eq!(
                listen,
                Path::new(&format!("/run/cosigner/enclave-{k}.sock")),
                "{name}: instance {k}'s own socket"
            );
            assert_in_unit_directories(&unit, enclave_unit, "listen", listen);
            instance_sockets.insert(listen.clone());
            assert_eq!(config.instance.to_string(), k, "{name}: instance = {k}");
            // The instances' lock: theirs, and out of the (same-uid) parent's reach.
            let lock = config
                .anchors
                .lock_file
                .as_ref()
                .expect("[anchors] lock_file");
            assert_in_unit_directories(&unit, enclave_unit, "anchors lock_file", lock);
            assert_hidden_from_parent(parent_unit, lock);
            if let cosigner_enclave::config::AttesterConfig::Local { dir } = &config.attester {
                assert_in_unit_directories(&unit, enclave_unit, "attester", dir);
            }
            enclaves.insert(k.to_owned());
        }
    }
    assert!(parents >= 2, "the Nitro and the HSM-host parent examples");
    assert!(enclaves.len() >= 2, "two enclave instances: {enclaves:?}");
    assert_eq!(
        unix_instances, instance_sockets,
        "parent-hsm-host.toml relays to exactly the example instances"
    );

    // SoftHSM's token store is the enclave unit's state, hidden from the parent.
    let softhsm = std::fs::read_to_string(dir.join("softhsm2.conf")).unwrap();
    let tokendir = softhsm
        .lines()
        .find_map(|l| l.strip_prefix("directories.tokendir = "))
        .unwrap();
    assert_in_unit_directories(
        "cosigner-enclave@.service",
        enclave_unit,
        "tokendir",
        Path::new(tokendir),
    );
    assert_hidden_from_parent(parent_unit, Path::new(tokendir));
}

/// `path` is under one of the parent unit's InaccessiblePaths=.
fn assert_hidden_from_parent(parent_unit: &[Entry], path: &Path) {
    let hidden: Vec<&str> = values(parent_unit, "Service", "InaccessiblePaths")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .map(|h| h.trim_start_matches('-'))
        .collect();
    assert!(
        hidden.iter().any(|h| path.starts_with(h)),
        "the parent reaches {}: hidden are only {hidden:?}",
        path.display()
    );
}

#[test]
fn the_containerfile_builds_this_workspace_s_parent() {
    let text = std::fs::read_to_string(packaging().join("container/Containerfile")).unwrap();
    // Continuation lines joined, comments dropped.
    let joined = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("\\\n", " ");
    let packages = workspace_packages();
    let build = joined
        .lines()
        .find(|l| l.contains("cargo build"))
        .expect("a cargo build step");
    assert!(
        build.contains("--locked") && build.contains("--release"),
        "{build}"
    );
    let words: Vec<&str> = build.split_whitespace().collect();
    let built: Vec<&str> = words
        .windows(2)
        .filter(|w| w[0] == "-p" || w[0] == "--package")
        .map(|w| w[1])
        .collect();
    assert_eq!(built, ["cosigner-parent"], "{build}");
    for package in &built {
        assert!(
            packages.contains_key(*package),
            "{package} is not a workspace package"
        );
    }
    // Every binary taken from target/release is one of the built packages' binaries.
    let bins: BTreeSet<&String> = built.iter().flat_map(|p| &packages[*p]).collect();
    let taken: Vec<&str> = joined
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("target/release/"))
        .collect();
    assert!(!taken.is_empty());
    for bin in taken {
        assert!(
            bins.contains(&bin.to_owned()),
            "target/release/{bin} is not built"
        );
    }
    // Non-root, the runtime on bookworm-slim pinned by digest, and the example's ports exposed.
    assert!(
        joined
            .lines()
            .any(|l| l.starts_with("USER ") && !l.contains("root"))
    );
    assert!(joined.contains("debian:bookworm-") && joined.contains("-slim@sha256:"));
    let config = cosigner_parent::Config::load(&example_of("/etc/cosigner/parent.toml")).unwrap();
    let mut ports: Vec<u16> = vec![config.listen.port()];
    ports.extend(config.mailbox_listen.map(|a| a.port()));
    ports.extend(config.metrics_listen.map(|a| a.port()));
    let exposed: Vec<u16> = joined
        .lines()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(|l| l.split_whitespace().map(|p| p.parse::<u16>().unwrap()))
        .collect();
    for port in ports {
        assert!(
            exposed.contains(&port),
            "port {port} of parent.toml is not exposed: {exposed:?}"
        );
    }
    // The build context leaves build output and local deployments out, for both engines.
    for ignore in [".dockerignore", ".containerignore"] {
        let list = std::fs::read_to_string(root().join(ignore)).unwrap();
        for needed in ["target/", ".dev/"] {
            assert!(list.lines().any(|l| l == needed), "{ignore} lacks {needed}");
        }
    }
}

/// A stand-in `nitro-cli` (there is no Nitro hardware here): it logs its arguments and answers
/// `describe-enclaves` with enclave 16 RUNNING for `running` calls, then without it; enclave 17
/// (another unit's) runs throughout.
fn fake_nitro_cli(dir: &Path, running: u32) -> PathBuf {
    let script = format!(
        r#"#!/bin/sh
echo "$*" >> "{dir}/calls"
[ "$1" = describe-enclaves ] || exit 0
n=$(cat "{dir}/count" 2>/dev/null || echo 0); n=$((n + 1)); echo $n > "{dir}/count"
other='{{ "EnclaveName": "cosigner-17", "EnclaveID": "i-1-enc2", "EnclaveCID": 17,
  "NumberOfCPUs": 2, "CPUIDs": [1, 3], "MemoryMiB": 2048, "State": "RUNNING", "Flags": "NONE" }}'
if [ $n -le {running} ]; then
  printf '[\n  {{\n    "EnclaveName": "cosigner-16",\n    "EnclaveID": "i-0-enc1",\n    "ProcessID": 4242,\n    "EnclaveCID": 16,\n    "NumberOfCPUs": 2,\n    "CPUIDs": [5, 7],\n    "MemoryMiB": 2048,\n    "State": "RUNNING",\n    "Flags": "NONE"\n  }},\n  %s\n]\n' "$other"
else
  printf '[ {{ "EnclaveCID": 16, "State": "TERMINATING" }}, %s ]\n' "$other"
fi
"#,
        dir = dir.display()
    );
    let path = dir.join("nitro-cli");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn the_nitro_wrapper_runs_the_eif_and_exits_when_the_enclave_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    fake_nitro_cli(dir.path(), 2);
    let eif = dir.path().join("cosigner-enclave.eif");
    std::fs::write(&eif, b"not booted by the stand-in").unwrap();
    let wrapper = packaging().join("systemd/cosigner-nitro-enclave");
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = |args: &[&str]| {
        Command::new(&wrapper)
            .args(args)
            .env("PATH", &path)
            .env("COSIGNER_EIF", &eif)
            .env("COSIGNER_ENCLAVE_CPUS", "2")
            .env("COSIGNER_ENCLAVE_MEMORY_MIB", "2048")
            .env("COSIGNER_ENCLAVE_POLL_SECONDS", "0")
            .output()
            .unwrap()
    };

    // It stays while enclave 16 runs and exits non-zero (Restart=always) once it is gone,
    // whatever enclave 17 does.
    let out = run(&["run", "16"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let calls = std::fs::read_to_string(dir.path().join("calls")).unwrap();
    let calls: Vec<&str> = calls.lines().collect();
    assert_eq!(
        calls,
        [
            "terminate-enclave --enclave-name cosigner-16".to_owned(),
            format!(
                "run-enclave --eif-path {} --cpu-count 2 --memory 2048 --enclave-cid 16 \
                 --enclave-name cosigner-16",
                eif.display()
            ),
            "describe-enclaves".to_owned(),
            "describe-enclaves".to_owned(),
            "describe-enclaves".to_owned(),
        ]
    );

    let out = run(&["stop", "16"]);
    assert!(out.status.success());
    // CIDs 0-3 are reserved; anything else is a usage error.
    for bad in [&["run", "3"][..], &["run", "x"], &["start", "16"], &[]] {
        assert_eq!(run(bad).status.code(), Some(2), "{bad:?}");
    }
    // No EIF: a one-line refusal naming it.
    std::fs::remove_file(&eif).unwrap();
    let out = run(&["run", "16"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such EIF"));
}

#[test]
fn the_unit_reader_refuses_what_systemd_would_not_read() {
    assert!(parse_unit("[Unit]\nDescription=x\n[Service]\nExecStart=/bin/a \\\n  --b\n").is_ok());
    for bad in [
        "ExecStart=/bin/a\n",
        "[Unit]\njust words\n",
        "[Servce]\nA=b\n",
        "[Service]\nExecStart=/bin/a \\",
        "[Service]\nBad Key=1\n",
    ] {
        assert!(parse_unit(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn the_nitro_wrapper_passes_shellcheck_where_it_is_installed() {
    let wrapper = packaging().join("systemd/cosigner-nitro-enclave");
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&wrapper)
        .output()
        .unwrap();
    assert!(syntax.status.success(), "{syntax:?}");
    match Command::new("shellcheck").arg(&wrapper).output() {
        Ok(out) => assert!(
            out.status.success(),
            "shellcheck {}:\n{}",
            wrapper.display(),
            String::from_utf8_lossy(&out.stdout)
        ),
        Err(_) => eprintln!("skipping shellcheck: not installed (bash -n passed)"),
    }
}
