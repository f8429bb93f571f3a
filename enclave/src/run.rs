//! `cosigner-enclave run`: wire the backends named by the config to the service and serve.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use cosigner_attestation::{AttestRequest, Attester};
use cosigner_enclave::config::{AttesterConfig, Config, KmsSealerConfig, SealerConfig};
use cosigner_enclave::credentials::ParentCredentials;
use cosigner_enclave::service::anchor::{
    Anchor, AnchorError, ProcessLocked, SoleTokenAnchor, TokenAnchor, Versioned, next_generation,
    open_lock_file,
};
use cosigner_enclave::service::partition::PartitionedAnchor;
use cosigner_enclave::service::{Instance, RefreshPolicy, Service};
use cosigner_enclave::store::{BlobStore, Janitor, RemoteStore};
use cosigner_enclave::telemetry::{TimedAnchor, TimedStore};
use cosigner_enclave::{server, tls, transport};
use cosigner_kms::aws::client::{Connection, KmsClient, endpoint_host};
use cosigner_kms::aws::{
    CredentialsFile, CredentialsSource, KmsSealer, RecipientAttester, TlsTransport, Transport,
};
use cosigner_kms::{Pin, Sealer, Token};

const PIN_ENV: &str = "COSIGNER_PKCS11_PIN";

fn attester(config: &AttesterConfig, pin: Option<&Pin>) -> anyhow::Result<Box<dyn Attester>> {
    match config {
        #[cfg(feature = "local-attester")]
        AttesterConfig::Local { dir } => Ok(Box::new(
            cosigner_attestation::LocalAttester::load(
                dir,
                pin.context("the local attester needs the token PIN")?,
            )
            .with_context(|| format!("local attester in {}", dir.display()))?,
        )),
        #[cfg(not(feature = "local-attester"))]
        AttesterConfig::Local { .. } => {
            let _ = pin;
            anyhow::bail!("this build has no local attester (it is a Nitro enclave build)")
        }
        #[cfg(feature = "nitro")]
        AttesterConfig::Nitro => Ok(Box::new(cosigner_attestation::NitroAttester::open()?)),
        #[cfg(not(feature = "nitro"))]
        AttesterConfig::Nitro => {
            anyhow::bail!("this build has no NSM support (build with --features nitro)")
        }
    }
}

/// One attester shared by the service (session documents) and the KMS sealer (`Recipient`
/// documents binding its RSA key).
struct SharedAttester(Arc<dyn Attester>);

impl Attester for SharedAttester {
    fn attest(&self, request: &AttestRequest) -> cosigner_attestation::Result<Vec<u8>> {
        self.0.attest(request)
    }

    fn kind(&self) -> &'static str {
        self.0.kind()
    }
}

/// The KMS sealer of `[sealer] kind = "kms"`: TLS to `kms.REGION.amazonaws.com` over the
/// configured endpoint (the parent's vsock proxy), credentials from the parent over the store
/// channel (or, in local mode, a file), data keys through `Recipient` with documents from the
/// enclave's attester.
fn kms_sealer(
    config: &KmsSealerConfig,
    store: &transport::Endpoint,
    attester: Arc<dyn Attester>,
) -> anyhow::Result<KmsSealer> {
    let endpoint = config.endpoint.clone();
    let connect = move || -> std::io::Result<Box<dyn Connection>> {
        let stream = transport::connect(&endpoint)?;
        Ok(Box::new(stream))
    };
    let host = config
        .host
        .clone()
        .unwrap_or_else(|| endpoint_host(&config.region));
    let transport: Box<dyn Transport> = match (config.insecure_plain_http, config.tls_root_store()?)
    {
        (true, _) => {
            tracing::warn!(
                switch = "insecure_plain_http",
                "WARNING: [sealer] insecure_plain_http: KMS traffic is NOT encrypted or \
                 authenticated (test servers only)"
            );
            Box::new(connect)
        }
        (false, None) => Box::new(TlsTransport::webpki(Box::new(connect), &host)?),
        (false, Some(roots)) => {
            only_under_an_emulated_nsm(attester.as_ref())?;
            // One line, at start: whoever holds one of these roots' keys can answer as KMS and
            // hand this enclave data keys it knows (docs/kms.md, `tls_roots`).
            tracing::warn!(
                switch = "tls_roots",
                roots = roots.len(),
                host = %host,
                "WARNING: [sealer] tls_roots: {} private root(s) REPLACE the public \
                 (webpki-roots) roots for KMS TLS to {host}: their holders can answer as KMS \
                 (emulator and test images only, never production)",
                roots.len()
            );
            Box::new(TlsTransport::with_roots(Box::new(connect), &host, roots)?)
        }
    };
    let credentials: Box<dyn CredentialsSource> = match &config.credentials_file {
        Some(file) => Box::new(CredentialsFile(file.clone())),
        None => Box::new(ParentCredentials::source(store.clone())),
    };
    let client = KmsClient::new(transport, &config.region, credentials)?.with_host(&host)?;
    if config.insecure_no_recipient {
        tracing::warn!(
            switch = "insecure_no_recipient",
            "WARNING: [sealer] insecure_no_recipient: data keys come from KMS in clear and the \
             key policy cannot require this image (test servers only)"
        );
        return Ok(KmsSealer::insecure_without_recipient(
            client,
            &config.key_id,
        )?);
    }
    let recipient: Arc<dyn RecipientAttester> = Arc::new(move |public_key: &[u8]| {
        attester
            .attest(&AttestRequest {
                nonce: None,
                user_data: None,
                public_key: Some(public_key.to_vec()),
            })
            .map_err(|e| e.to_string())
    });
    Ok(KmsSealer::new(client, &config.key_id, recipient)?)
}

/// `tls_roots` in the image's build (`nitro` without `local-attester`) only where the attester is
/// QEMU's emulated NSM, whose documents are unsigned: a real NSM signs every document, so private
/// KMS roots can never serve an enclave on Nitro hardware, whatever configuration was baked in
/// (docs/kms.md, `tls_roots`). Local builds (the tests' stand-ins) are not limited.
fn only_under_an_emulated_nsm(attester: &dyn Attester) -> anyhow::Result<()> {
    if !cfg!(all(feature = "nitro", not(feature = "local-attester"))) {
        return Ok(());
    }
    let document = attester
        .attest(&AttestRequest {
            nonce: None,
            user_data: None,
            public_key: None,
        })
        .map_err(|e| {
            anyhow::anyhow!("[sealer] tls_roots: cannot ask the NSM for a document: {e}")
        })?;
    if cosigner_attestation::parse_emulated_unsigned(&document).is_err() {
        anyhow::bail!(
            "[sealer] tls_roots is for QEMU's emulated NSM only (make nitro-emulate) and this NSM \
             signs its documents: refusing private KMS roots on Nitro hardware"
        );
    }
    Ok(())
}

/// Anchors kept in the parent's own store: what `allow_unanchored_state` runs with. The parent can
/// roll them back together with the state, so this gives no rollback resistance across restarts;
/// within one run the service's anchor cache still refuses older state.
struct UnanchoredParentStore(RemoteStore);

impl UnanchoredParentStore {
    fn key(label: &str) -> String {
        format!("unanchored/{label}")
    }
}

impl Anchor for UnanchoredParentStore {
    fn read(&self, label: &str) -> Result<Option<Versioned>, AnchorError> {
        let Some(stored) = self
            .0
            .get(&Self::key(label))
            .map_err(|e| AnchorError::Backend {
                label: label.to_owned(),
                reason: e.to_string(),
            })?
        else {
            return Ok(None);
        };
        // 8 bytes of generation (big-endian), then the value.
        let generation = stored
            .get(..8)
            .and_then(|g| <[u8; 8]>::try_from(g).ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| AnchorError::Backend {
                label: label.to_owned(),
                reason: "stored anchor is shorter than its generation".into(),
            })?;
        Ok(Some(Versioned {
            generation,
            value: stored.get(8..).unwrap_or_default().to_vec(),
        }))
    }

    fn write(&self, label: &str, expected: Option<u64>, value: &[u8]) -> Result<u64, AnchorError> {
        // Not atomic against another writer of the parent's store; the service writes each wallet
        // from one thread at a time, and the parent can rewrite this store anyway (no guarantee).
        let found = self.read(label)?.map(|v| v.generation);
        let generation = next_generation(label, expected, found)?;
        self.0
            .put(
                &Self::key(label),
                &[&generation.to_be_bytes()[..], value].concat(),
            )
            .map_err(|e| AnchorError::Backend {
                label: label.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(generation)
    }
}

/// The token's user PIN, if the configuration needs one (a token, or the local attester's key).
fn pin(config: &Config) -> anyhow::Result<Option<Pin>> {
    if !config.needs_pin() {
        return Ok(None);
    }
    Ok(Some(
        match config.token.as_ref().and_then(|t| t.pin_file.as_ref()) {
            Some(file) => Pin::from_file(file)?,
            None => Pin::from_env(PIN_ENV)
                .with_context(|| format!("set token.pin_file or {PIN_ENV}"))?,
        },
    ))
}

/// The sealer the configuration names, and how to describe it in the start line.
fn sealer(
    config: &Config,
    token: Option<&Token>,
    attester: &Arc<dyn Attester>,
) -> anyhow::Result<(Box<dyn Sealer>, String)> {
    Ok(match (&config.sealer, token) {
        (SealerConfig::Pkcs11, Some(token)) => {
            let label = config
                .token
                .as_ref()
                .map(|t| t.sealing_key.clone())
                .unwrap_or_default();
            (
                Box::new(
                    token
                        .aes_sealing_key_or_generate(&label)
                        .context("sealing key")?,
                ),
                format!("pkcs11 key {label:?}"),
            )
        }
        (SealerConfig::Pkcs11, None) => anyhow::bail!("the pkcs11 sealer needs a [token]"),
        (SealerConfig::Kms(kms), _) => (
            Box::new(kms_sealer(kms, &config.store, attester.clone()).context("KMS sealer")?),
            format!(
                "kms key {} via {}, credentials from {}",
                kms.key_id,
                kms.endpoint,
                kms.credentials_file
                    .as_ref()
                    .map_or_else(|| "the parent".to_owned(), |f| f.display().to_string())
            ),
        ),
    })
}

/// The rollback anchor: the token's, or with KMS sealing and the explicit switch none the
/// parent cannot rewind (docs/lifecycle.md, "Rollback resistance"); either way as one root per
/// partition over trees in the parent's store (`[anchors]`, docs/architecture.md, "Several
/// instances").
fn anchor(config: &Config, token: Option<&Token>) -> anyhow::Result<Box<dyn Anchor>> {
    let partitions = config.anchors.partitions()?;
    let shared = config.anchors.shared;
    let roots: Box<dyn Anchor> = match (token, &config.sealer) {
        (Some(token), _) => match (&config.anchors.lock_file, shared) {
            (Some(path), true) => Box::new(
                ProcessLocked::new(TokenAnchor(token.clone()), path)
                    .with_context(|| format!("[anchors] lock_file {}", path.display()))?,
            ),
            (_, true) => Box::new(TokenAnchor(token.clone())),
            // Alone on the token: writes need not search it (`cosigner_kms::SoleWriter`).
            (_, false) => Box::new(SoleTokenAnchor(cosigner_kms::SoleWriter::new(
                token.clone(),
            ))),
        },
        (None, SealerConfig::Kms(_)) if shared => anyhow::bail!(
            "[anchors] shared = true needs a [token]: the parent's store offers no \
             compare-and-swap that several instances could share"
        ),
        (None, SealerConfig::Kms(kms)) if kms.allow_unanchored_state => {
            tracing::warn!(
                switch = "allow_unanchored_state",
                "WARNING: allow_unanchored_state: no rollback anchor (KMS sealing without a \
                 [token]); after a restart the parent can serve an older, validly sealed state \
                 of any wallet. See docs/kms.md."
            );
            Box::new(UnanchoredParentStore(RemoteStore::new(
                config.store.clone(),
            )))
        }
        _ => anyhow::bail!("no rollback anchor: configure a [token]"),
    };
    let trees = Janitor::new(
        RemoteStore::new(config.store.clone()),
        RemoteStore::new(config.store.clone()),
    );
    // The trees live in the parent's store, where the service keeps its records: a state write
    // and its anchor's tree go in one write.
    Ok(Box::new(
        PartitionedAnchor::new(roots, trees, partitions, shared)
            .map_err(|e| anyhow::anyhow!("[anchors]: {e}"))?
            .carrying_blobs(),
    ))
}

/// With shared anchors on a token: an exclusive `flock(2)` on `LOCK_FILE.start`, held from
/// opening the token until the service is up (the sealing key and the audit key made on a first
/// start), so that instances started together agree on one of each. A file apart from
/// `lock_file` itself, which the anchor writes inside the start lock take on their own
/// descriptor (two descriptors of one file would deadlock).
fn first_start_lock(config: &Config) -> anyhow::Result<Option<std::fs::File>> {
    let Some(path) = config
        .anchors
        .lock_file
        .as_ref()
        .filter(|_| config.anchors.shared)
    else {
        return Ok(None);
    };
    let mut start = path.clone().into_os_string();
    start.push(".start");
    let file = open_lock_file(std::path::Path::new(&start))
        .with_context(|| format!("[anchors] lock_file: {}", start.display()))?;
    file.lock()
        .with_context(|| format!("[anchors] lock_file: locking {}", start.display()))?;
    Ok(Some(file))
}

/// The service over the configured backends, with the refresh policy and enrollment mode.
fn service(
    config: &Config,
    attester: Arc<dyn Attester>,
    sealer: Box<dyn Sealer>,
    anchor: Box<dyn Anchor>,
) -> anyhow::Result<Service> {
    let policy = RefreshPolicy {
        after: config
            .policy
            .refresh_after_days
            .map(|d| std::time::Duration::from_secs(d.saturating_mul(86_400))),
        after_signatures: config.policy.refresh_after_signatures,
    };
    let service = Service::new_instance(
        Box::new(SharedAttester(attester)),
        sealer,
        Box::new(TimedStore(Janitor::new(
            RemoteStore::new(config.store.clone()),
            RemoteStore::new(config.store.clone()),
        ))),
        anchor,
        policy,
        Instance {
            id: config.instance,
            shared_anchors: config.anchors.shared,
            writer_locks: config
                .anchors
                .lock_file
                .clone()
                .filter(|_| config.anchors.shared),
        },
    )
    .map_err(|e| anyhow::anyhow!("cannot start the service: {e}"))?
    .with_enrollment(config.enrollment_operator_key());
    match config.enrollment_operator_key() {
        Some(key) => tracing::info!(
            enrollment = "token",
            operator_key = %hex::encode(&key),
            "wallet creation needs an enrollment token signed by operator key {}",
            hex::encode(&key)
        ),
        None => tracing::info!(
            enrollment = "open",
            "wallet creation is open (no [enrollment] token required)"
        ),
    }
    Ok(service)
}

/// Runs until killed.
pub fn run(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    // Instances starting together take turns until their service is up: the first start on a
    // token makes the sealing key and the audit key, which the others must load, not make
    // again (and SoftHSM's files are not made for several processes opening a token at once).
    let starting = first_start_lock(&config)?;
    let pin = pin(&config)?;
    let token = match (&config.token, &pin) {
        (Some(t), Some(pin)) => Some(
            Token::open(&t.module, &t.label, pin)
                .with_context(|| format!("token {:?}", t.label))?,
        ),
        _ => None,
    };
    let attester: Arc<dyn Attester> = Arc::from(attester(&config.attester, pin.as_ref())?);
    // Events logged so far wait in the queue; from here they go to the parent.
    cosigner_enclave::telemetry::start(config.store.clone(), config.instance, attester.clone())
        .context("starting the telemetry thread")?;
    let kind = attester.kind();
    let (sealer, sealer_name) = sealer(&config, token.as_ref(), &attester)?;
    let anchor: Box<dyn Anchor> = Box::new(TimedAnchor(anchor(&config, token.as_ref())?));
    let service = service(&config, attester, sealer, anchor)?;
    drop(starting);
    let audit_key = hex::encode(service.audit_public_key());
    let service = Arc::new(service);
    let tls = tls::server_config()?;
    let listener = transport::bind(&config.listen)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(
        listen = %config.listen,
        attester = kind,
        store = %config.store,
        audit_key = %audit_key,
        "listening on {} (attester: {kind}, sealer: {sealer_name}, store: {}, audit key \
         {audit_key})",
        config.listen,
        config.store
    );
    server::serve(listener, tls, service, config.limits.resolve()?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::net::TcpListener;

    use cosigner_kms::{KmsError, SealContext};
    use cosigner_tests::kms_standin::{Server, Standin, StandinCa, StandinConfig};

    use super::*;

    const ARN: &str = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    const HOST: &str = "kms-standin.test";
    const CTX: SealContext = SealContext::new("frost-key-package", [7; 16], 2, 0);

    /// Unsigned documents binding the requested public key, in QEMU's emulated NSM layout: what
    /// the stand-in reads the `Recipient` key from.
    struct UnsignedAttester;

    impl Attester for UnsignedAttester {
        fn attest(&self, request: &AttestRequest) -> cosigner_attestation::Result<Vec<u8>> {
            let key = request.public_key.as_deref().unwrap_or_default();
            Ok(cosigner_tests::kms_standin::unsigned_document(key).unwrap())
        }

        fn kind(&self) -> &'static str {
            "unsigned (test)"
        }
    }

    /// `[sealer] kind = "kms"` to the stand-in on `port`, with `tls_roots = [ROOT]` if given.
    fn sealer_to(port: u16, credentials: &Path, root: Option<&str>) -> anyhow::Result<KmsSealer> {
        let roots = root
            .map(|pem| format!("tls_roots = ['''\n{pem}''']\n"))
            .unwrap_or_default();
        let config = Config::parse(&format!(
            "listen = \"unix:/l.sock\"\nstore = \"unix:/s.sock\"\n[attester]\nkind = \"nitro\"\n\
             [sealer]\nkind = \"kms\"\nkey_id = \"{ARN}\"\nregion = \"eu-west-1\"\n\
             endpoint = \"tcp:127.0.0.1:{port}\"\nhost = \"{HOST}\"\n\
             credentials_file = \"{}\"\nallow_unanchored_state = true\n{roots}",
            credentials.display()
        ))?;
        let SealerConfig::Kms(kms) = &config.sealer else {
            anyhow::bail!("not a KMS sealer")
        };
        kms_sealer(kms, &config.store, Arc::new(UnsignedAttester))
    }

    #[test]
    fn the_kms_sealer_trusts_its_tls_roots_instead_of_the_public_ones() {
        let ca = StandinCa::generate(HOST).unwrap();
        let standin = Standin::new(StandinConfig::new(ARN, "AKIDTEST").unwrap()).unwrap();
        let server = Server::start(
            TcpListener::bind("127.0.0.1:0").unwrap(),
            Some(ca.server_config().unwrap()),
            standin,
        )
        .unwrap();
        let port = server.addr().port();
        let (_dir, credentials) = cosigner_tests::file_in_tempdir(
            "aws.json",
            r#"{"AccessKeyId":"AKIDTEST","SecretAccessKey":"secret"}"#,
        );

        // With the stand-in's CA as the root: TLS, Recipient, seal and open.
        let sealer = sealer_to(port, &credentials, Some(ca.cert_pem())).unwrap();
        let blob = sealer.seal(&CTX, b"a key package").unwrap();
        assert_eq!(
            sealer.open(&CTX, &blob).unwrap().as_slice(),
            b"a key package"
        );
        assert_eq!(server.requests().len(), 2);

        // The public roots (no tls_roots), or another private CA: the handshake fails and KMS is
        // never asked.
        let other = StandinCa::generate(HOST).unwrap();
        for sealer in [
            sealer_to(port, &credentials, None).unwrap(),
            sealer_to(port, &credentials, Some(other.cert_pem())).unwrap(),
        ] {
            let err = sealer.seal(&CTX, b"x").unwrap_err();
            assert!(
                matches!(&err, KmsError::AwsTransport { reason, .. } if reason.contains("certificate")),
                "{err:?}"
            );
        }
        assert_eq!(server.requests().len(), 2);
    }
}
