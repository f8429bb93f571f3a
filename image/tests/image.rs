//! `cosigner-image build` as `make enclave-image` runs it: deterministic outputs, a
//! ramdisk the kernel (and `cpio`) can read, PCRs computed as the EIF format does, an EIF whose
//! bytes do not depend on the clock, and one-line refusals of missing or unusable inputs.
//!
//! The binaries here are stand-ins (minimal static ELF headers) and the Nitro blobs are fakes:
//! the format and the measurements do not depend on what the bytes mean.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use cosigner_image::{self as image, cpio, pcr};
use sha2::{Digest, Sha384};

const BIN: &str = env!("CARGO_BIN_EXE_cosigner-image");
const EPOCH: &str = "1700000000";

/// A minimal x86-64 ELF executable header with these program header types and a payload.
fn fake_elf(program_headers: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut elf = vec![0u8; 64];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2; // 64-bit
    elf[5] = 1; // little-endian
    elf[6] = 1;
    elf[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
    elf[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    elf[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    elf[56..58].copy_from_slice(&u16::try_from(program_headers.len()).unwrap().to_le_bytes());
    for p_type in program_headers {
        let mut header = vec![0u8; 56];
        header[..4].copy_from_slice(&p_type.to_le_bytes());
        elf.extend_from_slice(&header);
    }
    elf.extend_from_slice(payload);
    elf
}

struct Inputs {
    _dir: tempfile::TempDir,
    enclave: PathBuf,
    init: PathBuf,
    blobs: PathBuf,
    root: PathBuf,
}

fn inputs() -> Inputs {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let enclave = root.join("cosigner-enclave");
    let init = root.join("cosigner-init");
    std::fs::write(&enclave, fake_elf(&[1, 1], b"the enclave service")).unwrap();
    std::fs::write(&init, fake_elf(&[1], b"the init")).unwrap();
    let blobs = root.join("blobs");
    std::fs::create_dir(&blobs).unwrap();
    std::fs::write(blobs.join("bzImage"), b"fake kernel image".repeat(100)).unwrap();
    std::fs::write(
        blobs.join("bzImage.config"),
        "#\n# Linux/x86_64 4.14.256-209.484.amzn2.x86_64 Kernel Configuration\n#\nCONFIG_X=y\n",
    )
    .unwrap();
    std::fs::write(
        blobs.join("cmdline"),
        "reboot=k panic=30 pci=off console=ttyS0 random.trust_cpu=on\n",
    )
    .unwrap();
    std::fs::write(blobs.join("nsm.ko"), b"fake nsm driver").unwrap();
    Inputs {
        _dir: dir,
        enclave,
        init,
        blobs,
        root,
    }
}

fn build(inputs: &Inputs, out: &Path, blobs: bool, envs: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BIN);
    command
        .arg("build")
        .arg("--enclave")
        .arg(&inputs.enclave)
        .arg("--init")
        .arg(&inputs.init)
        .arg("--out-dir")
        .arg(out)
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .env("RUST_BACKTRACE", "0")
        .env_remove("KMS_KEY_ARN")
        .env_remove("AWS_REGION")
        .stdin(Stdio::null());
    if blobs {
        command.arg("--nitro-blobs").arg(&inputs.blobs);
    }
    for (k, v) in envs {
        command.env(k, v);
    }
    command.output().unwrap()
}

impl Inputs {
    /// Builds into `name` under the root (`blobs`: with AWS's blobs, so an EIF too), asserting
    /// success; the output directory.
    fn built(&self, name: &str, blobs: bool) -> PathBuf {
        let out = self.root.join(name);
        ok(&build(self, &out, blobs, &[]));
        out
    }
}

fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Exit code 1 and exactly one stderr line, no panic; returns the line.
/// `build --config FILE` without blobs, with `KMS_KEY_ARN` set to `key_arn` (or unset).
fn build_with_config(inputs: &Inputs, out: &Path, config: &Path, key_arn: Option<&str>) -> Output {
    let mut command = Command::new(BIN);
    command
        .args(["build", "--enclave"])
        .arg(&inputs.enclave)
        .arg("--init")
        .arg(&inputs.init)
        .arg("--out-dir")
        .arg(out)
        .arg("--config")
        .arg(config)
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .env("RUST_BACKTRACE", "0");
    match key_arn {
        Some(arn) => command.env("KMS_KEY_ARN", arn),
        None => command.env_remove("KMS_KEY_ARN"),
    };
    command.output().unwrap()
}

fn refused(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr:?}");
    lines[0].to_owned()
}

fn read(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn pcrs(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&read(dir, image::files::PCRS)).unwrap()
}

fn extend(data: &[u8]) -> String {
    let mut outer = Sha384::new();
    outer.update([0u8; 48]);
    outer.update(Sha384::digest(data));
    hex::encode(outer.finalize())
}

#[test]
fn same_inputs_give_the_same_bytes_whatever_the_clock_and_the_files_metadata() {
    let inputs = inputs();
    let first = inputs.root.join("out-1");
    let second = inputs.root.join("second").join("out-2");
    ok(&build(&inputs, &first, false, &[("TZ", "UTC")]));
    // Change what a careless packer would copy: the inputs' mtimes and modes, the time zone.
    for path in [&inputs.enclave, &inputs.init] {
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(
            std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(12345),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(1100));
    ok(&build(
        &inputs,
        &second,
        false,
        &[("TZ", "Pacific/Kiritimati")],
    ));
    for name in [
        image::files::ENCLAVE,
        image::files::APP_RAMDISK,
        image::files::PCRS,
        image::files::TRUST,
    ] {
        assert_eq!(read(&first, name), read(&second, name), "{name} differs");
    }
    assert_eq!(
        read(&first, image::files::ENCLAVE),
        std::fs::read(&inputs.enclave).unwrap()
    );
    // Without blobs: no EIF, no bootstrap ramdisk, PCR0/PCR1 null.
    assert!(!first.join(image::files::EIF).exists());
    assert!(!first.join(image::files::BOOTSTRAP_RAMDISK).exists());
    let json = pcrs(&first);
    assert_eq!(json["PCR0"], serde_json::Value::Null);
    assert_eq!(json["PCR1"], serde_json::Value::Null);
}

#[test]
fn source_date_epoch_is_the_only_time_in_the_image() {
    let inputs = inputs();
    let a = inputs.built("a", false);
    let b = inputs.root.join("b");
    ok(&build(
        &inputs,
        &b,
        false,
        &[("SOURCE_DATE_EPOCH", "1700000001")],
    ));
    assert_ne!(
        read(&a, image::files::APP_RAMDISK),
        read(&b, image::files::APP_RAMDISK)
    );
    assert_ne!(pcrs(&a)["PCR2"], pcrs(&b)["PCR2"]);
    for entry in cpio::read(&read(&b, image::files::APP_RAMDISK)).unwrap() {
        assert_eq!(entry.mtime, 1_700_000_001, "{}", entry.path);
    }
}

#[test]
fn pcr1_depends_on_the_blobs_alone_not_on_source_date_epoch() {
    let inputs = inputs();
    let a = inputs.built("a", true);
    let b = inputs.root.join("b");
    ok(&build(
        &inputs,
        &b,
        true,
        &[("SOURCE_DATE_EPOCH", "1700000001")],
    ));
    assert_eq!(pcrs(&a)["PCR1"], pcrs(&b)["PCR1"]);
    assert_ne!(pcrs(&a)["PCR2"], pcrs(&b)["PCR2"]);
    assert_eq!(
        read(&a, image::files::BOOTSTRAP_RAMDISK),
        read(&b, image::files::BOOTSTRAP_RAMDISK)
    );
    for entry in cpio::read(&read(&b, image::files::BOOTSTRAP_RAMDISK)).unwrap() {
        assert_eq!(entry.mtime, image::BOOTSTRAP_MTIME, "{}", entry.path);
    }
}

#[test]
fn the_ramdisk_holds_exactly_the_image_and_reads_back() {
    let inputs = inputs();
    let out = inputs.root.join("out");
    let printed = ok(&build(&inputs, &out, false, &[]));
    assert_eq!(printed.as_bytes(), read(&out, image::files::PCRS));
    let ramdisk = read(&out, image::files::APP_RAMDISK);
    let entries = cpio::read(&ramdisk).unwrap();
    let listing: Vec<(&str, u32)> = entries.iter().map(|e| (e.path.as_str(), e.mode)).collect();
    assert_eq!(
        listing,
        [
            ("cosigner-enclave", 0o100_555),
            ("dev", 0o040_755),
            ("dev/console", 0o020_600),
            ("etc", 0o040_755),
            ("etc/cosigner", 0o040_755),
            ("etc/cosigner/enclave.toml", 0o100_444),
            ("init", 0o100_555),
            ("proc", 0o040_555),
            ("run", 0o040_755),
            ("sys", 0o040_555),
            ("tmp", 0o041_777),
        ]
    );
    for (i, entry) in entries.iter().enumerate() {
        assert_eq!((entry.uid, entry.gid), (0, 0), "{}", entry.path);
        assert_eq!(entry.ino as usize, i + 1, "{}", entry.path);
        assert_eq!(entry.mtime, 1_700_000_000, "{}", entry.path);
    }
    let file = |path: &str| {
        entries
            .iter()
            .find(|e| e.path == path)
            .unwrap()
            .data
            .clone()
    };
    assert_eq!(file("init"), std::fs::read(&inputs.init).unwrap());
    assert_eq!(
        file("cosigner-enclave"),
        std::fs::read(&inputs.enclave).unwrap()
    );
    assert_eq!(
        file("etc/cosigner/enclave.toml"),
        image::enclave_config(&image::KmsKey::placeholder()).as_bytes()
    );
    let console = entries.iter().find(|e| e.path == "dev/console").unwrap();
    assert_eq!(console.rdev, (5, 1));

    // GNU cpio, where installed, reads it too.
    if let Ok(listed) = Command::new("cpio")
        .args(["-i", "-t", "--quiet"])
        .stdin(std::fs::File::open(out.join(image::files::APP_RAMDISK)).unwrap())
        .output()
    {
        assert!(
            listed.status.success(),
            "{}",
            String::from_utf8_lossy(&listed.stderr)
        );
        let names: Vec<String> = String::from_utf8(listed.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        let ours: Vec<String> = entries.iter().map(|e| e.path.clone()).collect();
        assert_eq!(names, ours);
    } else {
        eprintln!("cpio not installed: the archive was checked with our reader only");
    }
}

#[test]
fn pcr2_is_the_eif_formats_measure_of_the_application_ramdisk() {
    let inputs = inputs();
    let out = inputs.built("out", false);
    let ramdisk = read(&out, image::files::APP_RAMDISK);
    let expected = extend(&ramdisk);
    assert_eq!(pcrs(&out)["PCR2"], expected.as_str());
    assert_eq!(hex::encode(pcr::pcr2(&[&ramdisk]).unwrap()), expected);
    let trust = String::from_utf8(read(&out, image::files::TRUST)).unwrap();
    assert!(trust.contains(&format!("pcr2 = \"{expected}\"")), "{trust}");
    assert!(!trust.contains("pcr0 ="), "{trust}");
}

#[test]
fn with_blobs_the_eif_is_reproducible_and_measured_like_nitro_cli() {
    let inputs = inputs();
    let first = inputs.built("eif-1", true);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = inputs.root.join("eif-2");
    ok(&build(&inputs, &second, true, &[("TZ", "Asia/Kolkata")]));
    let without = inputs.built("no-blobs", false);
    for name in [
        image::files::EIF,
        image::files::BOOTSTRAP_RAMDISK,
        image::files::APP_RAMDISK,
        image::files::PCRS,
        image::files::TRUST,
    ] {
        assert_eq!(read(&first, name), read(&second, name), "{name} differs");
    }

    // The measurements, recomputed from the parts: kernel ‖ cmdline ‖ ramdisks.
    let kernel = std::fs::read(inputs.blobs.join("bzImage")).unwrap();
    let cmdline = b"reboot=k panic=30 pci=off console=ttyS0 random.trust_cpu=on"; // trimmed
    let bootstrap = read(&first, image::files::BOOTSTRAP_RAMDISK);
    let app = read(&first, image::files::APP_RAMDISK);
    let json = pcrs(&first);
    assert_eq!(
        json["PCR0"],
        extend(&[&kernel[..], cmdline, &bootstrap, &app].concat()).as_str()
    );
    assert_eq!(
        json["PCR1"],
        extend(&[&kernel[..], cmdline, &bootstrap].concat()).as_str()
    );
    assert_eq!(json["PCR2"], extend(&app).as_str());
    assert_eq!(json["PCR2"], pcrs(&without)["PCR2"]);

    // The bootstrap ramdisk is the NSM driver alone.
    let boot = cpio::read(&bootstrap).unwrap();
    assert_eq!(boot.len(), 1);
    assert_eq!(boot[0].path, "nsm.ko");
    assert_eq!(boot[0].data, b"fake nsm driver");

    // The EIF as AWS's reader sees it: same PCRs, build time from SOURCE_DATE_EPOCH.
    let eif_path = first.join(image::files::EIF).display().to_string();
    let mut reader =
        aws_nitro_enclaves_image_format::utils::eif_reader::EifReader::from_eif(eif_path).unwrap();
    let measured = reader.get_measurements().unwrap();
    assert_eq!(json["PCR0"], measured["PCR0"].as_str());
    assert_eq!(json["PCR1"], measured["PCR1"].as_str());
    assert_eq!(json["PCR2"], measured["PCR2"].as_str());
    assert_eq!(reader.get_header().num_sections, 5);
    let metadata = reader.get_metadata().unwrap();
    assert_eq!(metadata.build_info.build_time, "2023-11-14T22:13:20+00:00");
    assert_eq!(
        metadata.build_info.img_kernel,
        "4.14.256-209.484.amzn2.x86_64"
    );

    let trust = String::from_utf8(read(&first, image::files::TRUST)).unwrap();
    for key in ["pcr0", "pcr1", "pcr2"] {
        let value = json[key.to_uppercase()].as_str().unwrap();
        assert!(trust.contains(&format!("{key} = \"{value}\"")), "{trust}");
    }
    assert!(!trust.contains("PCR2 ONLY"));

    // Rebuilding without blobs in the same directory removes the EIF it no longer matches.
    ok(&build(&inputs, &first, false, &[]));
    assert!(!first.join(image::files::EIF).exists());
    assert!(!first.join(image::files::BOOTSTRAP_RAMDISK).exists());
}

#[test]
fn missing_or_unusable_inputs_are_refused_in_one_line() {
    let inputs = inputs();
    let out = inputs.root.join("never");
    let dynamic = inputs.root.join("dynamic");
    std::fs::write(&dynamic, fake_elf(&[6, 3, 1], b"")).unwrap(); // PT_INTERP
    let script = inputs.root.join("script");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    let no_nsm = inputs.root.join("blobs-without-nsm");
    std::fs::create_dir(&no_nsm).unwrap();
    for name in ["bzImage", "bzImage.config", "cmdline"] {
        std::fs::copy(inputs.blobs.join(name), no_nsm.join(name)).unwrap();
    }
    let run = |args: &[String], envs: &[(&str, &str)], remove_epoch: bool| {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null());
        if remove_epoch {
            command.env_remove("SOURCE_DATE_EPOCH");
        } else {
            command.env("SOURCE_DATE_EPOCH", EPOCH);
        }
        for (k, v) in envs {
            command.env(k, v);
        }
        command.output().unwrap()
    };
    let s = |p: &Path| p.display().to_string();
    let (enclave, init) = (s(&inputs.enclave), s(&inputs.init));
    let args = |enclave: &str, init: &str, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["build", "--enclave", enclave, "--init", init]
            .map(str::to_owned)
            .to_vec();
        v.extend(["--out-dir".to_owned(), s(&out)]);
        v.extend(extra.iter().map(|x| (*x).to_owned()));
        v
    };
    let no_nsm = s(&no_nsm);
    /// Arguments, extra environment, whether SOURCE_DATE_EPOCH is unset, what the line names.
    type Case<'a> = (Vec<String>, Vec<(&'a str, &'a str)>, bool, &'a str);
    let cases: Vec<Case> = vec![
        (
            args("/nonexistent/enclave", &init, &[]),
            vec![],
            false,
            "--enclave /nonexistent/enclave",
        ),
        (
            args(&enclave, "/nonexistent/init", &[]),
            vec![],
            false,
            "--init /nonexistent/init",
        ),
        (
            args(&s(&script), &init, &[]),
            vec![],
            false,
            "not an ELF file",
        ),
        (
            args(&enclave, &s(&dynamic), &[]),
            vec![],
            false,
            "dynamically linked",
        ),
        (
            args(&enclave, &init, &[]),
            vec![],
            true,
            "SOURCE_DATE_EPOCH is not set",
        ),
        (
            args(&enclave, &init, &[]),
            vec![("SOURCE_DATE_EPOCH", "yesterday")],
            false,
            "not a number",
        ),
        (
            args(&enclave, &init, &[]),
            vec![("SOURCE_DATE_EPOCH", "99999999999")],
            false,
            "beyond 2106",
        ),
        (
            args(&enclave, &init, &["--nitro-blobs", "/nonexistent/blobs"]),
            vec![],
            false,
            "not a directory",
        ),
        (
            args(&enclave, &init, &["--nitro-blobs", &no_nsm]),
            vec![],
            false,
            "nsm.ko",
        ),
    ];
    for (argv, envs, remove_epoch, needle) in cases {
        let line = refused(&run(&argv, &envs, remove_epoch));
        assert!(
            line.contains(needle),
            "{argv:?}: {line:?} should mention {needle:?}"
        );
        assert!(
            !out.exists(),
            "{argv:?} wrote {} before refusing",
            out.display()
        );
    }

    // A command line without a required flag is a usage error (exit 2).
    let usage = run(&["build".into(), "--enclave".into(), enclave], &[], false);
    assert_eq!(usage.status.code(), Some(2));
}

#[test]
fn the_baked_config_is_one_the_enclave_accepts() {
    use cosigner_enclave::config::{AttesterConfig, Config, SealerConfig, enclave_build_checks};
    use cosigner_enclave::transport::Endpoint;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("enclave.toml");
    let key = image::KmsKey::new(DEPLOYMENT_ARN, Some("eu-west-1")).unwrap();
    for (key, deployable) in [(image::KmsKey::placeholder(), false), (key, true)] {
        std::fs::write(&path, image::enclave_config(&key)).unwrap();
        let config = Config::load(&path).unwrap();
        assert!(config.token.is_none(), "an enclave has no token");
        assert_eq!(
            config.listen,
            Endpoint::Vsock {
                cid: u32::MAX,
                port: 5000
            }
        );
        assert_eq!(config.store, Endpoint::Vsock { cid: 3, port: 5001 });
        assert!(matches!(config.attester, AttesterConfig::Nitro));
        let SealerConfig::Kms(kms) = &config.sealer else {
            panic!("the image seals with KMS: {:?}", config.sealer)
        };
        assert_eq!(
            (kms.key_id.as_str(), kms.region.as_str()),
            (key.arn.as_str(), key.region.as_str())
        );
        assert_eq!(kms.endpoint, Endpoint::Vsock { cid: 3, port: 8000 });
        assert_eq!(
            kms.credentials_file, None,
            "credentials come from the parent"
        );
        assert!(kms.allow_unanchored_state);
        // What a Nitro build of the enclave checks on top: the placeholder does not start.
        assert_eq!(enclave_build_checks(kms).is_ok(), deployable, "{}", key.arn);
    }
}

const DEPLOYMENT_ARN: &str =
    "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

fn build_with_key(inputs: &Inputs, out: &Path, key: Option<&str>, region: Option<&str>) -> Output {
    let mut envs = Vec::new();
    if let Some(key) = key {
        envs.push(("KMS_KEY_ARN", key));
    }
    if let Some(region) = region {
        envs.push(("AWS_REGION", region));
    }
    build(inputs, out, false, &envs)
}

#[test]
fn the_kms_key_is_a_build_input_and_part_of_pcr2() {
    let inputs = inputs();
    let baked = |dir: &Path| {
        let entries = cpio::read(&read(dir, image::files::APP_RAMDISK)).unwrap();
        let config = entries
            .iter()
            .find(|e| e.path == "etc/cosigner/enclave.toml")
            .unwrap();
        String::from_utf8(config.data.clone()).unwrap()
    };
    let placeholder = inputs.root.join("placeholder");
    let out = build_with_key(&inputs, &placeholder, None, None);
    ok(&out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PLACEHOLDER"),
        "a placeholder build says so"
    );
    assert!(baked(&placeholder).contains(image::PLACEHOLDER_KMS_KEY_ARN));
    // AWS_REGION alone does not change the reference image.
    let region_only = inputs.root.join("region-only");
    ok(&build_with_key(
        &inputs,
        &region_only,
        None,
        Some("eu-west-1"),
    ));
    assert_eq!(pcrs(&placeholder), pcrs(&region_only));

    let a = inputs.root.join("a");
    let a2 = inputs.root.join("a2");
    let b = inputs.root.join("b");
    ok(&build_with_key(&inputs, &a, Some(DEPLOYMENT_ARN), None));
    ok(&build_with_key(
        &inputs,
        &a2,
        Some(DEPLOYMENT_ARN),
        Some("eu-west-1"),
    ));
    let other = DEPLOYMENT_ARN.replace("111122223333", "444455556666");
    ok(&build_with_key(&inputs, &b, Some(&other), None));
    assert!(baked(&a).contains(&format!("key_id = \"{DEPLOYMENT_ARN}\"")));
    assert!(baked(&a).contains("region = \"eu-west-1\""));
    assert_eq!(
        read(&a, image::files::APP_RAMDISK),
        read(&a2, image::files::APP_RAMDISK)
    );
    // The key is measured: another key, another PCR2; the placeholder, another again.
    assert_ne!(pcrs(&a)["PCR2"], pcrs(&b)["PCR2"]);
    assert_ne!(pcrs(&a)["PCR2"], pcrs(&placeholder)["PCR2"]);

    // Refused in one line, nothing written: a region that is not the key's, malformed ARNs
    // (including one that would break out of its TOML string), and --config with a key.
    let never = inputs.root.join("never");
    for (key, region, expected) in [
        (DEPLOYMENT_ARN, Some("us-east-1"), "us-east-1"),
        ("alias/cosigner", None, "expected arn:aws:kms"),
        (
            "1234abcd-12ab-34cd-56ef-1234567890ab",
            None,
            "expected arn:aws:kms",
        ),
        ("arn:aws:kms:eu-west-1:1111:key/x", None, "12 digits"),
        (
            "arn:aws:s3:eu-west-1:111122223333:key/x",
            None,
            "expected arn:aws:kms",
        ),
        (
            "arn:aws:kms:eu-west-1:111122223333:key/x\"\nallow_unanchored_state = false\n#",
            None,
            "key/ID",
        ),
    ] {
        let line = refused(&build_with_key(&inputs, &never, Some(key), region));
        assert!(line.contains(expected), "{key}: {line}");
        assert!(!never.exists());
    }
    let config = inputs.root.join("production.toml");
    std::fs::write(&config, KMS_CONFIG).unwrap();
    let out = build_with_config(&inputs, &never, &config, Some(DEPLOYMENT_ARN));
    assert!(refused(&out).contains("not both"));
    assert!(!never.exists());
}

#[test]
fn the_trust_snippet_is_a_trust_file_measurement_and_rollouts_pin_two() {
    let inputs = inputs();
    let old = inputs.built("old", true);
    std::fs::write(&inputs.enclave, fake_elf(&[1, 1], b"the next release")).unwrap();
    let new = inputs.built("new", true);
    assert_ne!(pcrs(&old)["PCR2"], pcrs(&new)["PCR2"]);

    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    let root = params.self_signed(&key).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("root.pem"), root.pem()).unwrap();
    let snippet = |d: &Path| String::from_utf8(read(d, image::files::TRUST)).unwrap();

    // During a rollout the trust file holds both images' tables.
    let trust_path = dir.path().join("trust.toml");
    std::fs::write(
        &trust_path,
        format!(
            "roots = [\"root.pem\"]\n\n{}\n{}",
            snippet(&old),
            snippet(&new)
        ),
    )
    .unwrap();
    let trust = cosigner_client::trust::Trust::load(&trust_path).unwrap();
    assert_eq!(trust.measurements.len(), 2);
    for (measurement, out) in trust.measurements.iter().zip([&old, &new]) {
        let json = pcrs(out);
        for index in [0u8, 1, 2] {
            let value = json[format!("PCR{index}")].as_str().unwrap();
            assert_eq!(hex::encode(&measurement.0[&index]), value);
        }
    }

    // The PCR2-only snippet (no blobs) is a valid, if partial, measurement too.
    let partial = inputs.root.join("partial");
    ok(&build(&inputs, &partial, false, &[]));
    std::fs::write(
        &trust_path,
        format!("roots = [\"root.pem\"]\n{}", snippet(&partial)),
    )
    .unwrap();
    let trust = cosigner_client::trust::Trust::load(&trust_path).unwrap();
    assert_eq!(trust.measurements.len(), 1);
    assert_eq!(
        trust.measurements[0].0.keys().copied().collect::<Vec<_>>(),
        [2]
    );
}

/// A deployment's configuration (its KMS key is part of what clients trust), as docs/nitro.md
/// shows it.
const KMS_CONFIG: &str = r#"listen = "vsock:4294967295:5000"
store = "vsock:3:5001"

[sealer]
kind = "kms"
key_id = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
region = "eu-west-1"
endpoint = "vsock:3:8000"
allow_unanchored_state = true

[attester]
kind = "nitro"
"#;

#[test]
fn a_deployments_config_is_baked_in_and_measured() {
    let inputs = inputs();
    let config = inputs.root.join("production.toml");
    std::fs::write(&config, KMS_CONFIG).unwrap();
    let parsed = cosigner_enclave::config::Config::parse(KMS_CONFIG).unwrap();
    let cosigner_enclave::config::SealerConfig::Kms(kms) = &parsed.sealer else {
        panic!()
    };
    cosigner_enclave::config::enclave_build_checks(kms).unwrap();

    let default = inputs.root.join("default");
    let deployed = inputs.root.join("deployed");
    ok(&build(&inputs, &default, false, &[]));
    ok(&build_with_config(&inputs, &deployed, &config, None));
    let entries = cpio::read(&read(&deployed, image::files::APP_RAMDISK)).unwrap();
    let baked = entries
        .iter()
        .find(|e| e.path == "etc/cosigner/enclave.toml")
        .unwrap();
    assert_eq!(baked.data, KMS_CONFIG.as_bytes());
    assert_ne!(pcrs(&default)["PCR2"], pcrs(&deployed)["PCR2"]);

    // Not TOML, or absent: one line, nothing written.
    std::fs::write(&config, "listen = [unclosed\n").unwrap();
    let never = inputs.root.join("never");
    for path in [config.clone(), inputs.root.join("absent.toml")] {
        let out = build_with_config(&inputs, &never, &path, None);
        let line = refused(&out);
        assert!(line.contains("--config"), "{line}");
        assert!(!never.exists());
    }
}
