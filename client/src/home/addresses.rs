//! Which of a Bitcoin wallet's derived addresses this device has handed out:
//!
//! ```text
//! DIR/wallets/<id>.addresses   the next unused index of each keychain (JSON)
//! ```
//!
//! `cosigner address` without `--index` hands out the next one and moves the record past it, so
//! an address is not given twice (reuse costs the payer's and the wallet's privacy). Two
//! processes handing out addresses at the same moment may give the same one; nothing worse.

use cosigner_protocol::hd::{Keychain, MAX_INDEX};
use cosigner_protocol::wire::WalletId;
use serde::{Deserialize, Serialize};

use super::Home;
use crate::error::Result;

/// Extension of the record.
const ADDRESSES: &str = "addresses";

/// The next unused index of each keychain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Next {
    receive: u32,
    change: u32,
}

impl Next {
    fn of(&mut self, keychain: Keychain) -> &mut u32 {
        match keychain {
            Keychain::Receive => &mut self.receive,
            Keychain::Change => &mut self.change,
        }
    }
}

impl Home {
    fn address_record(&self, id: &WalletId) -> Result<Next> {
        match self.get(id, ADDRESSES)? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| self.err(id, ADDRESSES, e)),
            None => Ok(Next::default()),
        }
    }

    /// The next index of `keychain` this device has not handed out.
    pub fn next_address_index(&self, id: &WalletId, keychain: Keychain) -> Result<u32> {
        Ok(*self.address_record(id)?.of(keychain))
    }

    /// Records that `index` of `keychain` was handed out: the next unused one is past it.
    pub fn address_handed_out(&self, id: &WalletId, keychain: Keychain, index: u32) -> Result<()> {
        let mut next = self.address_record(id)?;
        let after = index.saturating_add(1).min(MAX_INDEX);
        if *next.of(keychain) >= after {
            return Ok(());
        }
        *next.of(keychain) = after;
        let json = serde_json::to_vec(&next).map_err(|e| self.err(id, ADDRESSES, e))?;
        self.put(id, ADDRESSES, &json)
    }
}
