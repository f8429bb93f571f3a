//! A personal wallet's owner driving the cosigners by hand, as a modified client would: the
//! deployment's trust and addresses, attested sessions to either cosigner, requests signed by the
//! wallet's device key or its recovery credential, and the client's own creation and recovery
//! with an observer that stops them at a chosen step. For the process-level attack tests, which
//! then show what the real `cosigner` binary makes of what is left.

use std::fmt::Display;
use std::path::{Path, PathBuf};

use cosigner_client::address::Network;
use cosigner_client::home::{Home, WalletFile, read_p256_key};
use cosigner_client::session::Session;
use cosigner_client::trust::Trust;
use cosigner_client::wallet::{CreateOptions, CreateStep, Created, RecoverStep};
use cosigner_client::{ClientError, Result as ClientResult};
use cosigner_protocol::id::Epoch;
use cosigner_protocol::id::PartyId;
use cosigner_protocol::wire::{KeyRole, Request, Response, WalletId};
use serde_bytes::ByteBuf;

use crate::Deployment;
use crate::wallets::TestWallet;

/// The value of a step a test cannot go on without.
///
/// # Panics
/// On an error, naming `what` failed.
fn must<T, E: Display>(what: &str, result: Result<T, E>) -> T {
    match result {
        Ok(value) => value,
        Err(e) => panic!("{what}: {e}"),
    }
}

/// A [`Deployment`]'s trust file and both cosigners' addresses, owned, so a test holding them
/// can still stop and restart the deployment's processes.
#[derive(Debug, Clone)]
pub struct Cosigners {
    /// The deployment's `trust.toml`, parsed.
    pub trust: Trust,
    /// The provider's address.
    pub provider: String,
    /// The recovery cosigner's address.
    pub recovery: String,
}

impl Cosigners {
    /// Loads `d`'s trust file.
    ///
    /// # Panics
    /// If it cannot be read.
    pub fn of(d: &Deployment) -> Self {
        let trust = Trust::load(&d.dir.path().join("trust.toml"));
        Self {
            trust: must("loading trust.toml", trust),
            provider: d.provider.addr(),
            recovery: d.recovery.addr(),
        }
    }

    /// An attested session to the cosigner at `addr`.
    ///
    /// # Panics
    /// If it cannot be opened.
    pub fn connect(&self, addr: &str) -> Session {
        must(addr, Session::connect(addr, &self.trust))
    }

    /// An attested session to the provider.
    pub fn provider(&self) -> Session {
        self.connect(&self.provider)
    }

    /// An attested session to the recovery cosigner.
    pub fn recovery(&self) -> Session {
        self.connect(&self.recovery)
    }

    /// The client's `wallet create` in the home `dir` (the recovery credential to `key_out`) over
    /// fresh sessions to both cosigners, telling `observe` each step; the sessions close when it
    /// returns or `observe` panics (the client dies).
    pub fn create_observed(
        &self,
        dir: &Path,
        key_out: &Path,
        observe: &mut dyn FnMut(CreateStep),
    ) -> ClientResult<Created> {
        self.client_in(dir, |home, provider, recovery| {
            cosigner_client::wallet::create_observed(
                home,
                provider,
                recovery,
                Network::Regtest,
                key_out.into(),
                &CreateOptions::default(),
                observe,
            )
        })
    }

    /// The client's `recover` of `w` into the home `new_home` under `w`'s recovery credential,
    /// over fresh sessions to both cosigners, telling `observe` each step; the sessions close when
    /// it returns or `observe` panics (the client dies).
    pub fn recover_observed(
        &self,
        new_home: &Path,
        w: &TestWallet,
        observe: &mut dyn FnMut(RecoverStep),
    ) -> ClientResult<WalletFile> {
        let recovery_key = read_p256_key(&w.recovery_key)?;
        let id = WalletId::from_hex(&w.id)?;
        self.client_in(new_home, |home, provider, recovery| {
            cosigner_client::wallet::recover_observed(
                home,
                provider,
                recovery,
                id,
                &recovery_key,
                Network::Regtest,
                observe,
            )
        })
    }

    /// Runs `client` on the home `dir` over fresh sessions to the provider and the recovery
    /// cosigner, in that order; the sessions close when it returns or panics (the client dies).
    fn client_in<T>(
        &self,
        dir: &Path,
        client: impl FnOnce(&Home, &mut Session, &mut Session) -> ClientResult<T>,
    ) -> ClientResult<T> {
        let home = Home::open(dir)?;
        let (mut provider, mut recovery) = (self.provider(), self.recovery());
        client(&home, &mut provider, &mut recovery)
    }
}

/// The owner of a wallet made by [`crate::wallets::create`]: its id and home, its recovery
/// credential, and the deployment's [`Cosigners`].
#[derive(Debug)]
pub struct Owner {
    /// Where to connect, and whom to trust.
    pub cosigners: Cosigners,
    /// The wallet.
    pub id: WalletId,
    /// The home holding its device key and share.
    pub home: Home,
    recovery_key: PathBuf,
}

impl Owner {
    /// The owner of `w`, in `d`.
    ///
    /// # Panics
    /// If the trust file, the wallet id or the home is unusable.
    pub fn of(d: &Deployment, w: &TestWallet) -> Self {
        Self {
            cosigners: Cosigners::of(d),
            id: must("wallet id", WalletId::from_hex(&w.id)),
            home: must("opening the home", Home::open(&w.home)),
            recovery_key: w.recovery_key.clone(),
        }
    }

    /// Sends `request` over `s`, signed as `role` (the device key of the home, or the recovery
    /// credential) for this wallet.
    ///
    /// # Panics
    /// If the key cannot be read.
    pub fn authorized(
        &self,
        s: &mut Session,
        role: KeyRole,
        request: &Request,
    ) -> Result<Response, ClientError> {
        let key: std::sync::Arc<dyn cosigner_protocol::auth::P256Signer> = match role {
            KeyRole::Device => std::sync::Arc::new(must("the device key", self.home.device_key())),
            KeyRole::Recovery => {
                std::sync::Arc::new(must("reading the key", read_p256_key(&self.recovery_key)))
            }
        };
        cosigner_client::wallet::authorized(s, self.id, role, &key, request)
    }

    /// A `SignCommit` for this wallet at epoch 0: the 32-byte message `fill` repeated, signed by
    /// `signers`.
    pub fn sign_commit(&self, fill: u8, signers: &[PartyId]) -> Request {
        Request::SignCommit {
            wallet_id: self.id,
            epoch: Epoch(0),
            message: ByteBuf::from(vec![fill; 32]),
            signers: signers.to_vec(),
        }
    }
}
