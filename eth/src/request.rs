//! A transaction as wallets hand it to a signer: the JSON object `eth_signTransaction` takes
//! (Ethereum JSON-RPC specification, `GenericTransaction`): `chainId`, `nonce`, `to`, `value`,
//! `data` (or `input`), `gas` (or `gasLimit`), and `gasPrice` (legacy) or `maxFeePerGas` and
//! `maxPriorityFeePerGas` (EIP-1559). Quantities are `0x` hex or decimal strings, or JSON
//! integers; an unknown key is refused rather than ignored.

use alloy_consensus::{TxEip1559, TxLegacy};
use alloy_primitives::{Address, Bytes, TxKind, U256};
use serde_json::{Map, Value};

use crate::{EthError, Result, UnsignedTx};

/// Keys a request may carry; `from` is checked by the caller against the wallet's address.
const KEYS: &[&str] = &[
    "type",
    "chainId",
    "nonce",
    "from",
    "to",
    "value",
    "data",
    "input",
    "gas",
    "gasLimit",
    "gasPrice",
    "maxFeePerGas",
    "maxPriorityFeePerGas",
    "accessList",
];

/// A parsed `eth_signTransaction` object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxRequest {
    /// The transaction to sign.
    pub tx: UnsignedTx,
    /// The `from` it names, if any.
    pub from: Option<Address>,
}

impl TxRequest {
    /// Parses the JSON text of one transaction object.
    pub fn from_json(text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|e| EthError::Field {
            field: "(document)",
            reason: e.to_string(),
        })?;
        let Value::Object(map) = value else {
            return Err(EthError::Field {
                field: "(document)",
                reason: "not a JSON object".into(),
            });
        };
        Self::from_map(&map)
    }

    fn from_map(map: &Map<String, Value>) -> Result<Self> {
        if let Some(key) = map.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(EthError::Field {
                field: "(document)",
                reason: format!("unknown key {key:?}"),
            });
        }
        let f = Fields(map);
        if f.get("accessList")
            .is_some_and(|v| v != &Value::Array(vec![]))
        {
            return Err(f.bad("accessList", "only an empty access list is signed here"));
        }
        let tx = match f.kind()? {
            Kind::Eip1559 => UnsignedTx::Eip1559(TxEip1559 {
                chain_id: f.u64("chainId")?,
                nonce: f.u64("nonce")?,
                gas_limit: f.gas()?,
                max_fee_per_gas: f.u128("maxFeePerGas")?,
                max_priority_fee_per_gas: f.u128("maxPriorityFeePerGas")?,
                to: f.to()?,
                value: f.value()?,
                access_list: Default::default(),
                input: f.data()?,
            }),
            Kind::Legacy => UnsignedTx::Legacy(TxLegacy {
                chain_id: Some(f.u64("chainId")?),
                nonce: f.u64("nonce")?,
                gas_price: f.u128("gasPrice")?,
                gas_limit: f.gas()?,
                to: f.to()?,
                value: f.value()?,
                input: f.data()?,
            }),
        };
        let from = f.opt_address("from")?;
        Ok(Self {
            tx: tx.checked()?,
            from,
        })
    }
}

enum Kind {
    Eip1559,
    Legacy,
}

struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    fn bad(&self, field: &'static str, reason: impl Into<String>) -> EthError {
        EthError::Field {
            field,
            reason: reason.into(),
        }
    }

    /// `type` when given (`0x2`, `0x0`); otherwise EIP-1559 fee fields make it type 2 and
    /// `gasPrice` makes it legacy. Fields of the other kind are refused, not dropped.
    fn kind(&self) -> Result<Kind> {
        let has_1559 =
            self.get("maxFeePerGas").is_some() || self.get("maxPriorityFeePerGas").is_some();
        let has_legacy = self.get("gasPrice").is_some();
        let kind = match self.get("type") {
            Some(_) => match self.uint("type")? {
                t if t == U256::from(2) => Kind::Eip1559,
                t if t.is_zero() => Kind::Legacy,
                t => return Err(self.bad("type", format!("type {t} is not signed here (0 or 2)"))),
            },
            None if has_1559 => Kind::Eip1559,
            None if has_legacy => Kind::Legacy,
            None => return Err(self.bad("gasPrice", "neither gasPrice nor maxFeePerGas given")),
        };
        match kind {
            Kind::Eip1559 if has_legacy => {
                Err(self.bad("gasPrice", "not a field of an EIP-1559 transaction"))
            }
            Kind::Legacy if has_1559 => {
                Err(self.bad("maxFeePerGas", "not a field of a legacy transaction"))
            }
            kind => Ok(kind),
        }
    }

    fn uint(&self, field: &'static str) -> Result<U256> {
        let value = self.get(field).ok_or_else(|| self.bad(field, "missing"))?;
        let parsed = match value {
            Value::Number(n) => n.as_u64().map(U256::from),
            Value::String(s) => match s.strip_prefix("0x") {
                Some(hex) if !hex.is_empty() => U256::from_str_radix(hex, 16).ok(),
                Some(_) => None,
                None if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                    U256::from_str_radix(s, 10).ok()
                }
                None => None,
            },
            _ => None,
        };
        parsed.ok_or_else(|| {
            self.bad(
                field,
                "not a non-negative integer (0x hex, decimal string or number)",
            )
        })
    }

    fn u64(&self, field: &'static str) -> Result<u64> {
        u64::try_from(self.uint(field)?).map_err(|_| self.bad(field, "above 2^64 - 1"))
    }

    fn u128(&self, field: &'static str) -> Result<u128> {
        u128::try_from(self.uint(field)?).map_err(|_| self.bad(field, "above 2^128 - 1"))
    }

    fn value(&self) -> Result<U256> {
        match self.get("value") {
            None => Ok(U256::ZERO),
            Some(_) => self.uint("value"),
        }
    }

    /// `gas`, or its alias `gasLimit`; both given must agree.
    fn gas(&self) -> Result<u64> {
        match (self.get("gas"), self.get("gasLimit")) {
            (Some(_), Some(_)) if self.u64("gas")? != self.u64("gasLimit")? => {
                Err(self.bad("gasLimit", "differs from gas"))
            }
            (Some(_), _) => self.u64("gas"),
            (None, Some(_)) => self.u64("gasLimit"),
            (None, None) => Err(self.bad("gas", "missing")),
        }
    }

    /// `data`, or its alias `input`; both given must agree.
    fn data(&self) -> Result<Bytes> {
        let data = self.opt_bytes("data")?;
        let input = self.opt_bytes("input")?;
        match (data, input) {
            (Some(d), Some(i)) if d != i => Err(self.bad("input", "differs from data")),
            (Some(d), _) | (None, Some(d)) => Ok(d),
            (None, None) => Ok(Bytes::new()),
        }
    }

    fn opt_bytes(&self, field: &'static str) -> Result<Option<Bytes>> {
        let Some(value) = self.get(field) else {
            return Ok(None);
        };
        let text = value
            .as_str()
            .and_then(|s| s.strip_prefix("0x"))
            .ok_or_else(|| self.bad(field, "not a 0x-prefixed hex string"))?;
        hex::decode(text)
            .map(|b| Some(Bytes::from(b)))
            .map_err(|e| self.bad(field, e.to_string()))
    }

    fn to(&self) -> Result<TxKind> {
        Ok(match self.opt_address("to")? {
            Some(to) => TxKind::Call(to),
            None => TxKind::Create,
        })
    }

    /// An address: 20 bytes of hex; a mixed-case one must carry a valid EIP-55 checksum.
    fn opt_address(&self, field: &'static str) -> Result<Option<Address>> {
        let Some(value) = self.get(field) else {
            return Ok(None);
        };
        let text = value
            .as_str()
            .ok_or_else(|| self.bad(field, "not a string"))?;
        let body = text
            .strip_prefix("0x")
            .ok_or_else(|| self.bad(field, "not 0x-prefixed"))?;
        let mixed = body.bytes().any(|b| b.is_ascii_lowercase())
            && body.bytes().any(|b| b.is_ascii_uppercase());
        let address = if mixed {
            Address::parse_checksummed(text, None)
                .map_err(|e| self.bad(field, format!("bad EIP-55 checksum: {e}")))?
        } else {
            let bytes = hex::decode(body).map_err(|e| self.bad(field, e.to_string()))?;
            if bytes.len() != 20 {
                return Err(self.bad(field, format!("{} bytes, an address has 20", bytes.len())));
            }
            Address::from_slice(&bytes)
        };
        Ok(Some(address))
    }
}
