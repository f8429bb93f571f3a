//! AWS credentials for the KMS sealer, from the parent over the store channel
//! (`StoreRequest::AwsCredentials`).
//!
//! An enclave has no network and no instance metadata service: the parent fetches its instance
//! role's credentials (IMDSv2) and hands them over on request. [`ParentCredentials::source`] wraps
//! the request in [`RefreshingCredentials`]: cached, asked again 5 minutes before they expire (or
//! after 15 minutes), and at once when KMS refuses them as expired or unknown.
//!
//! Why taking credentials from the untrusted parent is sound: they are the parent's own (it holds
//! the role anyway), and they grant no plaintext. The key policy gives data keys only to a
//! `Recipient` attestation document of the published image, so the parent calling KMS with them
//! itself is denied. A parent that hands over wrong or no credentials only stops the service,
//! which it can do anyway (docs/kms.md).

use std::time::{Duration, UNIX_EPOCH};

use cosigner_kms::KmsError;
use cosigner_kms::aws::{
    Credentials, ExpiringCredentials, FetchCredentials, RefreshingCredentials,
};
use cosigner_protocol::wire::{StoreRequest, StoreResponse};

use crate::store::RemoteStore;
use crate::transport::Endpoint;

/// Asks the parent for its AWS credentials, on a store connection of its own.
#[derive(Debug)]
pub struct ParentCredentials {
    store: RemoteStore,
}

impl ParentCredentials {
    /// Credentials from the parent's store endpoint, uncached.
    pub fn new(store: Endpoint) -> Self {
        Self {
            store: RemoteStore::new(store),
        }
    }

    /// The cached, refreshing [`cosigner_kms::aws::CredentialsSource`] the KMS client uses.
    pub fn source(store: Endpoint) -> RefreshingCredentials {
        RefreshingCredentials::new(Box::new(Self::new(store)))
    }
}

fn refused(reason: impl Into<String>) -> KmsError {
    KmsError::AwsCredentials {
        reason: reason.into(),
    }
}

impl FetchCredentials for ParentCredentials {
    fn fetch(&self) -> cosigner_kms::Result<ExpiringCredentials> {
        let answer = self
            .store
            .call(&StoreRequest::AwsCredentials)
            .map_err(|e| refused(format!("asking the parent: {e}")))?;
        match answer {
            StoreResponse::AwsCredentials {
                access_key_id,
                secret_access_key,
                session_token,
                expiration,
            } => {
                let credentials = Credentials::new(
                    access_key_id,
                    secret_access_key.expose(),
                    session_token.as_ref().map(|t| t.expose().to_owned()),
                );
                credentials.check()?;
                let expiration = match expiration {
                    None => None,
                    Some(secs) => Some(
                        UNIX_EPOCH
                            .checked_add(Duration::from_secs(secs))
                            .ok_or_else(|| refused(format!("expiration {secs} out of range")))?,
                    ),
                };
                Ok(ExpiringCredentials {
                    credentials,
                    expiration,
                })
            }
            StoreResponse::Error(e) => Err(refused(format!("the parent: {}", e.message))),
            other => Err(refused(format!(
                "the parent answered {other:?} to AwsCredentials"
            ))),
        }
    }
}
