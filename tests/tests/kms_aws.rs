//! The AWS KMS backend without AWS (`cosigner_kms::aws`):
//!
//! * SigV4 against AWS's published Signature Version 4 test suite;
//! * `CiphertextForRecipient` (CMS EnvelopedData): a real KMS answer from AWS's Nitro Enclaves SDK
//!   parsed, EnvelopedData built per the AWS layout (`cosigner_tests::kms_standin::envelope`)
//!   opened, and tampered, truncated, wrong-algorithm and wrong-recipient ones refused;
//! * the `Recipient` path end to end ([`KmsSealer`] with its production delivery) against the KMS
//!   stand-in (`cosigner_tests::kms_standin`, plain HTTP here; `tests/kms_standin.rs` runs its
//!   binary over TLS) that answers `CiphertextForRecipient` like KMS;
//! * the client and the sealer against moto's KMS-compatible server (`python3 -m moto.server`,
//!   from PyPI `moto[server]`), with SigV4 verification switched on in moto. Moto does not
//!   implement `Recipient`, so those tests run without it. Skipped, with a message, where moto is
//!   not installed (`make deps` installs it).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use cosigner_kms::aws::client::{KmsClient, TcpTransport};
use cosigner_kms::aws::cms::{RecipientKey, parse_enveloped_data};
use cosigner_kms::aws::sigv4::{self, Credentials, Scope};
use cosigner_kms::aws::{KMS_SEAL_FORMAT_VERSION, KmsSealer, RecipientAttester};
use cosigner_kms::{KmsError, SealContext, Sealer};
use cosigner_tests::kms_standin::envelope::{
    Build, OID_AES128_CBC, OID_RSA_PKCS1, OID_SHA1, OID_SHA256, oaep_params,
};
use cosigner_tests::kms_standin::{self, Behaviour, Server, StandinConfig};
use cosigner_tests::moto::Moto;
use serde_json::json;

// ---------------------------------------------------------------------------------------------
// SigV4: AWS's Signature Version 4 test suite.
//
// Source: the suite AWS published with the General Reference ("Signature Version 4 test suite",
// aws-sig-v4-test-suite.zip), as vendored in bazelbuild/bazel under
// third_party/aws-sig-v4-test-suite/<case>/<case>.{req,creq,sts,authz} (and in botocore and the
// AWS SDKs). Every case signs with the suite's example credentials, region us-east-1, service
// `service`, at 2015-08-30T12:36:00Z. The expected values are the suite's files verbatim.

const SUITE_ACCESS_KEY: &str = "AKIDEXAMPLE";
const SUITE_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
/// post-sts-token/readme.txt: the example X-Amz-Security-Token.
const SUITE_TOKEN: &str = "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==";
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

struct Vector {
    name: &'static str,
    method: &'static str,
    query: &'static [(&'static str, &'static str)],
    headers: &'static [(&'static str, &'static str)],
    body: &'static [u8],
    token: bool,
    creq: String,
    sts_hash: &'static str,
    authz: String,
}

/// A case of the suite's vanilla family: the Host header alone, an empty body, no session token.
/// Their canonical requests and `Authorization` headers differ only in the method, the canonical
/// query string (empty, or as the suite's `.creq` file gives it) and the signature; the
/// string-to-sign hash and the signature are the suite's files verbatim.
fn vanilla(
    name: &'static str,
    method: &'static str,
    query: &'static [(&'static str, &'static str)],
    canonical_query: &str,
    sts_hash: &'static str,
    signature: &str,
) -> Vector {
    Vector {
        name,
        method,
        query,
        headers: &[("Host", "example.amazonaws.com")],
        body: b"",
        token: false,
        creq: format!(
            "{method}\n/\n{canonical_query}\nhost:example.amazonaws.com\n\
             x-amz-date:20150830T123600Z\n\nhost;x-amz-date\n{EMPTY_SHA256}"
        ),
        sts_hash,
        authz: format!(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, Signature={signature}"
        ),
    }
}

fn suite_time() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_440_938_160) // 2015-08-30T12:36:00Z
}

fn vectors() -> Vec<Vector> {
    let host = ("Host", "example.amazonaws.com");
    vec![
        vanilla(
            "get-vanilla",
            "GET",
            &[],
            "",
            "bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63",
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        ),
        vanilla(
            "post-vanilla",
            "POST",
            &[],
            "",
            "553f88c9e4d10fc9e109e2aeb65f030801b70c2f6468faca261d401ae622fc87",
            "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
        ),
        vanilla(
            "get-vanilla-query-order-key-case",
            "GET",
            &[("Param2", "value2"), ("Param1", "value1")],
            "Param1=value1&Param2=value2",
            "816cd5b414d056048ba4f7c5386d6e0533120fb1fcfa93762cf0fc39e2cf19e0",
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
        ),
        vanilla(
            "get-vanilla-query-order-key",
            "GET",
            &[("Param1", "value2"), ("Param1", "Value1")],
            "Param1=Value1&Param1=value2",
            "704b4cef673542d84cdff252633f065e8daeba5f168b77116f8b1bcaf3d38f89",
            "eedbc4e291e521cf13422ffca22be7d2eb8146eecf653089df300a15b2382bd1",
        ),
        Vector {
            name: "post-x-www-form-urlencoded",
            method: "POST",
            query: &[],
            headers: &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Host", "example.amazonaws.com"),
            ],
            body: b"Param1=value1",
            token: false,
            creq: "POST\n/\n\ncontent-type:application/x-www-form-urlencoded\n\
                   host:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\n\
                   content-type;host;x-amz-date\n\
                   9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e"
                .to_owned(),
            sts_hash: "42a5e5bb34198acb3e84da4f085bb7927f2bc277ca766e6d19c73c2154021281",
            authz: "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a".to_owned(),
        },
        Vector {
            // The request repeats My-Header1 three times; the values join in order.
            name: "get-header-key-duplicate",
            method: "GET",
            query: &[],
            headers: &[
                ("Host", "example.amazonaws.com"),
                ("My-Header1", "value2"),
                ("My-Header1", "value2"),
                ("My-Header1", "value1"),
            ],
            body: b"",
            token: false,
            creq: format!(
                "GET\n/\n\nhost:example.amazonaws.com\nmy-header1:value2,value2,value1\n\
                 x-amz-date:20150830T123600Z\n\nhost;my-header1;x-amz-date\n{EMPTY_SHA256}"
            ),
            sts_hash: "dc7f04a3abfde8d472b0ab1a418b741b7c67174dad1551b4117b15527fbe966c",
            authz: "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;my-header1;x-amz-date, Signature=c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea".to_owned(),
        },
        Vector {
            name: "get-header-value-trim",
            method: "GET",
            query: &[],
            headers: &[
                ("Host", "example.amazonaws.com"),
                ("My-Header1", " value1"),
                ("My-Header2", " \"a   b   c\""),
            ],
            body: b"",
            token: false,
            creq: format!(
                "GET\n/\n\nhost:example.amazonaws.com\nmy-header1:value1\nmy-header2:\"a b c\"\n\
                 x-amz-date:20150830T123600Z\n\nhost;my-header1;my-header2;x-amz-date\n\
                 {EMPTY_SHA256}"
            ),
            sts_hash: "a726db9b0df21c14f559d0a978e563112acb1b9e05476f0a6a1c7d68f28605c7",
            authz: "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;my-header1;my-header2;x-amz-date, Signature=acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736".to_owned(),
        },
        Vector {
            // post-sts-token/post-sts-header-before: the session token is a signed header.
            name: "post-sts-header-before",
            method: "POST",
            query: &[],
            headers: &[("Host", "example.amazonaws.com")],
            body: b"",
            token: true,
            creq: format!(
                "POST\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\
                 x-amz-security-token:{SUITE_TOKEN}\n\nhost;x-amz-date;x-amz-security-token\n\
                 {EMPTY_SHA256}"
            ),
            sts_hash: "c237e1b440d4c63c32ca95b5b99481081cb7b13c7e40434868e71567c1a882f6",
            authz: "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date;x-amz-security-token, Signature=85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead".to_owned(),
        },
    ]
    .into_iter()
    .inspect(|v| assert!(v.headers.contains(&host), "{}", v.name))
    .collect()
}

#[test]
fn sigv4_matches_the_aws_test_suite() {
    for v in vectors() {
        let creds = Credentials::new(
            SUITE_ACCESS_KEY,
            SUITE_SECRET,
            v.token.then(|| SUITE_TOKEN.to_owned()),
        );
        let signed = sigv4::sign(
            &sigv4::Request {
                method: v.method,
                path: "/",
                query: v.query,
                headers: v.headers,
                body: v.body,
            },
            &creds,
            &Scope {
                region: "us-east-1",
                service: "service",
                time: suite_time(),
            },
        )
        .unwrap();
        assert_eq!(signed.canonical_request, v.creq, "{}: creq", v.name);
        let sts = format!(
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n{}",
            v.sts_hash
        );
        assert_eq!(signed.string_to_sign, sts, "{}: sts", v.name);
        assert_eq!(signed.authorization, v.authz, "{}: authz", v.name);
        let extra = signed.extra_headers(&creds);
        assert_eq!(extra[0], ("X-Amz-Date", "20150830T123600Z".to_owned()));
        assert_eq!(
            extra.iter().any(|(n, _)| *n == "X-Amz-Security-Token"),
            v.token,
            "{}",
            v.name
        );
    }
}

#[test]
fn sigv4_signing_key_matches_the_aws_example() {
    // AWS General Reference, "Examples of how to derive a signing key for Signature Version 4":
    // secret wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY, 20120215, us-east-1, iam.
    let key = sigv4::signing_key(SUITE_SECRET, "20120215", "us-east-1", "iam");
    assert_eq!(
        hex::encode(&key[..]),
        "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
    );
}

// ---------------------------------------------------------------------------------------------
// CiphertextForRecipient.

/// A `CiphertextForRecipient` returned by KMS, from AWS's Nitro Enclaves SDK for C
/// (aws/aws-nitro-enclaves-sdk-c, tests/cms_test.c, Apache-2.0): BER with indefinite lengths,
/// rid = 32-byte subjectKeyIdentifier, RSAES-OAEP(SHA-256, MGF1-SHA-256), AES-256-CBC, the
/// content a constructed [0] with one 48-byte segment. Its private key is not published, so it is
/// only parsed.
const AWS_KMS_ANSWER: &str = "308006092a864886f70d010703a0803080020102318201 6b30820167020102802070\
87b55df94ba3255cdf3c01840a2aa3ec93620625d601cf56f97bde7a3d2eb1303c06092a864886f70d0101073\
02fa00f300d06096086480165030402010500a11c301a06092a864886f70d010108300d060960864801650304\
02010500048201 00a0614593a030ee336bfff076618b0130d045de9f4d183d83c5da882f13abc1f4bf0d13645869\
393442ab582e6a04d697d52d5623e367e7e92db6ebd2bd07735b153f2826bee5df8e16c713a1e85cb6ba85e886\
81335c7e941a94abf0c0113e030916e2b6e1826db4ffb919b8e1b6f59ec277e58de40b0ffeecaa0d94fbcb2903\
74ed3dfc35d31a8f43ae1300fe20fdd986d4b8565657451f9dc693e134678920221c58a28da5e71ab6b31caa44\
5825a6385c6c4f5d5d5ebbc2c2570e9647fded36b559647bcb27e58886255f582c63d863ecec307d15763abce0\
b1b812a550938ca4e2d28a74563db52367558d3e2e82ac2a27fe5c9391a007c15f75b90ab0dd308006092a8648\
86f70d0107013 01d060960864801650304012a0410688c6d5f7f31b0fecedf09f2e7c99ac9a080043070e5caaffd\
49ad24efe15bf903be9d19895b777d269b57b025f6f67e7ef93f94464515f2ebe034ea0b7621a1ff19292e0000\
0000000000000000";

fn aws_kms_answer() -> Vec<u8> {
    let hex_text: String = AWS_KMS_ANSWER
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    hex::decode(hex_text).unwrap()
}

#[test]
fn a_real_kms_answer_parses() {
    let answer = aws_kms_answer();
    let parts = parse_enveloped_data(&answer).unwrap();
    assert_eq!(parts.encrypted_key.len(), 256);
    assert_eq!(hex::encode(&parts.encrypted_key[..8]), "a0614593a030ee33");
    assert_eq!(hex::encode(&parts.encrypted_key[248..]), "07c15f75b90ab0dd");
    assert_eq!(hex::encode(parts.iv), "688c6d5f7f31b0fecedf09f2e7c99ac9");
    assert_eq!(
        hex::encode(&parts.ciphertext),
        "70e5caaffd49ad24efe15bf903be9d19895b777d269b57b025f6f67e7ef93f94\
         464515f2ebe034ea0b7621a1ff19292e"
    );
    assert_eq!(parts.rid[0], 0x80);
    assert_eq!(parts.rid.len(), 34);
    // It is not for us: our key's RSA-OAEP refuses it.
    let key = RecipientKey::generate().unwrap();
    assert!(matches!(key.open(&answer), Err(KmsError::Recipient { .. })));
}

/// KMS's EnvelopedData, built by the stand-in's builder (`cosigner_tests::kms_standin::envelope`).
fn envelope(recipient_spki: &[u8], secret: &[u8], b: &Build) -> (Vec<u8>, std::ops::Range<usize>) {
    kms_standin::envelope::envelope(recipient_spki, secret, b).unwrap()
}

const DATA_KEY: [u8; 32] = *b"0123456789abcdef0123456789abcdef";

#[test]
fn an_enveloped_data_built_like_kms_opens() {
    let key = RecipientKey::generate().unwrap();
    assert_eq!(key.public_key_der().len(), 294);
    for build in [
        Build::default(),
        Build {
            segment: Some(7),
            ..Build::default()
        },
        Build {
            ber: false,
            segment: None,
            ..Build::default()
        },
        Build {
            ber: false,
            ..Build::default()
        },
    ] {
        let (cfr, _) = envelope(key.public_key_der(), &DATA_KEY, &build);
        assert_eq!(key.open(&cfr).unwrap().as_slice(), &DATA_KEY);
    }
    // Secrets of other sizes (GenerateRandom, Decrypt of longer plaintexts) too.
    for len in [0usize, 1, 15, 16, 17, 100] {
        let secret = vec![0x5a; len];
        let (cfr, _) = envelope(key.public_key_der(), &secret, &Build::default());
        assert_eq!(key.open(&cfr).unwrap().as_slice(), secret.as_slice());
    }
}

#[test]
fn tampered_and_truncated_enveloped_data_is_refused() {
    let key = RecipientKey::generate().unwrap();
    let (cfr, rid) = envelope(key.public_key_der(), &DATA_KEY, &Build::default());
    for cut in 0..cfr.len() {
        assert!(key.open(&cfr[..cut]).is_err(), "truncated to {cut}");
    }
    let mut extended = cfr.clone();
    extended.push(0);
    assert!(key.open(&extended).is_err());
    for i in 0..cfr.len() {
        let mut t = cfr.clone();
        t[i] ^= 0x01;
        match key.open(&t) {
            Err(_) => {}
            // CBC is not authenticated: a flipped IV or content bit changes the secret (the sealer's
            // AES-GCM then fails); the rid is not interpreted.
            Ok(secret) => assert!(
                secret.as_slice() != DATA_KEY || rid.contains(&i),
                "flipping byte {i} went unnoticed"
            ),
        }
    }
}

#[test]
fn wrong_algorithms_are_refused() {
    let key = RecipientKey::generate().unwrap();
    let cases = [
        (
            "OAEP without parameters (SHA-1)",
            Build {
                oaep_params: None,
                ..Build::default()
            },
        ),
        (
            "OAEP with SHA-1",
            Build {
                oaep_params: Some(oaep_params(OID_SHA1, OID_SHA1)),
                ..Build::default()
            },
        ),
        (
            "OAEP with MGF1-SHA-1",
            Build {
                oaep_params: Some(oaep_params(OID_SHA256, OID_SHA1)),
                ..Build::default()
            },
        ),
        (
            "RSA PKCS#1 v1.5",
            Build {
                key_alg_oid: OID_RSA_PKCS1,
                oaep_params: Some(vec![0x05, 0x00]),
                ..Build::default()
            },
        ),
        (
            "AES-128-CBC",
            Build {
                content_alg_oid: OID_AES128_CBC,
                ..Build::default()
            },
        ),
        (
            "short IV",
            Build {
                iv_len: 8,
                ..Build::default()
            },
        ),
    ];
    for (name, build) in cases {
        let (cfr, _) = envelope(key.public_key_der(), &DATA_KEY, &build);
        let err = key.open(&cfr).err();
        assert!(
            matches!(err, Some(KmsError::Recipient { .. })),
            "{name}: {err:?}"
        );
    }
}

#[test]
fn an_enveloped_data_for_another_recipient_is_refused() {
    let ours = RecipientKey::generate().unwrap();
    let theirs = RecipientKey::generate().unwrap();
    let (cfr, _) = envelope(theirs.public_key_der(), &DATA_KEY, &Build::default());
    let err = ours.open(&cfr).unwrap_err();
    assert!(err.to_string().contains("RSA-OAEP"), "{err}");
}

#[test]
fn random_bytes_never_panic_the_parser() {
    let key = RecipientKey::generate().unwrap();
    let (cfr, _) = envelope(key.public_key_der(), &DATA_KEY, &Build::default());
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..3000 {
        let mut t = cfr.clone();
        for _ in 0..(next() % 8 + 1) {
            let i = (next() as usize) % t.len();
            t[i] = next() as u8;
        }
        let _ = parse_enveloped_data(&t);
        let cut = (next() as usize) % t.len();
        let _ = parse_enveloped_data(&t[..cut]);
    }
}

// ---------------------------------------------------------------------------------------------
// The KMS stand-in with `Recipient` (`cosigner_tests::kms_standin`), to run KmsSealer's
// production path end to end.

fn client_for(addr: SocketAddr, region: &str, creds: Credentials) -> KmsClient {
    KmsClient::new(
        Box::new(TcpTransport {
            addr,
            timeout: Duration::from_secs(10),
        }),
        region,
        Box::new(creds),
    )
    .unwrap()
}

/// A plain-HTTP stand-in for `key_arn`, checking signatures by AKIDTEST/secret.
fn fake_kms(key_arn: &str, behaviour: Behaviour) -> Server {
    let mut config = StandinConfig::new(key_arn, "AKIDTEST").unwrap();
    config.secret_access_key = Some("secret".to_owned().into());
    config.behaviour = behaviour;
    Server::plain(config).unwrap()
}

const FAKE_ARN: &str =
    "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
const CTX: SealContext = SealContext::new("frost-key-package", [0xab; 16], 2, 7);

/// Documents laid out as QEMU's emulated NSM writes them, unsigned; the stand-in reads their
/// `public_key` as KMS reads a verified document's.
fn test_attester() -> Arc<dyn RecipientAttester> {
    Arc::new(|public_key: &[u8]| -> Result<Vec<u8>, String> {
        kms_standin::unsigned_document(public_key).map_err(|e| e.to_string())
    })
}

#[test]
fn kms_sealer_with_recipient_round_trips_through_a_kms_stand_in() {
    let kms = fake_kms(FAKE_ARN, Behaviour::Kms);
    let creds = Credentials::new("AKIDTEST", "secret", Some("session-token".into()));
    let sealer = KmsSealer::new(
        client_for(kms.addr(), "eu-west-1", creds),
        FAKE_ARN,
        test_attester(),
    )
    .unwrap();
    let secret = b"a FROST key package, 136 bytes in real life";
    let blob = sealer.seal(&CTX, secret).unwrap();
    assert_eq!(blob[0], KMS_SEAL_FORMAT_VERSION);
    assert_eq!(&blob[1..33], &sealer.key_id());
    assert_eq!(sealer.open(&CTX, &blob).unwrap().as_slice(), secret);

    // What went over the wire: Recipient with the recipient key's document, the context, no
    // plaintext anywhere.
    let seen = kms.requests();
    assert_eq!(seen.len(), 2);
    let (target, gdk) = &seen[0];
    assert_eq!(target, "TrentService.GenerateDataKey");
    let doc = B64
        .decode(gdk["Recipient"]["AttestationDocument"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        kms_standin::recipient_public_key(&doc).unwrap(),
        sealer.recipient_public_key().unwrap()
    );
    assert_eq!(gdk["EncryptionContext"]["cosigner:wallet"], "ab".repeat(16));
    assert_eq!(seen[1].0, "TrentService.Decrypt");
    assert_eq!(seen[1].1["KeyId"], FAKE_ARN);
    assert!(seen[1].1.get("Recipient").is_some());

    // Another context: KMS refuses the data key (InvalidCiphertextException) → Unseal.
    let other = SealContext { epoch: 8, ..CTX };
    assert!(matches!(
        sealer.open(&other, &blob),
        Err(KmsError::Unseal { .. })
    ));
    // A flipped ciphertext bit: KMS hands out the key, AES-GCM refuses.
    let mut t = blob.clone();
    *t.last_mut().unwrap() ^= 1;
    assert!(matches!(
        sealer.open(&CTX, &t),
        Err(KmsError::Unseal { .. })
    ));
}

#[test]
fn kms_sealer_refuses_answers_for_another_key_or_without_recipient_data() {
    const OTHER: &str =
        "arn:aws:kms:eu-west-1:444455556666:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    let creds = Credentials::new("AKIDTEST", "secret", None);
    let sealer_for = |kms: &Server, key: &str| {
        KmsSealer::new(
            client_for(kms.addr(), "eu-west-1", creds.clone()),
            key,
            test_attester(),
        )
        .unwrap()
    };

    // KMS does not know the key: a named AWS error.
    let kms = fake_kms(OTHER, Behaviour::Kms);
    let err = sealer_for(&kms, FAKE_ARN).seal(&CTX, b"x").unwrap_err();
    assert!(
        matches!(&err, KmsError::AwsError { status: 400, error_type, .. } if error_type == "NotFoundException"),
        "{err:?}"
    );
    // A blob under another key id is refused before KMS is asked.
    let foreign = sealer_for(&kms, OTHER).seal(&CTX, b"x").unwrap();
    let seen = kms.requests().len();
    assert!(matches!(
        sealer_for(&kms, FAKE_ARN).open(&CTX, &foreign),
        Err(KmsError::SealedBlobKeyMismatch { .. })
    ));
    assert_eq!(kms.requests().len(), seen);

    // An answer naming another key (another account's KMS) is refused.
    let kms = fake_kms(FAKE_ARN, Behaviour::AnswerFor(OTHER.to_owned()));
    let err = sealer_for(&kms, FAKE_ARN).seal(&CTX, b"x").unwrap_err();
    assert!(matches!(err, KmsError::AwsKeyMismatch { .. }), "{err:?}");

    // A server that ignores Recipient and answers the plaintext: the production sealer refuses
    // (it never takes a data key in clear); the insecure one, made for such servers, works.
    let kms = fake_kms(FAKE_ARN, Behaviour::IgnoreRecipient);
    let err = sealer_for(&kms, FAKE_ARN).seal(&CTX, b"x").unwrap_err();
    assert!(
        err.to_string()
            .contains("plaintext key although a Recipient"),
        "{err}"
    );
    let plain =
        KmsSealer::insecure_without_recipient(client_for(kms.addr(), "eu-west-1", creds), FAKE_ARN)
            .unwrap();
    let blob = plain.seal(&CTX, b"y").unwrap();
    assert_eq!(plain.open(&CTX, &blob).unwrap().as_slice(), b"y");
}

// ---------------------------------------------------------------------------------------------
// moto: a KMS-compatible server (no Recipient), with SigV4 verification on.

#[test]
fn kms_client_round_trips_against_moto() {
    let Some(moto) = Moto::start_or_skip() else {
        return;
    };
    let started = Instant::now();
    let creds = moto.user_credentials().unwrap();
    let client = client_for(moto.addr, "us-east-1", creds.clone())
        .with_host(&moto.addr.to_string())
        .unwrap();

    let created = client
        .call("CreateKey", &json!({"Description": "cosigner test"}))
        .unwrap();
    let arn = created["KeyMetadata"]["Arn"].as_str().unwrap().to_owned();
    assert!(cosigner_kms::aws::is_key_arn(&arn), "{arn}");

    let ctx = BTreeMap::from([("cosigner:purpose".to_owned(), "test".to_owned())]);
    let enc = client.encrypt(&arn, b"hello kms", &ctx).unwrap();
    assert_eq!(enc.key_id, arn);
    let dec = client
        .decrypt(&arn, &enc.ciphertext_blob, &ctx, None)
        .unwrap();
    assert_eq!(dec.plaintext.unwrap().as_slice(), b"hello kms");
    assert!(dec.ciphertext_for_recipient.is_none());

    let gdk = client.generate_data_key(&arn, &ctx, None).unwrap();
    let data_key = gdk.plaintext.unwrap();
    assert_eq!(data_key.len(), 32);
    let dec = client
        .decrypt(&arn, &gdk.ciphertext_blob, &ctx, None)
        .unwrap();
    assert_eq!(dec.plaintext.unwrap().as_slice(), data_key.as_slice());

    // Another encryption context: refused by KMS, with its error type.
    let other = BTreeMap::from([("cosigner:purpose".to_owned(), "other".to_owned())]);
    let err = client
        .decrypt(&arn, &gdk.ciphertext_blob, &other, None)
        .unwrap_err();
    assert!(
        matches!(&err, KmsError::AwsError { status: 400, error_type, .. } if error_type == "InvalidCiphertextException"),
        "{err:?}"
    );

    // A wrong secret: moto recomputes the signature and refuses it.
    let forged = client_for(
        moto.addr,
        "us-east-1",
        Credentials::new(creds.access_key_id.clone(), "not-the-secret", None),
    )
    .with_host(&moto.addr.to_string())
    .unwrap();
    let err = forged.encrypt(&arn, b"x", &ctx).unwrap_err();
    assert!(
        matches!(&err, KmsError::AwsError { status: 400..=403, error_type, .. }
            if error_type.contains("Signature")),
        "{err:?}"
    );
    eprintln!("moto client round trips: {:?}", started.elapsed());
}

#[test]
fn kms_sealer_round_trips_against_moto_without_recipient() {
    let Some((moto, creds)) = Moto::start_with_user_or_skip() else {
        return;
    };
    let client = || {
        client_for(moto.addr, "us-east-1", creds.clone())
            .with_host(&moto.addr.to_string())
            .unwrap()
    };
    let arn = client().call("CreateKey", &json!({})).unwrap()["KeyMetadata"]["Arn"]
        .as_str()
        .unwrap()
        .to_owned();
    let sealer = KmsSealer::insecure_without_recipient(client(), &arn).unwrap();
    let secret = vec![0x42u8; 136];
    let t = Instant::now();
    let blob = sealer.seal(&CTX, &secret).unwrap();
    let seal = t.elapsed();
    let t = Instant::now();
    assert_eq!(
        sealer.open(&CTX, &blob).unwrap().as_slice(),
        secret.as_slice()
    );
    let open = t.elapsed();
    eprintln!("moto: seal {seal:?}, open {open:?}");
    assert!(matches!(
        sealer.open(&SealContext { party: 3, ..CTX }, &blob),
        Err(KmsError::Unseal { .. })
    ));
    let mut t = blob.clone();
    let last = t.len() - 1;
    t[last] ^= 0x80;
    assert!(matches!(
        sealer.open(&CTX, &t),
        Err(KmsError::Unseal { .. })
    ));
    // A CiphertextBlob of another key, spliced in: KMS refuses it (IncorrectKeyException) since
    // the request names our key.
    let other_arn = client().call("CreateKey", &json!({})).unwrap()["KeyMetadata"]["Arn"]
        .as_str()
        .unwrap()
        .to_owned();
    let other = KmsSealer::insecure_without_recipient(client(), &other_arn).unwrap();
    let foreign = other.seal(&CTX, &secret).unwrap();
    let mut spliced = blob[..33].to_vec();
    spliced.extend_from_slice(&foreign[33..]);
    let err = sealer.open(&CTX, &spliced).unwrap_err();
    // (KMS answers IncorrectKeyException, which the sealer reports as Unseal; moto answers
    // AccessDeniedException.)
    assert!(
        matches!(
            &err,
            KmsError::Unseal { .. } | KmsError::AwsError { status: 400, .. }
        ),
        "{err:?}"
    );
}
