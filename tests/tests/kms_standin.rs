//! `cosigner-kms-standin`, the local KMS stand-in with `Recipient` for the emulator, run as a
//! process: `KmsSealer` (production delivery, `Recipient`) seals and opens through TLS trusting
//! only the CA the stand-in wrote; requests without `Recipient`, with another signature or another
//! access key are refused as KMS refuses them; a restart with the saved CA key and master key still
//! serves the CA an image baked and opens the blobs sealed before; bad flags exit 2.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use cosigner_kms::aws::client::{KmsClient, TcpTransport, TlsTransport};
use cosigner_kms::aws::{Credentials, KmsSealer, RecipientAttester};
use cosigner_kms::{KmsError, SealContext, Sealer};
use cosigner_tests::ChildGuard;
use cosigner_tests::kms_standin::unsigned_document;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

const BIN: &str = env!("CARGO_BIN_EXE_cosigner-kms-standin");
const ARN: &str = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
const HOST: &str = "kms-standin.test";
const AKID: &str = "AKIASTANDINTEST";
const SECRET: &str = "standin/secret+key";
const CTX: SealContext = SealContext::new("frost-key-package", [0x5c; 16], 2, 3);

/// The running stand-in: its process (killed on drop) and address.
struct Running {
    _child: ChildGuard,
    addr: SocketAddr,
}

/// Starts the binary with the flags every run needs plus `extra`; reads `listening ADDR`.
fn start(dir: &Path, extra: &[&str]) -> Running {
    std::fs::write(dir.join("secret"), format!("{SECRET}\n")).unwrap();
    let ca_out = dir.join("ca.pem");
    let secret = dir.join("secret");
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--host",
        HOST,
        "--key-arn",
        ARN,
        "--ca-out",
        ca_out.to_str().unwrap(),
        "--access-key-id",
        AKID,
        "--secret-access-key-file",
        secret.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let mut child = Command::new(BIN)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let child = ChildGuard(child);
    let addr = line
        .trim_end()
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("first line {line:?}"))
        .parse()
        .unwrap();
    Running {
        _child: child,
        addr,
    }
}

/// A client over TLS to `addr` trusting only the PEM CA in `ca` (as `[sealer] tls_roots` does).
fn client(addr: SocketAddr, ca: &str, credentials: Credentials) -> KmsClient {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
        .unwrap();
    let tcp = TcpTransport {
        addr,
        timeout: Duration::from_secs(10),
    };
    let tls = TlsTransport::with_roots(Box::new(tcp), HOST, roots).unwrap();
    KmsClient::new(Box::new(tls), "eu-west-1", Box::new(credentials))
        .unwrap()
        .with_host(HOST)
        .unwrap()
}

fn credentials() -> Credentials {
    Credentials::new(AKID, SECRET, Some("session-token".to_owned()))
}

fn attester() -> Arc<dyn RecipientAttester> {
    Arc::new(|public_key: &[u8]| -> Result<Vec<u8>, String> {
        unsigned_document(public_key).map_err(|e| e.to_string())
    })
}

fn aws_error_type(err: &KmsError) -> &str {
    match err {
        KmsError::AwsError { error_type, .. } => error_type,
        other => panic!("not an AWS error: {other:?}"),
    }
}

#[test]
fn the_standin_binary_serves_recipient_over_tls_and_refuses_requests_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let standin = start(dir.path(), &["--quiet"]);
    let ca = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");

    // The production sealer, Recipient and all, through TLS under the stand-in's CA.
    let sealer = KmsSealer::new(client(standin.addr, &ca, credentials()), ARN, attester()).unwrap();
    let secret = b"a FROST key package";
    let blob = sealer.seal(&CTX, secret).unwrap();
    assert_eq!(sealer.open(&CTX, &blob).unwrap().as_slice(), secret);
    // Another context: the stand-in refuses the data key (InvalidCiphertextException) → Unseal.
    let other = SealContext { epoch: 4, ..CTX };
    assert!(matches!(
        sealer.open(&other, &blob),
        Err(KmsError::Unseal { .. })
    ));

    // Without Recipient: denied, as under a key policy that requires an attestation document.
    let plain = client(standin.addr, &ca, credentials());
    let context = BTreeMap::from([("cosigner:purpose".to_owned(), "test".to_owned())]);
    let err = plain.generate_data_key(ARN, &context, None).unwrap_err();
    assert_eq!(aws_error_type(&err), "AccessDeniedException", "{err}");
    let insecure = KmsSealer::insecure_without_recipient(plain, ARN).unwrap();
    let err = insecure.seal(&CTX, b"x").unwrap_err();
    assert_eq!(aws_error_type(&err), "AccessDeniedException", "{err}");

    // Another secret (the signature does not check) or another access key: refused.
    for (creds, expected) in [
        (
            Credentials::new(AKID, "not-the-secret", None),
            "InvalidSignatureException",
        ),
        (
            Credentials::new("AKIAOTHER", SECRET, None),
            "UnrecognizedClientException",
        ),
    ] {
        let sealer = KmsSealer::new(client(standin.addr, &ca, creds), ARN, attester()).unwrap();
        let err = sealer.seal(&CTX, b"x").unwrap_err();
        assert_eq!(aws_error_type(&err), expected, "{err}");
    }

    // Another key ARN: not found.
    let other_key = "arn:aws:kms:eu-west-1:111122223333:key/00000000-1111-2222-3333-444444444444";
    let err = KmsSealer::new(
        client(standin.addr, &ca, credentials()),
        other_key,
        attester(),
    )
    .unwrap()
    .seal(&CTX, b"x")
    .unwrap_err();
    assert_eq!(aws_error_type(&err), "NotFoundException", "{err}");

    // The public roots do not lead to the stand-in.
    let tcp = TcpTransport {
        addr: standin.addr,
        timeout: Duration::from_secs(10),
    };
    let public = KmsClient::new(
        Box::new(TlsTransport::webpki(Box::new(tcp), HOST).unwrap()),
        "eu-west-1",
        Box::new(credentials()),
    )
    .unwrap()
    .with_host(HOST)
    .unwrap();
    let err = KmsSealer::new(public, ARN, attester())
        .unwrap()
        .seal(&CTX, b"x")
        .unwrap_err();
    assert!(matches!(err, KmsError::AwsTransport { .. }), "{err:?}");
}

#[test]
fn a_restarted_standin_with_its_saved_keys_is_trusted_and_opens_its_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = dir.path().join("ca-key.pem");
    let master = dir.path().join("master.key");
    let keep = [
        "--ca-key",
        ca_key.to_str().unwrap(),
        "--master-key-file",
        master.to_str().unwrap(),
        "--quiet",
    ];
    let first = start(dir.path(), &keep);
    // The CA an image would have baked into its configuration.
    let baked = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
    let blob = KmsSealer::new(client(first.addr, &baked, credentials()), ARN, attester())
        .unwrap()
        .seal(&CTX, b"kept")
        .unwrap();
    drop(first);
    assert_eq!(std::fs::read(&master).unwrap().len(), 32);

    let second = start(dir.path(), &keep);
    let sealer =
        KmsSealer::new(client(second.addr, &baked, credentials()), ARN, attester()).unwrap();
    assert_eq!(sealer.open(&CTX, &blob).unwrap().as_slice(), b"kept");

    // Without the saved master key, a new stand-in cannot open it.
    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = start(fresh_dir.path(), &["--quiet"]);
    let fresh_ca = std::fs::read_to_string(fresh_dir.path().join("ca.pem")).unwrap();
    let err = KmsSealer::new(
        client(fresh.addr, &fresh_ca, credentials()),
        ARN,
        attester(),
    )
    .unwrap()
    .open(&CTX, &blob)
    .unwrap_err();
    assert!(matches!(err, KmsError::Unseal { .. }), "{err:?}");
}

#[test]
fn bad_flags_get_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let ca_out = dir.path().join("ca.pem");
    let ca_out = ca_out.to_str().unwrap();
    let good = [
        "--listen",
        "127.0.0.1:0",
        "--host",
        HOST,
        "--key-arn",
        ARN,
        "--ca-out",
        ca_out,
        "--access-key-id",
        AKID,
    ];
    let with = |name: &str, value: &str| {
        let mut args: Vec<String> = good.iter().map(|s| (*s).to_owned()).collect();
        let i = args.iter().position(|a| a == name).unwrap();
        args[i + 1] = value.to_owned();
        args
    };
    let without = |name: &str| {
        let mut args: Vec<String> = good.iter().map(|s| (*s).to_owned()).collect();
        let i = args.iter().position(|a| a == name).unwrap();
        args.drain(i..i + 2);
        args
    };
    let mut extra: Vec<String> = good.iter().map(|s| (*s).to_owned()).collect();
    extra.push("--port".to_owned());
    let mut twice: Vec<String> = good.iter().map(|s| (*s).to_owned()).collect();
    twice.extend(["--host".to_owned(), HOST.to_owned()]);
    for (args, why) in [
        (vec![], "--listen is required"),
        (extra, "unknown argument \"--port\""),
        (twice, "--host given twice"),
        (without("--key-arn"), "--key-arn is required"),
        (with("--listen", "localhost"), "expected IP:PORT"),
        (with("--host", "127.0.0.1"), "not a DNS name"),
        (with("--host", "bad host"), "not a DNS name"),
        (with("--key-arn", "alias/cosigner"), "key ARN"),
        (
            with(
                "--key-arn",
                "arn:aws:kms:eu-west-1:111122223333:alias/cosigner",
            ),
            "key ARN",
        ),
        (with("--access-key-id", "AKIA/1"), "access key id"),
        (with("--ca-out", "--quiet"), "--ca-out needs a value"),
    ] {
        let out = Command::new(BIN)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{why}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{why}: {stderr}");
        assert!(stderr.contains(why), "{why}: {stderr}");
        assert!(out.stdout.is_empty(), "{why}");
    }
    assert!(
        !Path::new(ca_out).exists(),
        "nothing written on a bad command line"
    );
}
