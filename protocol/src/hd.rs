//! Many addresses per wallet: an extended public key (BIP-32) over the wallet's group key, its
//! children derived non-hardened, each spent by BIP-86 key path (no script tree).
//!
//! The extended key's public key is the wallet's group key `K` (what the DKG made and every party
//! confirmed; a refresh keeps it). Its chain code is a tagged hash of the wallet id and `K`, so it
//! is fixed at creation and every party computes the same one from what the DKG transcript agreed,
//! with nothing more to store or carry (docs/addresses.md). A child at `m/c/i` (`c` 0 for receive,
//! 1 for change) has the internal key `K + t·G`, where `t` is the sum of the path's BIP-32 tweaks
//! (`I_L` of each step, BIP-32 "Public parent key → public child key"); since Shamir shares are
//! linear, every party adds the same `t` to its share and the shares are of the child's key. The
//! output key is the child's BIP-86 tweak on top (BIP-341 `taproot_output_script` with no script
//! tree), which is what watch-only wallets derive from the descriptor
//! `tr([fingerprint]xpub/0/*)`.
//!
//! Hardened derivation needs the private key, which nobody holds: every step is non-hardened.

use bitcoin::NetworkKind;
use bitcoin::bip32::{ChainCode, ChildNumber, Fingerprint, Xpub};
use bitcoin::key::TapTweak;
use bitcoin::secp256k1::{PublicKey, Scalar, Secp256k1, SecretKey, XOnlyPublicKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{ProtocolError, Result};
use crate::wire::WalletId;

/// Domain tag of the chain code.
const TAG_CHAIN_CODE: &[u8] = b"cosigner/bip32/chain-code/v1";

/// The two chains of a wallet's addresses (BIP-44's "change" level, without its hardened parts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Keychain {
    /// `m/0/*`: addresses handed out to be paid.
    Receive,
    /// `m/1/*`: the wallet's own change.
    Change,
}

impl Keychain {
    /// The path element: 0 or 1.
    pub fn number(self) -> u32 {
        match self {
            Self::Receive => 0,
            Self::Change => 1,
        }
    }

    /// The keychain of path element `n`, if it is one.
    pub fn of(n: u32) -> Option<Self> {
        match n {
            0 => Some(Self::Receive),
            1 => Some(Self::Change),
            _ => None,
        }
    }
}

/// Most index of a child: BIP-32's non-hardened range.
pub const MAX_INDEX: u32 = (1 << 31) - 1;

/// Where a derived key of the wallet is: `m/<keychain>/<index>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChildPath {
    /// Receive or change.
    pub keychain: Keychain,
    /// Its index on the keychain, at most [`MAX_INDEX`].
    pub index: u32,
}

impl ChildPath {
    /// The path of a BIP-32 derivation read from a PSBT or a descriptor (`[c, i]`, both
    /// non-hardened, `c` 0 or 1), if it is one of a wallet's children.
    pub fn of_numbers(path: &[ChildNumber]) -> Option<Self> {
        match path {
            [
                ChildNumber::Normal { index: c },
                ChildNumber::Normal { index },
            ] => Some(Self {
                keychain: Keychain::of(*c)?,
                index: *index,
            }),
            _ => None,
        }
    }

    /// The BIP-32 path `[c, i]`.
    pub fn numbers(self) -> [ChildNumber; 2] {
        [
            ChildNumber::Normal {
                index: self.keychain.number(),
            },
            ChildNumber::Normal { index: self.index },
        ]
    }
}

impl std::fmt::Display for ChildPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "m/{}/{}", self.keychain.number(), self.index)
    }
}

/// A wallet's extended public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletXpub {
    xpub: Xpub,
}

/// One derived child: where it is, the tweak every party adds to its share, and its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child {
    /// Receive or change.
    pub keychain: Keychain,
    /// Its index on the keychain.
    pub index: u32,
    /// `t`: the sum of the path's BIP-32 tweaks (a scalar, big-endian). The child's internal key
    /// is `K + t·G`.
    pub tweak: [u8; 32],
    /// The child's internal key (compressed SEC1).
    pub internal_key: [u8; 33],
    /// The child's BIP-86 output key (x-only): the witness program of its P2TR address.
    pub output_key: [u8; 32],
}

impl Child {
    /// `m/c/i`, as descriptors and PSBTs write it.
    pub fn derivation(&self) -> String {
        self.path().to_string()
    }

    /// Where it is.
    pub fn path(&self) -> ChildPath {
        ChildPath {
            keychain: self.keychain,
            index: self.index,
        }
    }
}

impl WalletXpub {
    /// The extended public key of wallet `wallet_id` whose group key is `group_key` (compressed
    /// SEC1), for mainnet (`xpub`) or the test networks (`tpub`).
    ///
    /// Errors ([`ProtocolError::Params`]): `group_key` is not a compressed point on the curve.
    pub fn new(wallet_id: &WalletId, group_key: &[u8], mainnet: bool) -> Result<Self> {
        let public_key = PublicKey::from_slice(group_key).map_err(|e| ProtocolError::Params {
            reason: format!("the wallet's group key: {e}"),
        })?;
        if group_key.len() != 33 {
            return Err(ProtocolError::Params {
                reason: "the wallet's group key is not compressed".into(),
            });
        }
        let xpub = Xpub {
            network: if mainnet {
                NetworkKind::Main
            } else {
                NetworkKind::Test
            },
            depth: 0,
            parent_fingerprint: Fingerprint::default(),
            child_number: ChildNumber::Normal { index: 0 },
            public_key,
            chain_code: ChainCode::from(chain_code(wallet_id, group_key)),
        };
        Ok(Self { xpub })
    }

    /// The `xpub…`/`tpub…` string (BIP-32 serialization, Base58Check).
    pub fn encoded(&self) -> String {
        self.xpub.to_string()
    }

    /// The key's fingerprint (BIP-32: the first 4 bytes of HASH160 of the public key), which
    /// names the origin of every derived key in descriptors and PSBTs.
    pub fn fingerprint(&self) -> [u8; 4] {
        self.xpub.fingerprint().to_bytes()
    }

    /// The child at `keychain`/`index`.
    ///
    /// Errors ([`ProtocolError::Params`]): `index` above [`MAX_INDEX`], or (with probability
    /// about 2⁻¹²⁷) a step BIP-32 declares invalid.
    pub fn child(&self, keychain: Keychain, index: u32) -> Result<Child> {
        self.keychain(keychain)?.child(index)
    }

    /// The extended key of `keychain` (`m/c`), from which its children are one step each: what
    /// deriving many children of one keychain starts from.
    ///
    /// Errors ([`ProtocolError::Params`]): a step BIP-32 declares invalid (about 2⁻¹²⁷).
    pub fn keychain(&self, keychain: Keychain) -> Result<KeychainXpub> {
        let number = ChildNumber::from_normal_idx(keychain.number()).map_err(invalid)?;
        let (tweak, _) = self.xpub.ckd_pub_tweak(number).map_err(invalid)?;
        let xpub = self
            .xpub
            .ckd_pub(&Secp256k1::verification_only(), number)
            .map_err(invalid)?;
        Ok(KeychainXpub {
            keychain,
            xpub,
            tweak,
        })
    }

    /// The wallet's descriptors (BIP-386 `tr()`, BIP-380 key origin and checksum): receive
    /// (`…/0/*`), change (`…/1/*`) and both as one multipath descriptor (BIP-389, `…/<0;1>/*`).
    pub fn descriptors(&self) -> Descriptors {
        let key = format!("[{}]{}", hex::encode(self.fingerprint()), self.encoded());
        let with = |tail: &str| with_checksum(&format!("tr({key}/{tail})"));
        Descriptors {
            receive: with("0/*"),
            change: with("1/*"),
            multipath: with("<0;1>/*"),
        }
    }
}

impl WalletXpub {
    /// The child a single-key Taproot descriptor names, checked against this wallet: what an
    /// external signer's `displayaddress --desc` receives from Bitcoin Core (which infers
    /// `tr([fingerprint/c/i]<x-only key>)` from its wallet) or from a user
    /// (`tr([fingerprint]xpub/c/i)`). The checksum, if any, must be right (BIP-380); the origin's
    /// fingerprint must be this wallet's, the path two non-hardened steps `c/i` with `c` 0 or 1,
    /// and either the origin `[fingerprint]` alone with this wallet's extended key (same network)
    /// and the path after it, or the origin `[fingerprint/c/i]` with the child's own key.
    ///
    /// Errors ([`ProtocolError::Params`]): each of those, named.
    pub fn child_of_descriptor(&self, descriptor: &str) -> Result<Child> {
        let bad = |reason: String| params(format!("descriptor: {reason}"));
        let (origin, key) = tr_key(descriptor)?;
        let mut origin = origin.split('/');
        let fingerprint = origin.next().unwrap_or_default();
        if fingerprint != hex::encode(self.fingerprint()) {
            return Err(bad(format!(
                "fingerprint {fingerprint} is not this wallet's ({})",
                hex::encode(self.fingerprint())
            )));
        }
        let mut key_parts = key.split('/');
        let key = key_parts.next().unwrap_or_default();
        let extended = key.starts_with("xpub") || key.starts_with("tpub");
        // Two forms only, each naming exactly the child: `[fp]xpub/c/i` (the wallet's extended
        // key, the path after it) and `[fp/c/i]<child key>` (the path in the origin), so that
        // the address shown is the one the descriptor denotes.
        let steps: Vec<&str> = if extended {
            if origin.next().is_some() {
                return Err(bad("an extended key's origin is [fingerprint] alone".into()));
            }
            if key != self.encoded() {
                return Err(bad(format!("{key} is not this wallet's extended key")));
            }
            key_parts.collect()
        } else {
            if key_parts.next().is_some() {
                return Err(bad("a child's key takes no path after it".into()));
            }
            origin.collect()
        };
        let steps = steps
            .iter()
            .map(|step| {
                step.parse::<u32>()
                    .ok()
                    .filter(|n| *n <= MAX_INDEX)
                    .ok_or_else(|| bad(format!("path step {step:?}: only non-hardened steps")))
            })
            .collect::<Result<Vec<u32>>>()?;
        let (keychain, index) = match steps.as_slice() {
            [c, i] => (
                Keychain::of(*c).ok_or_else(|| bad(format!("keychain {c}: 0 or 1")))?,
                *i,
            ),
            _ => return Err(bad(format!("path of {} steps: c/i", steps.len()))),
        };
        let child = self.child(keychain, index)?;
        if !extended {
            let given = hex::decode(key).unwrap_or_default();
            if given.as_slice() != &child.internal_key[..]
                && given.as_slice() != child.internal_key.get(1..).unwrap_or_default()
            {
                return Err(bad(format!("key {key} is not the child's key")));
            }
        }
        Ok(child)
    }
}

/// The key origin (inside `[...]`) and the key expression of a single-key `tr([origin]key)`
/// descriptor, its BIP-380 checksum checked if it has one.
fn tr_key(descriptor: &str) -> Result<(&str, &str)> {
    let bad = |reason: String| params(format!("descriptor: {reason}"));
    let body = match descriptor.split_once('#') {
        Some((body, given)) => {
            if checksum(body).as_deref() != Some(given) {
                return Err(bad(format!("checksum {given:?} is wrong (BIP-380)")));
            }
            body
        }
        None => descriptor,
    };
    body.strip_prefix("tr(")
        .and_then(|b| b.strip_suffix(')'))
        .ok_or_else(|| bad("not a single-key tr(...) descriptor".into()))?
        .strip_prefix('[')
        .and_then(|b| b.split_once(']'))
        .ok_or_else(|| bad("no key origin [fingerprint/...]".into()))
}

/// One keychain's extended key `m/c` and the tweak of its step.
#[derive(Debug, Clone)]
pub struct KeychainXpub {
    keychain: Keychain,
    xpub: Xpub,
    tweak: SecretKey,
}

impl KeychainXpub {
    /// The child at `index` on this keychain.
    ///
    /// Errors ([`ProtocolError::Params`]): `index` above [`MAX_INDEX`], or (with probability
    /// about 2⁻¹²⁷) a step BIP-32 declares invalid.
    pub fn child(&self, index: u32) -> Result<Child> {
        if index > MAX_INDEX {
            return Err(params(format!(
                "address index {index} is above {MAX_INDEX}"
            )));
        }
        let secp = Secp256k1::verification_only();
        let number = ChildNumber::from_normal_idx(index).map_err(invalid)?;
        let (step, _) = self.xpub.ckd_pub_tweak(number).map_err(invalid)?;
        let tweak = self
            .tweak
            .add_tweak(&Scalar::from(step))
            .map_err(|e| params(format!("BIP-32 derivation: {e}")))?;
        let xpub = self.xpub.ckd_pub(&secp, number).map_err(invalid)?;
        let internal: XOnlyPublicKey = xpub.public_key.x_only_public_key().0;
        let (output, _) = internal.tap_tweak(&secp, None);
        Ok(Child {
            keychain: self.keychain,
            index,
            tweak: tweak.secret_bytes(),
            internal_key: xpub.public_key.serialize(),
            output_key: output.to_x_only_public_key().serialize(),
        })
    }
}

fn invalid(e: bitcoin::bip32::Error) -> ProtocolError {
    params(format!("BIP-32 derivation: {e}"))
}

/// FROST over secp256k1 with Taproot's tweak (the wallets' suite).
type Tr = frost_secp256k1_tr::Secp256K1Sha256TR;

/// A party's key package for `child`, from its key package of the wallet: the path's tweak `t`
/// added to the share (and `t·G` to the public parts), then BIP-86's tweak of the child's internal
/// key on top (frost-secp256k1-tr's `Tweak`, which first makes the key's Y even as BIP-341 does).
/// Signing with it (plain FROST, as for the wallet's own key) makes a BIP-340 signature under
/// `child.output_key`.
///
/// Errors ([`ProtocolError::Params`]): a key that does not encode, or a sum that is zero or the
/// point at infinity (probability about 2⁻²⁵⁶).
pub fn child_key_package(
    key_package: &frost_core::keys::KeyPackage<Tr>,
    child: &Child,
) -> Result<frost_core::keys::KeyPackage<Tr>> {
    use frost_core::keys::{KeyPackage, SigningShare, VerifyingShare};
    use frost_secp256k1_tr::keys::Tweak;
    let share = SecretKey::from_slice(&key_package.signing_share().serialize())
        .and_then(|s| s.add_tweak(&tweak_scalar(child)?))
        .map_err(|e| params(format!("share: {e}")))?;
    let signing_share = SigningShare::deserialize(&share.secret_bytes())
        .map_err(|e| params(format!("share: {e}")))?;
    let verifying_share = VerifyingShare::deserialize(&moved(
        &key_package.verifying_share().serialize().map_err(fe)?,
        child,
    )?)
    .map_err(fe)?;
    let verifying_key = frost_core::VerifyingKey::deserialize(&moved(
        &key_package.verifying_key().serialize().map_err(fe)?,
        child,
    )?)
    .map_err(fe)?;
    let moved = KeyPackage::new(
        *key_package.identifier(),
        signing_share,
        verifying_share,
        verifying_key,
        *key_package.min_signers(),
    );
    Ok(moved.tweak::<&[u8]>(None))
}

/// The wallet's public key package for `child` (as [`child_key_package`] moves each party's):
/// what aggregation checks every share against.
///
/// Errors: as [`child_key_package`].
pub fn child_public_key_package(
    public_key_package: &frost_core::keys::PublicKeyPackage<Tr>,
    child: &Child,
) -> Result<frost_core::keys::PublicKeyPackage<Tr>> {
    use frost_core::keys::{PublicKeyPackage, VerifyingShare};
    use frost_secp256k1_tr::keys::Tweak;
    let mut shares = std::collections::BTreeMap::new();
    for (id, share) in public_key_package.verifying_shares() {
        let moved = moved(&share.serialize().map_err(fe)?, child)?;
        shares.insert(*id, VerifyingShare::deserialize(&moved).map_err(fe)?);
    }
    let verifying_key = frost_core::VerifyingKey::deserialize(&moved(
        &public_key_package.verifying_key().serialize().map_err(fe)?,
        child,
    )?)
    .map_err(fe)?;
    let moved = PublicKeyPackage::new(shares, verifying_key, public_key_package.min_signers());
    Ok(moved.tweak::<&[u8]>(None))
}

/// The key packages one party signs `paths` with, one per path (`None`: the wallet's own key,
/// its first address): [`child_key_package`] of each distinct child, moved once.
///
/// Errors: as [`child_key_package`]; a group key that does not encode.
pub fn key_packages_for(
    wallet_id: &WalletId,
    key_package: &frost_core::keys::KeyPackage<Tr>,
    paths: &[Option<ChildPath>],
) -> Result<Vec<frost_core::keys::KeyPackage<Tr>>> {
    let xpub = xpub_of(wallet_id, key_package.verifying_key())?;
    per_path(paths, key_package, |path| {
        child_key_package(key_package, &xpub.child(path.keychain, path.index)?)
    })
}

/// The public key packages that check `paths`' signatures, one per path, as
/// [`key_packages_for`] moves each party's key package.
///
/// Errors: as [`key_packages_for`].
pub fn public_key_packages_for(
    wallet_id: &WalletId,
    public_key_package: &frost_core::keys::PublicKeyPackage<Tr>,
    paths: &[Option<ChildPath>],
) -> Result<Vec<frost_core::keys::PublicKeyPackage<Tr>>> {
    let xpub = xpub_of(wallet_id, public_key_package.verifying_key())?;
    per_path(paths, public_key_package, |path| {
        child_public_key_package(public_key_package, &xpub.child(path.keychain, path.index)?)
    })
}

/// The wallet's extended key from its group key (the network only names the serialization;
/// derivation and fingerprints do not depend on it).
fn xpub_of(wallet_id: &WalletId, group_key: &frost_core::VerifyingKey<Tr>) -> Result<WalletXpub> {
    WalletXpub::new(wallet_id, &group_key.serialize().map_err(fe)?, false)
}

/// `own` for `None`, `moved(path)` for each child, each distinct child computed once.
fn per_path<T: Clone>(
    paths: &[Option<ChildPath>],
    own: &T,
    mut moved: impl FnMut(ChildPath) -> Result<T>,
) -> Result<Vec<T>> {
    let mut done: std::collections::BTreeMap<ChildPath, T> = std::collections::BTreeMap::new();
    paths
        .iter()
        .map(|path| match path {
            None => Ok(own.clone()),
            Some(path) => {
                if let Some(known) = done.get(path) {
                    return Ok(known.clone());
                }
                let value = moved(*path)?;
                done.insert(*path, value.clone());
                Ok(value)
            }
        })
        .collect()
}

/// `child`'s tweak as a scalar.
fn tweak_scalar(child: &Child) -> std::result::Result<Scalar, bitcoin::secp256k1::Error> {
    Scalar::from_be_bytes(child.tweak).map_err(|_| bitcoin::secp256k1::Error::InvalidTweak)
}

/// The point `point` (compressed SEC1) plus `child`'s `t·G`, compressed.
fn moved(point: &[u8], child: &Child) -> Result<Vec<u8>> {
    let secp = Secp256k1::verification_only();
    PublicKey::from_slice(point)
        .and_then(|p| p.add_exp_tweak(&secp, &tweak_scalar(child)?))
        .map(|p| p.serialize().to_vec())
        .map_err(|e| params(format!("public key: {e}")))
}

fn params(reason: String) -> ProtocolError {
    ProtocolError::Params { reason }
}

fn fe(e: frost_core::Error<Tr>) -> ProtocolError {
    params(format!("FROST key: {e}"))
}

/// A wallet's output descriptors, each with its checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptors {
    /// `tr([fp]xpub/0/*)#…`
    pub receive: String,
    /// `tr([fp]xpub/1/*)#…`
    pub change: String,
    /// `tr([fp]xpub/<0;1>/*)#…`
    pub multipath: String,
}

/// The chain code of wallet `wallet_id` with group key `group_key`: SHA-256 over a domain tag, the
/// wallet id and the key.
pub fn chain_code(wallet_id: &WalletId, group_key: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(TAG_CHAIN_CODE);
    h.update(wallet_id.0);
    h.update(group_key);
    h.finalize().into()
}

/// `descriptor#checksum` (BIP-380, "Checksum"). A descriptor holding a character outside the
/// checksum's input set gets none (it is not a valid descriptor anyway).
pub fn with_checksum(descriptor: &str) -> String {
    match checksum(descriptor) {
        Some(c) => format!("{descriptor}#{c}"),
        None => descriptor.to_owned(),
    }
}

/// BIP-380's descriptor checksum: eight characters of a BCH code over the descriptor's symbols
/// (the reference algorithm of BIP-380, written out: eighty lines are not worth a dependency on a
/// whole descriptor library in the enclave's crate).
pub fn checksum(descriptor: &str) -> Option<String> {
    const INPUT: &str = "0123456789()[],'/*abcdefgh@:$%{}IJKLMNOPQRSTUVWXYZ&+-.;<=>?!^_|~ijklmnopqrstuvwxyzABCDEFGH`#\"\\ ";
    const CHECKSUM: &[u8] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";
    let mut c: u64 = 1;
    let mut class_count = 0;
    let mut class_acc: u64 = 0;
    for ch in descriptor.chars() {
        let pos = INPUT.find(ch)? as u64;
        c = polymod(c, pos & 31);
        class_acc = class_acc * 3 + (pos >> 5);
        class_count += 1;
        if class_count == 3 {
            c = polymod(c, class_acc);
            class_count = 0;
            class_acc = 0;
        }
    }
    if class_count > 0 {
        c = polymod(c, class_acc);
    }
    for _ in 0..8 {
        c = polymod(c, 0);
    }
    c ^= 1;
    let mut out = String::with_capacity(8);
    for j in 0..8 {
        let index = (c >> (5 * (7 - j))) & 31;
        out.push(char::from(*CHECKSUM.get(index as usize)?));
    }
    Some(out)
}

/// One step of BIP-380's checksum polynomial.
fn polymod(c: u64, value: u64) -> u64 {
    const GENERATOR: [u64; 5] = [
        0xf5dee51989,
        0xa9fdca3312,
        0x1bab10e32d,
        0x3706b1677a,
        0x644d626ffd,
    ];
    let c0 = c >> 35;
    let mut c = ((c & 0x7ffffffff) << 5) ^ value;
    for (bit, g) in GENERATOR.iter().enumerate() {
        if (c0 >> bit) & 1 == 1 {
            c ^= g;
        }
    }
    c
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use std::str::FromStr;

    type Keys = (
        Vec<frost_core::keys::KeyPackage<Tr>>,
        frost_core::keys::PublicKeyPackage<Tr>,
    );

    /// A 2-of-3 key as the DKG leaves it (frost-secp256k1-tr's `post_dkg` applies Taproot's tweak
    /// to the dealt key, so the group key's Y is odd about half the time).
    fn dealt() -> Keys {
        use frost_core::keys::KeyPackage;
        use frost_secp256k1_tr::keys::Tweak;
        let (shares, public) = frost_secp256k1_tr::keys::generate_with_dealer(
            3,
            2,
            frost_secp256k1_tr::keys::IdentifierList::Default,
            rand_core::OsRng,
        )
        .unwrap();
        let keys = shares
            .into_values()
            .map(|s| KeyPackage::try_from(s).unwrap().tweak::<&[u8]>(None))
            .collect();
        (keys, public.tweak::<&[u8]>(None))
    }

    /// Parties 2 and 3 sign `message` for `child` with their moved key packages; the signature
    /// is checked by an independent BIP-340 verifier under the child's output key.
    fn signs_for(keys: &Keys, child: &Child, message: &[u8; 32]) {
        use frost_core::keys::KeyPackage;
        use rand_core::OsRng;
        use std::collections::BTreeMap;
        let child_public = child_public_key_package(&keys.1, child).unwrap();
        let signers: Vec<KeyPackage<Tr>> = keys.0[1..]
            .iter()
            .map(|k| child_key_package(k, child).unwrap())
            .collect();
        let mut nonces = BTreeMap::new();
        let mut commitments = BTreeMap::new();
        for k in &signers {
            let (n, c) = frost_core::round1::commit(k.signing_share(), &mut OsRng);
            nonces.insert(*k.identifier(), n);
            commitments.insert(*k.identifier(), c);
        }
        let package = frost_core::SigningPackage::new(commitments, message);
        let mut shares = BTreeMap::new();
        for k in &signers {
            let share = frost_core::round2::sign(&package, &nonces[k.identifier()], k).unwrap();
            shares.insert(*k.identifier(), share);
        }
        let signature = frost_core::aggregate(&package, &shares, &child_public).unwrap();
        let key = k256_verify::schnorr::VerifyingKey::from_bytes(&child.output_key).unwrap();
        let sig =
            k256_verify::schnorr::Signature::try_from(signature.serialize().unwrap().as_slice())
                .unwrap();
        key.verify_raw(message, &sig).unwrap();
        // The wallet's own key package does not sign for the child: its share is refused.
        let unmoved =
            frost_core::round2::sign(&package, &nonces[keys.0[1].identifier()], &keys.0[1])
                .unwrap();
        shares.insert(*keys.0[1].identifier(), unmoved);
        assert!(frost_core::aggregate(&package, &shares, &child_public).is_err());
    }

    #[test]
    fn two_of_three_shares_moved_to_a_child_sign_for_its_bip86_output_key() {
        // Every parity of the group key and of the child's internal key, each at least once
        // (a parity mistake would fail only half the keys).
        let mut seen = std::collections::BTreeSet::new();
        for round in 0..200u32 {
            let keys = dealt();
            let group_key = keys.1.verifying_key().serialize().unwrap();
            let w = WalletXpub::new(&WalletId([3; 16]), &group_key, false).unwrap();
            for index in 0..2 {
                let keychain = if round % 2 == 0 {
                    Keychain::Receive
                } else {
                    Keychain::Change
                };
                let child = w.child(keychain, index).unwrap();
                if seen.insert((group_key[0], child.internal_key[0])) {
                    signs_for(&keys, &child, &[0x5a; 32]);
                }
            }
            if seen.len() == 4 {
                return;
            }
        }
        panic!("parities seen: {seen:?}");
    }

    #[test]
    fn descriptors_of_a_child_are_checked_against_the_wallet() {
        let keys = dealt();
        let group_key = keys.1.verifying_key().serialize().unwrap();
        let w = WalletXpub::new(&WalletId([8; 16]), &group_key, false).unwrap();
        let fp = hex::encode(w.fingerprint());
        let child = w.child(Keychain::Change, 5).unwrap();
        let x_only = hex::encode(&child.internal_key[1..]);
        // As Bitcoin Core infers it, with and without its checksum; as a user writes it.
        let inferred = format!("tr([{fp}/1/5]{x_only})");
        for desc in [
            with_checksum(&inferred),
            inferred.clone(),
            with_checksum(&format!("tr([{fp}]{}/1/5)", w.encoded())),
            format!("tr([{fp}/1/5]{})", hex::encode(child.internal_key)),
        ] {
            assert_eq!(w.child_of_descriptor(&desc).unwrap(), child, "{desc}");
        }
        let other = w.child(Keychain::Change, 6).unwrap();
        for bad in [
            format!("{inferred}#00000000"),
            format!("tr([00000000/1/5]{x_only})"),
            format!("tr([{fp}/1/6]{x_only})"),
            format!("tr([{fp}/1/5]{})", hex::encode(&other.internal_key[1..])),
            format!("tr([{fp}/1h/5]{x_only})"),
            format!("tr([{fp}/2/5]{x_only})"),
            format!("tr([{fp}/5]{x_only})"),
            format!("tr([{fp}/0/1/5]{x_only})"),
            format!("wpkh([{fp}/1/5]{x_only})"),
            format!("tr({x_only})"),
            format!("tr([{fp}/1/5]{x_only},pk({x_only}))"),
            format!("tr([{fp}/1/5]zz)"),
            String::new(),
            "tr([".into(),
        ] {
            assert!(
                matches!(
                    w.child_of_descriptor(&bad),
                    Err(ProtocolError::Params { .. })
                ),
                "{bad}"
            );
        }
        // Another wallet's extended key; the mainnet form of this one; paths on the wrong side.
        let stranger = WalletXpub::new(&WalletId([9; 16]), &group_key, false).unwrap();
        let mainnet = WalletXpub::new(&WalletId([8; 16]), &group_key, true).unwrap();
        for desc in [
            format!("tr([{fp}]{}/1/5)", stranger.encoded()),
            format!("tr([{fp}]{}/1/5)", mainnet.encoded()),
            format!("tr([{fp}/1/5]{})", w.encoded()),
            format!("tr([{fp}/1]{}/5)", w.encoded()),
            format!("tr([{fp}/1]{x_only}/5)"),
        ] {
            assert!(w.child_of_descriptor(&desc).is_err(), "{desc}");
        }
    }

    #[test]
    fn checksums_match_bip380s_vectors() {
        // BIP-380, "Test Vectors": valid checksums.
        assert_eq!(checksum("raw(deadbeef)").unwrap(), "89f8spxm");
        assert_eq!(
            with_checksum(
                "pkh([d6043800/0'/0'/18']03efdee34c0009fd175f3b20b5e5a5517fd5d16746f2e635b44617adafeaebc388)"
            ),
            "pkh([d6043800/0'/0'/18']03efdee34c0009fd175f3b20b5e5a5517fd5d16746f2e635b44617adafeaebc388)#4ahsl9pk"
        );
        // A multipath descriptor (BIP-389), its checksum as embit (PyPI) computes it.
        assert_eq!(
            with_checksum(
                "wpkh(xpub661MyMwAqRbcFW31YEwpkMuc5THy2PSt5bDMsktWQcFF8syAmRUapSCGu8ED9W6oDMSgv6Zz8idoc4a6mr8BDzTJY47LJhkJ8UB7WEGuduB/<0;1>/*)"
            ),
            "wpkh(xpub661MyMwAqRbcFW31YEwpkMuc5THy2PSt5bDMsktWQcFF8syAmRUapSCGu8ED9W6oDMSgv6Zz8idoc4a6mr8BDzTJY47LJhkJ8UB7WEGuduB/<0;1>/*)#34gyh0p0"
        );
        assert!(checksum("raw(dead\u{e9}beef)").is_none());
    }

    #[test]
    fn children_follow_bip32_public_derivation_and_the_tweak_moves_the_key() {
        let group_key =
            hex::decode("0339a36013301597daef41fbe593a02cc513d0b55527ec2df1050e2e8ff49c85c2")
                .unwrap();
        let id = WalletId([7; 16]);
        let w = WalletXpub::new(&id, &group_key, false).unwrap();
        assert!(w.encoded().starts_with("tpub"));
        assert!(
            WalletXpub::new(&id, &group_key, true)
                .unwrap()
                .encoded()
                .starts_with("xpub")
        );
        let secp = Secp256k1::verification_only();
        let root = Xpub::from_str(&w.encoded()).unwrap();
        for (keychain, index) in [(Keychain::Receive, 0), (Keychain::Change, 5)] {
            let child = w.child(keychain, index).unwrap();
            // What any BIP-32 implementation derives from the xpub.
            let path = [
                ChildNumber::from_normal_idx(keychain.number()).unwrap(),
                ChildNumber::from_normal_idx(index).unwrap(),
            ];
            let derived = root.derive_pub(&secp, &path).unwrap();
            assert_eq!(child.internal_key, derived.public_key.serialize());
            // K + t·G is the child's key.
            let moved = PublicKey::from_slice(&group_key)
                .unwrap()
                .add_exp_tweak(&secp, &Scalar::from_be_bytes(child.tweak).unwrap())
                .unwrap();
            assert_eq!(moved.serialize(), child.internal_key);
            assert_eq!(
                child.derivation(),
                format!("m/{}/{index}", keychain.number())
            );
        }
        assert_ne!(
            w.child(Keychain::Receive, 0).unwrap().output_key,
            w.child(Keychain::Receive, 1).unwrap().output_key
        );
        assert!(w.child(Keychain::Receive, MAX_INDEX + 1).is_err());
        assert!(WalletXpub::new(&id, &group_key[1..], false).is_err());
        let d = w.descriptors();
        let fp = hex::encode(w.fingerprint());
        assert!(d.receive.starts_with(&format!("tr([{fp}]tpub")));
        assert!(d.multipath.contains("/<0;1>/*)#"));
    }
}
