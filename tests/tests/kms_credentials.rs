//! AWS credentials from the parent to the enclave (`StoreRequest::AwsCredentials`), docs/kms.md:
//!
//! * the parent's IMDSv2 client against a metadata-service stand-in on loopback
//!   ([`cosigner_tests::imds::FakeImds`]): token first, token on every read, the role listed then
//!   read; refusals named (no role, tokens refused, credentials not `Success`); a silent or
//!   flooding service bounded in time and size;
//! * the store channel: answered from the configured source, refused by a parent configured
//!   without one, nothing secret in `Debug`;
//! * end to end: the real `cosigner-parent` fetching an STS role's temporary credentials (from
//!   moto, handed out by the IMDS stand-in) and serving them to the real `cosigner-enclave`, which
//!   seals a wallet under a moto KMS key with them; moto checks every signature, session token
//!   included. Skipped, with a message, where moto is not installed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::path::Path;
use std::time::{Duration, Instant};

use cosigner_parent::aws_credentials::{
    AwsCredentials, AwsCredentialsConfig, CredentialsProvider, imds, rfc3339_to_unix,
    store_response,
};
use cosigner_parent::store::SqliteStore;
use cosigner_parent::store_server::{handle, handle_with};
use cosigner_protocol::wire::{self, ErrorKind, StoreRequest, StoreResponse};
use cosigner_tests::Deployment;
use cosigner_tests::imds::{Behaviour, FakeImds, ROLE, TOKEN};
use cosigner_tests::moto::Moto;
use serde_json::{Value, json};

const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const SESSION: &str = "IQoJb3JpZ2luX2VjEXAMPLESESSIONTOKEN";

fn document(expiration: &str) -> String {
    json!({
        "Code": "Success",
        "LastUpdated": "2026-01-01T00:00:00Z",
        "Type": "AWS-HMAC",
        "AccessKeyId": "ASIAEXAMPLEPARENT",
        "SecretAccessKey": SECRET,
        "Token": SESSION,
        "Expiration": expiration,
    })
    .to_string()
}

fn imds_config(imds: &FakeImds) -> AwsCredentialsConfig {
    AwsCredentialsConfig::Imds {
        endpoint: imds.addr,
        role: None,
    }
}

#[test]
fn the_imds_client_takes_a_token_first_and_shows_it_on_every_read() {
    let imds = FakeImds::start(Behaviour::Normal, &document("2030-01-01T00:00:00Z"));
    let c = imds::fetch(imds.addr, None).unwrap();
    assert_eq!(c.credentials.access_key_id, "ASIAEXAMPLEPARENT");
    assert_eq!(c.credentials.secret_access_key, SECRET);
    assert_eq!(c.credentials.session_token.as_deref(), Some(SESSION));
    assert_eq!(c.expiration_unix(), rfc3339_to_unix("2030-01-01T00:00:00Z"));
    assert_eq!(
        imds.requests(),
        [
            "PUT /latest/api/token token=no".to_owned(),
            "GET /latest/meta-data/iam/security-credentials/ token=yes".to_owned(),
            format!("GET /latest/meta-data/iam/security-credentials/{ROLE} token=yes"),
        ]
    );
    // A configured role is read directly.
    let imds = FakeImds::start(Behaviour::Normal, &document("2030-01-01T00:00:00Z"));
    imds::fetch(imds.addr, Some(ROLE)).unwrap();
    assert_eq!(imds.requests().len(), 2);
    let shown = format!("{c:?}");
    assert!(!shown.contains(SECRET) && !shown.contains(SESSION) && !shown.contains(TOKEN));
}

#[test]
fn imds_failures_are_named_and_bounded() {
    let doc = document("2030-01-01T00:00:00Z");
    for (behaviour, expected) in [
        (Behaviour::NoRole, "no instance role"),
        (Behaviour::NoToken, "HTTP 403"),
        (Behaviour::Flood, "longer than"),
        (Behaviour::Silent, "no complete answer"),
    ] {
        let imds = FakeImds::start(behaviour, &doc);
        let started = Instant::now();
        let e = imds::fetch(imds.addr, None).unwrap_err().to_string();
        assert!(e.contains(expected), "{behaviour:?}: {e}");
        assert!(
            started.elapsed() < imds::EXCHANGE_TIMEOUT + Duration::from_secs(2),
            "{behaviour:?} took {:?}",
            started.elapsed()
        );
    }
    // A role with no credentials to give, and one whose answer is not a credentials document.
    for (document, expected) in [
        (
            r#"{"Code":"AssumeRoleUnauthorizedAccess","AccessKeyId":"A","SecretAccessKey":"s"}"#,
            "AssumeRoleUnauthorizedAccess",
        ),
        ("<html>captive portal</html>", "not a credentials document"),
    ] {
        let imds = FakeImds::start(Behaviour::Normal, document);
        let e = imds::fetch(imds.addr, None).unwrap_err().to_string();
        assert!(e.contains(expected), "{e}");
    }
    // Nobody listening.
    let port = cosigner_tests::free_port();
    let e = imds::fetch(format!("127.0.0.1:{port}").parse().unwrap(), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot connect"), "{e}");
}

#[test]
fn imds_credentials_are_cached_until_they_near_expiry() {
    let lasting = FakeImds::start(Behaviour::Normal, &document("2099-01-01T00:00:00Z"));
    let provider = CredentialsProvider::new(imds_config(&lasting));
    for _ in 0..5 {
        provider.credentials().unwrap();
    }
    assert_eq!(lasting.requests().len(), 3, "one fetch for five requests");
    // Expiring within the margin: fetched again, but not more than once per 10 s.
    let soon = time::rfc3339(std::time::SystemTime::now() + Duration::from_secs(120));
    let expiring = FakeImds::start(Behaviour::Normal, &document(&soon));
    let provider = CredentialsProvider::new(imds_config(&expiring));
    for _ in 0..5 {
        provider.credentials().unwrap();
    }
    assert_eq!(expiring.requests().len(), 3);
    // The service fails later: the cached credentials are served while they last.
    drop(expiring);
    assert_eq!(
        provider.credentials().unwrap().credentials.access_key_id,
        "ASIAEXAMPLEPARENT"
    );
}

#[test]
fn the_store_channel_serves_the_configured_credentials_and_nothing_without_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("store.db")).unwrap();
    let file = dir.path().join("aws.json");
    std::fs::write(&file, document("2030-01-01T00:00:00Z")).unwrap();
    let provider = CredentialsProvider::new(AwsCredentialsConfig::File(file.clone()));

    let answer = handle_with(&store, Some(&provider), StoreRequest::AwsCredentials);
    // Through the wire and back, as the enclave reads it.
    let answer: StoreResponse = wire::decode(&wire::encode(&answer).unwrap()).unwrap();
    let StoreResponse::AwsCredentials {
        ref access_key_id,
        ref secret_access_key,
        ref session_token,
        expiration,
    } = answer
    else {
        panic!("{answer:?}")
    };
    assert_eq!(access_key_id, "ASIAEXAMPLEPARENT");
    assert_eq!(secret_access_key.expose(), SECRET);
    assert_eq!(session_token.as_ref().unwrap().expose(), SESSION);
    assert_eq!(expiration, rfc3339_to_unix("2030-01-01T00:00:00Z"));
    let shown = format!("{answer:?}");
    assert!(
        !shown.contains(SECRET) && !shown.contains(SESSION),
        "{shown}"
    );

    // The file is re-read: replacing it rotates the credentials.
    std::fs::write(
        &file,
        document("2031-01-01T00:00:00Z").replace("ASIAEXAMPLEPARENT", "ASIAROTATED"),
    )
    .unwrap();
    assert_eq!(
        provider.credentials().unwrap().credentials.access_key_id,
        "ASIAROTATED"
    );

    // A broken file: an error answer, and the secret is not in it.
    std::fs::write(&file, format!("{{\"SecretAccessKey\":\"{SECRET}\"}}")).unwrap();
    match handle_with(&store, Some(&provider), StoreRequest::AwsCredentials) {
        StoreResponse::Error(e) => {
            assert_eq!(e.kind, ErrorKind::Internal);
            assert!(!e.message.contains(SECRET), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }

    // No [aws_credentials]: refused, naming what to configure.
    match handle(&store, StoreRequest::AwsCredentials) {
        StoreResponse::Error(e) => {
            assert_eq!(e.kind, ErrorKind::BadRequest);
            assert!(e.message.contains("[aws_credentials]"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }

    // The environment source.
    let c = AwsCredentials::from_env_with(|k| match k {
        "AWS_ACCESS_KEY_ID" => Some("AKIAENV".into()),
        "AWS_SECRET_ACCESS_KEY" => Some(SECRET.into()),
        _ => None,
    })
    .unwrap();
    assert!(matches!(
        store_response(&c),
        StoreResponse::AwsCredentials {
            expiration: None,
            session_token: None,
            ..
        }
    ));
}

#[test]
fn the_parent_configuration_takes_an_aws_credentials_table() {
    let base = "listen = \"127.0.0.1:0\"\nenclave = \"unix:/e.sock\"\nstore_socket = \
                \"/s.sock\"\ndatabase = \"/d.db\"\n";
    let c = cosigner_parent::Config::from_toml(base).unwrap();
    assert_eq!(c.aws_credentials, None);
    let c = cosigner_parent::Config::from_toml(&format!(
        "{base}[aws_credentials]\nsource = \"imds\"\n"
    ))
    .unwrap();
    assert!(matches!(
        c.aws_credentials,
        Some(AwsCredentialsConfig::Imds { role: None, endpoint }) if endpoint.to_string() == "169.254.169.254:80"
    ));
    for bad in [
        "[aws_credentials]\nsource = \"instance\"\n",
        "[aws_credentials]\nsource = \"file\"\n",
        "[aws_credentials]\nsource = \"imds\"\nsecret_access_key = \"x\"\n",
    ] {
        assert!(
            cosigner_parent::Config::from_toml(&format!("{base}{bad}")).is_err(),
            "{bad}"
        );
    }
    // A relative file is taken from the configuration's directory.
    let (dir, path) = cosigner_tests::file_in_tempdir(
        "parent.toml",
        format!("{base}[aws_credentials]\nsource = \"file\"\npath = \"aws.json\"\n"),
    );
    let c = cosigner_parent::Config::load(&path).unwrap();
    assert_eq!(
        c.aws_credentials,
        Some(AwsCredentialsConfig::File(dir.path().join("aws.json")))
    );
}

// ---------------------------------------------------------------------------------------------
// End to end: moto (KMS, IAM, STS), the IMDS stand-in, the real parent and enclave.

const MESSAGE: &str = "6d79206669727374207369676e6174757265206f6e20612074616f726f6f7421";

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The enclave's `[sealer]` for moto: KMS over plain HTTP without `Recipient` (moto has neither
/// TLS nor `Recipient`), no credentials file: the parent hands them over.
fn kms_sealer(moto: &Moto, arn: &str) -> String {
    format!(
        "\n[sealer]\nkind = \"kms\"\nkey_id = \"{arn}\"\nregion = \"us-east-1\"\n\
         endpoint = \"tcp:{}\"\nhost = \"{}\"\ninsecure_plain_http = true\n\
         insecure_no_recipient = true\n",
        moto.addr,
        moto.host()
    )
}

/// Values of the parent's store whose key starts with `prefix`.
fn stored(database: &Path, prefix: &str) -> Vec<Vec<u8>> {
    let db = rusqlite::Connection::open(database).unwrap();
    let mut q = db
        .prepare("SELECT value FROM blobs WHERE key LIKE ?1 || '%'")
        .unwrap();
    q.query_map([prefix], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn the_enclave_seals_under_kms_with_role_credentials_served_by_the_parent() {
    let Some((moto, user)) = Moto::start_with_user_or_skip() else {
        return;
    };
    let role = moto.role_credentials(&user).unwrap();
    assert!(role.credentials.session_token.is_some());
    let arn = moto.create_key(&role.credentials).unwrap();
    // The IMDS stand-in hands out the role's temporary credentials, as IMDS does on an instance.
    let imds = FakeImds::start(
        Behaviour::Normal,
        &json!({
            "Code": "Success",
            "Type": "AWS-HMAC",
            "AccessKeyId": role.credentials.access_key_id,
            "SecretAccessKey": role.credentials.secret_access_key,
            "Token": role.credentials.session_token,
            "Expiration": role.expiration,
        })
        .to_string(),
    );
    let parent = format!(
        "\n[aws_credentials]\nsource = \"imds\"\nimds_endpoint = \"{}\"\n",
        imds.addr
    );
    let mut d = Deployment::start_configured(&kms_sealer(&moto, &arn), &parent)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let deadline = Instant::now() + Duration::from_secs(2);
    while !d.provider.logs().contains("credentials from the parent") {
        assert!(
            Instant::now() < deadline,
            "the enclave takes its credentials from the parent: {}",
            d.provider.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The parent asked IMDS (token first), once, however many KMS calls the enclave made.
    let asked = imds.requests();
    assert_eq!(
        asked.first().map(String::as_str),
        Some("PUT /latest/api/token token=no")
    );
    assert_eq!(asked.len(), 3, "{asked:?}");

    let home = d.home("alice");
    let created = d.cosigner(["--home", p(&home), "wallet", "create", "--json"]);
    let w: Value = serde_json::from_str(created.ok()).unwrap();
    let id = w["wallet_id"].as_str().unwrap().to_owned();
    let sign = |d: &Deployment| {
        let out = d.cosigner([
            "--home",
            p(&home),
            "sign",
            "--wallet",
            &id,
            "--message",
            MESSAGE,
            "--json",
        ]);
        let v: Value = serde_json::from_str(out.ok()).unwrap();
        assert_eq!(v["signature"].as_str().unwrap().len(), 128);
    };
    sign(&d);
    // What the provider keeps is sealed under KMS (format 2), not under the token (format 1).
    let shares = stored(&d.provider.database(), &format!("wallet/{id}/share/"));
    assert!(!shares.is_empty());
    assert!(
        shares.iter().all(|b| b.first() == Some(&2)),
        "shares sealed by the KMS sealer"
    );

    // A restarted enclave unseals with credentials fetched afresh through the parent.
    d.provider.stop();
    d.provider.start_processes().unwrap();
    sign(&d);
    assert_eq!(imds.requests().len(), 6, "{:?}", imds.requests());
}

#[test]
fn an_enclave_whose_parent_serves_no_credentials_says_so_and_stops() {
    let Some((moto, user)) = Moto::start_with_user_or_skip() else {
        return;
    };
    let arn = moto.create_key(&user).unwrap();
    let e = Deployment::start_configured(&kms_sealer(&moto, &arn), "")
        .expect_err("the provider cannot start without credentials");
    let message = format!("{e:#}");
    assert!(
        message.contains("serves no AWS credentials") && message.contains("[aws_credentials]"),
        "{message}"
    );
}

/// RFC 3339 formatting for the test's own documents.
mod time {
    use std::time::SystemTime;

    /// SigV4's `YYYYMMDDTHHMMSSZ` (the KMS client's own UTC calendar) re-punctuated as
    /// `YYYY-MM-DDTHH:MM:SSZ`.
    pub fn rfc3339(t: SystemTime) -> String {
        let d = cosigner_kms::aws::sigv4::amz_date(t).unwrap();
        format!(
            "{}-{}-{}T{}:{}:{}Z",
            &d[0..4],
            &d[4..6],
            &d[6..8],
            &d[9..11],
            &d[11..13],
            &d[13..15]
        )
    }
}
