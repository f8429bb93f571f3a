//! `cosigner-enclave run`: wire the backends named by the config to the service and serve.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use cosigner_attestation::Attester;
use cosigner_enclave::config::{AttesterConfig, Config};
use cosigner_enclave::service::anchor::TokenAnchor;
use cosigner_enclave::service::{RefreshPolicy, Service};
use cosigner_enclave::store::RemoteStore;
use cosigner_enclave::{server, tls, transport};
use cosigner_kms::{Pin, Token};

const PIN_ENV: &str = "COSIGNER_PKCS11_PIN";

fn attester(config: &AttesterConfig, pin: &Pin) -> anyhow::Result<Box<dyn Attester>> {
    match config {
        #[cfg(feature = "local-attester")]
        AttesterConfig::Local { dir } => Ok(Box::new(
            cosigner_attestation::LocalAttester::load(dir, pin)
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

/// Runs until killed.
pub fn run(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let pin = match &config.token.pin_file {
        Some(file) => Pin::from_file(file)?,
        None => {
            Pin::from_env(PIN_ENV).with_context(|| format!("set token.pin_file or {PIN_ENV}"))?
        }
    };
    let token = Token::open(&config.token.module, &config.token.label, &pin)
        .with_context(|| format!("token {:?}", config.token.label))?;
    let sealer = token
        .aes_sealing_key_or_generate(&config.token.sealing_key)
        .context("sealing key")?;
    let attester = attester(&config.attester, &pin)?;
    let kind = attester.kind();
    let policy = RefreshPolicy {
        after: config
            .policy
            .refresh_after_days
            .map(|d| std::time::Duration::from_secs(d.saturating_mul(86_400))),
        after_signatures: config.policy.refresh_after_signatures,
    };
    let service = Service::new(
        attester,
        Box::new(sealer),
        Box::new(RemoteStore::new(config.store.clone())),
        Box::new(TokenAnchor(token.clone())),
        policy,
    )
    .map_err(|e| anyhow::anyhow!("cannot start the service: {e}"))?;
    let audit_key = hex::encode(service.audit_public_key());
    let service = Arc::new(service);
    let tls = tls::server_config()?;
    let listener = transport::bind(&config.listen)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    eprintln!(
        "cosigner-enclave: listening on {} (attester: {kind}, store: {}, audit key {audit_key})",
        config.listen, config.store
    );
    server::serve(listener, tls, service)
}
