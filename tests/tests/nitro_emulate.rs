//! What `make nitro-emulate` relies on that runs without QEMU: the parent's `hybrid-vsock:`
//! relay (the host side of the emulated enclave's vsock, docs/nitro.md "Emulator") with real
//! processes, and the script's refusals when a tool or blob is missing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;

use cosigner_tests::{ChildGuard, Cosigner, free_port, run, try_bin};

/// The guest port the image listens on (`listen = "vsock:4294967295:5000"`).
const ENCLAVE_PORT: &str = "5000";

/// One line from `stream`, read a byte at a time (the backend must not read past it).
fn read_line(stream: &mut UnixStream) -> Option<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stream.read(&mut byte).ok()? == 1 {
        if byte[0] == b'\n' {
            return String::from_utf8(line).ok();
        }
        line.push(byte[0]);
    }
    None
}

/// A user-space vsock backend's host side, as `vhost-device-vsock --vm uds-path=…` serves it:
/// `CONNECT <port>\n` is answered `OK <host port>\n` and the socket then carries the guest's
/// stream; a port nothing listens on is answered by hanging up. The "guest" here is an enclave
/// process listening on a unix socket.
fn hybrid_backend(listener: UnixListener, guest: PathBuf) {
    for host in listener.incoming() {
        let Ok(mut host) = host else { return };
        let guest = guest.clone();
        std::thread::spawn(move || {
            let Some(line) = read_line(&mut host) else {
                return;
            };
            if line != format!("CONNECT {ENCLAVE_PORT}") {
                return;
            }
            let Ok(enclave) = UnixStream::connect(&guest) else {
                return;
            };
            if host.write_all(b"OK 1073741824\n").is_err() {
                return;
            }
            let (mut to_enclave, mut from_host) =
                (enclave.try_clone().unwrap(), host.try_clone().unwrap());
            let up = std::thread::spawn(move || {
                let _ = std::io::copy(&mut from_host, &mut to_enclave);
                let _ = to_enclave.shutdown(std::net::Shutdown::Write);
            });
            let (mut from_enclave, mut to_host) = (enclave, host);
            let _ = std::io::copy(&mut from_enclave, &mut to_host);
            let _ = to_host.shutdown(std::net::Shutdown::Write);
            let _ = up.join();
        });
    }
}

/// A second parent in front of `cosigner`'s enclave, reaching it as `hybrid-vsock:BACKEND:port`.
fn hybrid_parent(dir: &Path, backend: &Path, port: u16, enclave_port: &str) -> ChildGuard {
    let d = dir.display();
    let config = dir.join("parent.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nenclave = \"hybrid-vsock:{}:{enclave_port}\"\n\
             store_socket = \"{d}/store.sock\"\ndatabase = \"{d}/store.db\"\n",
            backend.display()
        ),
    )
    .unwrap();
    let child = Command::new(try_bin("cosigner-parent").unwrap())
        .args(["run", "--config"])
        .arg(&config)
        .stdout(std::fs::File::create(dir.join("parent.log")).unwrap())
        .stderr(std::fs::File::create(dir.join("parent.err")).unwrap())
        .spawn()
        .unwrap();
    // Guarded at once: killed and waited for however the test ends.
    let child = ChildGuard(child);
    for _ in 0..400 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return child;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!("the hybrid-vsock parent did not come up");
}

fn trust_file(dir: &Path, cosigner: &Cosigner) -> PathBuf {
    let pcr0 = run("cosigner-enclave", ["measure"], &[]);
    assert_eq!(pcr0.code, Some(0), "{}", pcr0.stderr);
    let path = dir.join("trust.toml");
    std::fs::write(
        &path,
        format!(
            "roots = [\"{}\"]\n\n[[measurement]]\npcr0 = \"{}\"\n",
            cosigner.root_pem().display(),
            pcr0.stdout.trim()
        ),
    )
    .unwrap();
    path
}

#[test]
fn the_parent_relays_an_attested_session_through_a_hybrid_vsock_backend() {
    let provider = Cosigner::start("provider").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let backend = dir.path().join("vsock.sock");
    let listener = UnixListener::bind(&backend).unwrap();
    let guest = provider.hsm.dir().join("enclave.sock");
    std::thread::spawn(move || hybrid_backend(listener, guest));
    let trust = trust_file(dir.path(), &provider);

    let parent_dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _parent = hybrid_parent(parent_dir.path(), &backend, port, ENCLAVE_PORT);
    let status = |port: u16| {
        run(
            "cosigner",
            ["status", "--json"],
            &[
                (
                    "COSIGNER_PROVIDER".into(),
                    format!("tcp://127.0.0.1:{port}"),
                ),
                ("COSIGNER_TRUST".into(), trust.display().to_string()),
            ],
        )
    };
    let out = status(port);
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["provider"]["attested"], true, "{out:?}");

    // A guest port nothing listens on: the backend hangs up, the parent closes the client's
    // connection, and the client says the cosigner did not answer; the parent stays up.
    let other_dir = tempfile::tempdir().unwrap();
    let other_port = free_port();
    let _other = hybrid_parent(other_dir.path(), &backend, other_port, "5999");
    let out = status(other_port);
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["provider"]["attested"], false, "{out:?}");
    assert_ne!(out.code, Some(0));
    let log = std::fs::read_to_string(other_dir.path().join("parent.err")).unwrap();
    assert!(log.contains("cannot reach the enclave"), "{log}");
    let again = status(port);
    let report: serde_json::Value = serde_json::from_str(&again.stdout).unwrap();
    assert_eq!(report["provider"]["attested"], true, "{again:?}");
}

/// `scripts/nitro-emulate.sh` with `env`; returns (exit code, stderr).
fn emulate(env: &[(&str, &Path)]) -> (Option<i32>, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("bash")
        .arg(root.join("scripts/nitro-emulate.sh"))
        .env_remove("NITRO_BLOBS")
        .env_remove("EMULATE_ACCEL")
        .env_remove("BIN")
        .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A stand-in `qemu-system-x86_64` that prints a version and a machine list.
fn fake_qemu(dir: &Path, machines: &str) -> PathBuf {
    let path = dir.join(format!("qemu-{}", machines.len()));
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\ncase \"$1\" in\n--version) echo 'QEMU emulator version 9.2.0';;\n\
             -machine) printf '%s\\n' 'Supported machines are:' {machines};;\nesac\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn nitro_emulate_names_what_is_missing_before_starting_anything() {
    let dir = tempfile::tempdir().unwrap();
    let old = fake_qemu(dir.path(), "'microvm              microvm (i386)'");
    let nitro = fake_qemu(
        dir.path(),
        "'microvm              microvm (i386)' 'nitro-enclave        AWS Nitro Enclave'",
    );
    let blobs = dir.path().join("blobs");
    std::fs::create_dir(&blobs).unwrap();
    for blob in ["bzImage", "bzImage.config", "cmdline"] {
        std::fs::write(blobs.join(blob), "x").unwrap();
    }
    let absent = dir.path().join("no-such-qemu");
    let accel = Path::new("abacus");
    for (env, names) in [
        (vec![("QEMU", absent.as_path())], "QEMU not found"),
        (vec![("QEMU", old.as_path())], "no nitro-enclave machine"),
        (vec![("QEMU", nitro.as_path())], "NITRO_BLOBS is not set"),
        (
            vec![("QEMU", nitro.as_path()), ("NITRO_BLOBS", blobs.as_path())],
            "nsm.ko is missing",
        ),
    ] {
        let (code, stderr) = emulate(&env);
        assert_eq!(code, Some(1), "{env:?}: {stderr}");
        assert!(stderr.contains(names), "{env:?}: {stderr}");
    }
    std::fs::write(blobs.join("nsm.ko"), "x").unwrap();
    let (code, stderr) = emulate(&[
        ("QEMU", nitro.as_path()),
        ("NITRO_BLOBS", blobs.as_path()),
        ("EMULATE_ACCEL", accel),
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("EMULATE_ACCEL=abacus"), "{stderr}");
}

#[test]
fn enclave_image_refuses_private_kms_roots_unless_allowed() {
    // Checked before anything is built: the packer is a stand-in that must not run.
    // Every TOML spelling of the key that the enclave's parser also reads.
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let roots = "[\"-----BEGIN CERTIFICATE-----\"]";
    for (i, sealer) in [
        format!("[sealer]\nkind = \"kms\"\ntls_roots = {roots}\n"),
        format!("[sealer]\nkind = \"kms\"\n\"tls_roots\" = {roots}\n"),
        format!("sealer.kind = \"kms\"\nsealer.tls_roots = {roots}\n"),
        format!("sealer = {{ kind = \"kms\", tls_roots = {roots} }}\n"),
    ]
    .iter()
    .enumerate()
    {
        let config = dir.path().join(format!("enclave-{i}.toml"));
        std::fs::write(
            &config,
            format!("listen = \"vsock:4294967295:5000\"\n{sealer}"),
        )
        .unwrap();
        let out = Command::new("bash")
            .arg(root.join("scripts/enclave-image.sh"))
            .env("ENCLAVE_CONFIG", &config)
            // Neither the packer nor cargo may run: the refusal comes first.
            .env("COSIGNER_PACKER", "/bin/false")
            .env("CARGO", "/bin/false")
            .env("ENCLAVE_OUT", dir.path().join("out"))
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .env_remove("ALLOW_PRIVATE_KMS_ROOTS")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{sealer}: {stderr}");
        assert!(stderr.contains("tls_roots"), "{sealer}: {stderr}");
        assert!(!dir.path().join("out").exists());
    }
}
