//! Unsigned transactions from their signing payload, and signed ones from a signature.

use alloy_consensus::{SignableTransaction, Transaction, TxEip1559, TxEnvelope, TxLegacy};
use alloy_eips::eip2718::Encodable2718;
use alloy_primitives::{Signature, TxKind, U256, keccak256};
use alloy_rlp::Decodable;

use crate::{EthError, Result};

/// EIP-2718 type byte of an EIP-1559 transaction.
const EIP1559: u8 = 0x02;
/// RLP lists start at 0xc0; a legacy transaction's payload is a bare list (EIP-2718: first byte
/// ≥ 0xc0 is legacy).
const LEGACY_MIN: u8 = 0xc0;

/// A transaction the enclave may sign: EIP-1559, or legacy with an EIP-155 chain id.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnsignedTx {
    /// Type 2 (EIP-1559).
    Eip1559(TxEip1559),
    /// Type 0 with a chain id (EIP-155).
    Legacy(TxLegacy),
}

impl UnsignedTx {
    /// Decodes a signing payload and refuses anything that is not exactly the canonical
    /// encoding of what it decodes to. alloy's decoders accept some non-canonical legacy forms
    /// (for compatibility); a signer must not, or two parties could read one payload two ways.
    pub fn from_signing_payload(payload: &[u8]) -> Result<Self> {
        let tx = Self::decode(payload)?;
        if tx.signing_payload() != payload {
            return Err(EthError::NotCanonical);
        }
        Ok(tx)
    }

    fn decode(payload: &[u8]) -> Result<Self> {
        let encoding = |e: alloy_rlp::Error| EthError::Encoding {
            reason: e.to_string(),
        };
        match payload.first() {
            None => Err(EthError::Encoding {
                reason: "empty payload".into(),
            }),
            Some(&EIP1559) => {
                let mut rest = payload.get(1..).unwrap_or_default();
                Ok(Self::Eip1559(
                    TxEip1559::decode(&mut rest).map_err(encoding)?,
                ))
            }
            Some(&first) if first >= LEGACY_MIN => {
                let mut rest = payload;
                let tx = TxLegacy::decode(&mut rest).map_err(encoding)?;
                if tx.chain_id.is_none() {
                    return Err(EthError::NoChainId);
                }
                Ok(Self::Legacy(tx))
            }
            Some(&ty) => Err(EthError::UnsupportedType { ty }),
        }
    }

    /// Checks a transaction built elsewhere (a client's request) the way a decoded one is checked.
    pub fn checked(self) -> Result<Self> {
        Self::from_signing_payload(&self.signing_payload())
    }

    /// The bytes whose Keccak-256 is signed (EIP-155 §"Specification", EIP-1559 §"Specification").
    pub fn signing_payload(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Self::Eip1559(tx) => tx.encode_for_signing(&mut out),
            Self::Legacy(tx) => tx.encode_for_signing(&mut out),
        }
        out
    }

    /// The digest the signature is over: Keccak-256 of [`Self::signing_payload`].
    pub fn signing_hash(&self) -> [u8; 32] {
        keccak256(self.signing_payload()).0
    }

    /// The chain the transaction is for (EIP-155 / EIP-1559 `chain_id`).
    pub fn chain_id(&self) -> u64 {
        match self {
            Self::Eip1559(tx) => tx.chain_id,
            // `decode` refuses a legacy transaction without one.
            Self::Legacy(tx) => tx.chain_id.unwrap_or_default(),
        }
    }

    /// The account nonce.
    pub fn nonce(&self) -> u64 {
        self.inner().nonce()
    }

    /// The recipient, `None` for contract creation.
    pub fn to(&self) -> Option<alloy_primitives::Address> {
        match self.inner().kind() {
            TxKind::Call(to) => Some(to),
            TxKind::Create => None,
        }
    }

    /// Wei sent with the transaction.
    pub fn value(&self) -> U256 {
        self.inner().value()
    }

    /// The call data.
    pub fn input(&self) -> &[u8] {
        self.inner().input()
    }

    /// The most the fee can cost, in wei: gas limit × the highest price per gas it allows
    /// (`max_fee_per_gas` for EIP-1559, `gas_price` for legacy).
    pub fn max_fee(&self) -> U256 {
        let tx = self.inner();
        U256::from(tx.gas_limit()).saturating_mul(U256::from(tx.max_fee_per_gas()))
    }

    fn inner(&self) -> &dyn Transaction {
        match self {
            Self::Eip1559(tx) => tx,
            Self::Legacy(tx) => tx,
        }
    }

    /// The raw signed transaction (EIP-2718 encoding, what `eth_sendRawTransaction` takes) and
    /// its hash.
    pub fn into_signed(self, signature: &RecoverableSignature) -> Result<SignedTx> {
        let signature = signature.to_alloy()?;
        let envelope: TxEnvelope = match self {
            Self::Eip1559(tx) => tx.into_signed(signature).into(),
            Self::Legacy(tx) => tx.into_signed(signature).into(),
        };
        let raw = envelope.encoded_2718();
        Ok(SignedTx {
            hash: keccak256(&raw).0,
            raw,
        })
    }
}

/// An ECDSA signature over secp256k1 with the parity of R's y coordinate (Ethereum's `v`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoverableSignature {
    /// r, big-endian.
    pub r: [u8; 32],
    /// s, big-endian; at most n/2 (EIP-2).
    pub s: [u8; 32],
    /// Whether R's y coordinate is odd.
    pub y_parity: bool,
}

/// Half the order of secp256k1, the largest `s` EIP-2 allows.
const HALF_ORDER: U256 = U256::from_be_bytes([
    0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0x5d, 0x57, 0x6e, 0x73, 0x57, 0xa4, 0x50, 0x1d, 0xdf, 0xe9, 0x2f, 0x46, 0x68, 0x1b, 0x20, 0xa0,
]);

impl SignedTx {
    /// Opens a signed transaction (EIP-2718, as `eth_sendRawTransaction` takes it): the
    /// unsigned transaction and its signature, for a party that must check what another
    /// published before reporting it (a treasury member, of the provider's `Signed`). Only
    /// the kinds signed here, in their canonical encoding.
    pub fn open(raw: &[u8]) -> Result<(UnsignedTx, RecoverableSignature)> {
        use alloy_eips::eip2718::Decodable2718;
        let envelope = TxEnvelope::decode_2718(&mut &raw[..]).map_err(|e| EthError::Encoding {
            reason: e.to_string(),
        })?;
        if envelope.encoded_2718() != raw {
            return Err(EthError::NotCanonical);
        }
        let (tx, signature) = match envelope {
            TxEnvelope::Eip1559(signed) => {
                let signature = *signed.signature();
                (UnsignedTx::Eip1559(signed.strip_signature()), signature)
            }
            TxEnvelope::Legacy(signed) => {
                let signature = *signed.signature();
                (UnsignedTx::Legacy(signed.strip_signature()), signature)
            }
            other => {
                return Err(EthError::UnsupportedType {
                    ty: other.tx_type() as u8,
                });
            }
        };
        let signature = RecoverableSignature {
            r: signature.r().to_be_bytes(),
            s: signature.s().to_be_bytes(),
            y_parity: signature.v(),
        };
        Ok((tx.checked()?, signature))
    }
}

impl RecoverableSignature {
    fn to_alloy(self) -> Result<Signature> {
        let r = U256::from_be_bytes(self.r);
        let s = U256::from_be_bytes(self.s);
        if r.is_zero() || s.is_zero() {
            return Err(EthError::Signature {
                reason: "r or s is zero".into(),
            });
        }
        // EIP-2: transactions with s > n/2 are invalid since Homestead.
        if s > HALF_ORDER {
            return Err(EthError::Signature {
                reason: "s is above n/2 (EIP-2)".into(),
            });
        }
        Ok(Signature::new(r, s, self.y_parity))
    }
}

/// A signed transaction, ready to broadcast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedTx {
    /// The EIP-2718 encoding (`eth_sendRawTransaction`'s argument).
    pub raw: Vec<u8>,
    /// Keccak-256 of `raw`: the transaction hash.
    pub hash: [u8; 32],
}
