//! An enclave service in this process, and the courier that carries the client's requests to it.
//!
//! [`Enclave`] is one cosigner without its processes: a token of the test's SoftHSM (sealing key,
//! freshness anchors, local attester) and a [`SharedStore`] the test can read and tamper with (it
//! plays the untrusted parent). [`InProcess`] implements the client's
//! [`Courier`](cosigner_client::courier::Courier), so a test drives ceremonies through the
//! client's real functions (`cosigner_client::wallet`, `cosigner_client::coordinator`) instead
//! of a copy of them; adversarial tests still send their malformed requests by hand with
//! [`Service::handle`].

/// The client, for test crates that reach it only through this harness (the enclave's tests).
pub use cosigner_client;
/// Temporary directories (client homes), likewise.
pub use tempfile;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use cosigner_attestation::local::{Lifetimes, provision};
use cosigner_attestation::{LocalAttester, PinnedRoot};
use cosigner_client::courier::Courier;
use cosigner_client::{ClientError, Result as ClientResult};
use cosigner_enclave::service::anchor::TokenAnchor;
use cosigner_enclave::service::partition::{DEFAULT_PARTITIONS, PartitionedAnchor};
use cosigner_enclave::service::{RefreshPolicy, Service, SessionState};
use cosigner_enclave::store::{BlobStore, MemoryStore, StoreError};
use cosigner_kms::{Pin, Pkcs11Sealer, Token};
use cosigner_protocol::wire::{Request, Response, WalletId};
use rand::RngCore;
use serde_bytes::ByteBuf;

/// The SO PIN of every token an [`Enclave`] initialises.
pub const SO_PIN: &str = "so-pin-123456";
/// The user PIN of every token an [`Enclave`] initialises.
pub const USER_PIN: &str = "user-pin-123456";
/// The label of an [`Enclave`]'s AES sealing key.
pub const SEALING_KEY: &str = "seal";

/// The store a service writes to, shared with the test (which plays the parent).
#[derive(Clone, Default)]
pub struct SharedStore(Arc<MemoryStore>);

impl BlobStore for SharedStore {
    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.0.put(key, value)
    }
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.get(key)
    }
    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.0.delete(key)
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.0.list(prefix)
    }
}

impl SharedStore {
    /// Every (key, value) stored.
    ///
    /// # Panics
    /// If the in-memory store fails (it does not).
    #[allow(clippy::unwrap_used)]
    pub fn all(&self) -> Vec<(String, Vec<u8>)> {
        self.list("")
            .unwrap()
            .into_iter()
            .map(|k| {
                let v = self.value(&k);
                (k, v)
            })
            .collect()
    }

    /// The one stored key of `wallet_id` whose name contains `part` (`/state`, `/share/`).
    ///
    /// # Panics
    /// If there is not exactly one.
    #[allow(clippy::unwrap_used)]
    pub fn key_of(&self, wallet_id: &WalletId, part: &str) -> String {
        let keys: Vec<String> = self
            .list(&format!("wallet/{}/", wallet_id.to_hex()))
            .unwrap()
            .into_iter()
            .filter(|k| k.contains(part))
            .collect();
        assert_eq!(keys.len(), 1, "one {part} record: {keys:?}");
        keys.into_iter().next().unwrap()
    }

    /// The value stored under `key`.
    ///
    /// # Panics
    /// If there is none.
    #[allow(clippy::unwrap_used)]
    pub fn value(&self, key: &str) -> Vec<u8> {
        self.get(key).unwrap().unwrap()
    }
}

/// Initialises a token labelled `label` in the installed SoftHSM ([`SO_PIN`], [`USER_PIN`]).
pub fn init_token(module: &Path, label: &str) -> anyhow::Result<Token> {
    Token::init(module, label, &Pin::new(SO_PIN), &Pin::new(USER_PIN))
        .with_context(|| format!("initialising token {label}"))
}

/// One cosigner's enclave service in this process, with real backends.
pub struct Enclave {
    /// Its token (sealing key, anchors, attester key).
    pub token: Token,
    /// Its sealing key.
    pub sealer: Pkcs11Sealer,
    /// The root its attester chains to (what a client pins).
    pub root: PinnedRoot,
    /// Its store, as the parent sees it.
    pub store: SharedStore,
    /// The service.
    pub service: Service,
    attester_dir: PathBuf,
}

impl Enclave {
    /// A new token `label` of the SoftHSM `module` (installed in this process), an attester in
    /// `attester_dir`, an empty store, and the service over them.
    pub fn new(
        module: &Path,
        label: &str,
        attester_dir: &Path,
        policy: RefreshPolicy,
    ) -> anyhow::Result<Self> {
        let token = init_token(module, label)?;
        let sealer = token.aes_sealing_key_or_generate(SEALING_KEY)?;
        let provisioned = provision(
            attester_dir,
            module,
            &token,
            SystemTime::now(),
            Lifetimes::default(),
        )?;
        let store = SharedStore::default();
        let attester = LocalAttester::load(attester_dir, &Pin::new(USER_PIN))?;
        let service = Service::new(
            Box::new(attester),
            Box::new(sealer.clone()),
            Box::new(store.clone()),
            // As `cosigner-enclave run` lays anchors out: one root per partition on the token.
            Box::new(
                PartitionedAnchor::new(
                    TokenAnchor(token.clone()),
                    store.clone(),
                    DEFAULT_PARTITIONS,
                    false,
                )
                .map_err(anyhow::Error::new)?,
            ),
            policy,
        )
        .map_err(anyhow::Error::msg)?;
        Ok(Self {
            token,
            sealer,
            root: provisioned.root,
            store,
            service,
            attester_dir: attester_dir.to_path_buf(),
        })
    }

    /// Its attester, loaded again (for another service over the same token).
    pub fn attester(&self) -> anyhow::Result<LocalAttester> {
        Ok(LocalAttester::load(
            &self.attester_dir,
            &Pin::new(USER_PIN),
        )?)
    }

    /// A session that has attested.
    pub fn session(&self) -> SessionState {
        attested(&self.service)
    }

    /// Answers one request of `session`.
    pub fn call(&self, session: &mut SessionState, request: Request) -> Response {
        self.service.handle(session, request)
    }
}

/// `N` random bytes.
pub fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut out);
    out
}

/// A new session of `service` (random channel binding) that has attested.
///
/// # Panics
/// If the service refuses the `Attest`.
pub fn attested(service: &Service) -> SessionState {
    let mut session = SessionState::new(random());
    let attest = Request::Attest {
        nonce: ByteBuf::from(random::<32>().to_vec()),
    };
    match service.handle(&mut session, attest) {
        Response::Attested { .. } => session,
        other => panic!("Attest: {other:?}"),
    }
}

/// The client's courier to a service in this process, over one of its sessions: what a TLS
/// session carries to an enclave, without the sockets. Its attested key is the service's audit
/// key (the key a real session's attestation document carries).
pub struct InProcess<'a> {
    service: &'a Service,
    session: &'a mut SessionState,
    audit_key: Vec<u8>,
}

impl<'a> InProcess<'a> {
    /// A courier over `session` (attested or not: the service says so if not).
    pub fn new(service: &'a Service, session: &'a mut SessionState) -> Self {
        Self {
            audit_key: service.audit_public_key(),
            service,
            session,
        }
    }
}

impl Courier for InProcess<'_> {
    fn call(&mut self, request: &Request) -> ClientResult<Response> {
        match self.service.handle(self.session, request.clone()) {
            Response::Error(e) => Err(ClientError::Remote(e)),
            other => Ok(other),
        }
    }

    fn attested_key(&self) -> Option<&[u8]> {
        Some(&self.audit_key)
    }
}

/// A provider and a recovery cosigner in this process, each on its own token of one SoftHSM
/// (installed for this process), with the default refresh policy.
pub struct Cosigners {
    /// The SoftHSM holding both tokens (kept alive as long as they are).
    pub hsm: crate::SoftHsm,
    /// Shard B.
    pub provider: Enclave,
    /// Shard C.
    pub recovery: Enclave,
}

impl Cosigners {
    /// Both cosigners on a fresh SoftHSM.
    ///
    /// # Panics
    /// If SoftHSM or either enclave cannot be set up.
    #[must_use]
    pub fn start() -> Self {
        Self::with_provider_policy(RefreshPolicy::default())
    }

    /// [`Cosigners::start`], the provider demanding refreshes by `policy`.
    ///
    /// # Panics
    /// If SoftHSM or either enclave cannot be set up.
    #[allow(clippy::unwrap_used)]
    #[must_use]
    pub fn with_provider_policy(policy: RefreshPolicy) -> Self {
        let hsm = crate::SoftHsm::new().unwrap();
        hsm.install_env_for_this_process();
        let module = crate::softhsm_module();
        let dir = hsm.dir().to_path_buf();
        let provider = Enclave::new(&module, "provider", &dir.join("attester"), policy).unwrap();
        let recovery = Enclave::new(
            &module,
            "recovery",
            &dir.join("recovery-attester"),
            RefreshPolicy::default(),
        )
        .unwrap();
        Self {
            hsm,
            provider,
            recovery,
        }
    }
}
