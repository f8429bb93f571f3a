//! What a transaction spends, read from the transaction itself: the ETH it moves, the most its
//! fee can cost, and for calls of the ERC-20 functions that move tokens, which token, to whom and
//! how much (EIP-20 §"Methods"; Solidity ABI specification, "Function Selector and Argument
//! Encoding").

use alloy_primitives::{Address, U256};

use crate::{EthError, Result, UnsignedTx};

/// `transfer(address,uint256)`.
const TRANSFER: [u8; 4] = [0xa9, 0x05, 0x9c, 0xbb];
/// `approve(address,uint256)`.
const APPROVE: [u8; 4] = [0x09, 0x5e, 0xa7, 0xb3];
/// `transferFrom(address,address,uint256)`.
const TRANSFER_FROM: [u8; 4] = [0x23, 0xb8, 0x72, 0xdd];
/// `increaseAllowance(address,uint256)` (OpenZeppelin's ERC-20, not EIP-20 itself: it grants an
/// allowance as `approve` does, so it is valued as one).
const INCREASE_ALLOWANCE: [u8; 4] = [0x39, 0x50, 0x93, 0x51];
/// One ABI word.
const WORD: usize = 32;

/// The value of one transaction, as a policy weighs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Valuation {
    /// The chain it is for.
    pub chain_id: u64,
    /// The account called or paid; `None` creates a contract.
    pub to: Option<Address>,
    /// Wei sent.
    pub value: U256,
    /// The most the fee can cost, in wei.
    pub max_fee: U256,
    /// What the call data does.
    pub call: Call,
}

/// What the call data asks the recipient to do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Call {
    /// No call data: a plain payment.
    None,
    /// An ERC-20 function of the token contract at `token`.
    Erc20 {
        /// The token contract (the transaction's `to`).
        token: Address,
        /// Which function, with its arguments.
        op: Erc20,
    },
    /// Contract creation or a call this crate cannot value; `selector` is the first four bytes
    /// of the call data where there are four.
    Unknown {
        /// The function selector.
        selector: Option<[u8; 4]>,
    },
}

/// The ERC-20 functions that move or entitle someone to move tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Erc20 {
    /// `transfer(to, amount)`: the wallet pays `amount` to `to`.
    Transfer {
        /// The recipient.
        to: Address,
        /// Token base units.
        amount: U256,
    },
    /// `approve(spender, amount)`: `spender` may take up to `amount` from the wallet later.
    Approve {
        /// Who may spend.
        spender: Address,
        /// Token base units.
        amount: U256,
    },
    /// `increaseAllowance(spender, amount)`: `spender` may take `amount` more.
    IncreaseAllowance {
        /// Who may spend.
        spender: Address,
        /// Token base units.
        amount: U256,
    },
    /// `transferFrom(from, to, amount)`: the wallet moves `amount` of `from`'s tokens to `to`.
    TransferFrom {
        /// Whose tokens.
        from: Address,
        /// The recipient.
        to: Address,
        /// Token base units.
        amount: U256,
    },
}

impl Erc20 {
    /// The token base units the call moves or allows to be moved.
    pub fn amount(&self) -> U256 {
        match self {
            Self::Transfer { amount, .. }
            | Self::Approve { amount, .. }
            | Self::IncreaseAllowance { amount, .. }
            | Self::TransferFrom { amount, .. } => *amount,
        }
    }
}

impl Valuation {
    /// Values `tx`. Call data that starts with an ERC-20 selector but is not exactly a call of
    /// that function (wrong length, an address word with bits above its 20 bytes) is refused
    /// rather than valued as unknown: a token contract's ABI decoder may read it another way.
    pub fn of(tx: &UnsignedTx) -> Result<Self> {
        let call = match tx.to() {
            None => Call::Unknown { selector: None },
            Some(token) => call_of(token, tx.input())?,
        };
        Ok(Self {
            chain_id: tx.chain_id(),
            to: tx.to(),
            value: tx.value(),
            max_fee: tx.max_fee(),
            call,
        })
    }
}

fn call_of(token: Address, input: &[u8]) -> Result<Call> {
    if input.is_empty() {
        return Ok(Call::None);
    }
    let Some((selector, args)) = input.split_first_chunk::<4>() else {
        return Ok(Call::Unknown { selector: None });
    };
    let op = match *selector {
        TRANSFER => {
            let [to, amount] = words(args)?;
            Erc20::Transfer {
                to: address(to)?,
                amount: U256::from_be_bytes(*amount),
            }
        }
        APPROVE => {
            let [spender, amount] = words(args)?;
            Erc20::Approve {
                spender: address(spender)?,
                amount: U256::from_be_bytes(*amount),
            }
        }
        INCREASE_ALLOWANCE => {
            let [spender, amount] = words(args)?;
            Erc20::IncreaseAllowance {
                spender: address(spender)?,
                amount: U256::from_be_bytes(*amount),
            }
        }
        TRANSFER_FROM => {
            let [from, to, amount] = words(args)?;
            Erc20::TransferFrom {
                from: address(from)?,
                to: address(to)?,
                amount: U256::from_be_bytes(*amount),
            }
        }
        other => {
            return Ok(Call::Unknown {
                selector: Some(other),
            });
        }
    };
    Ok(Call::Erc20 { token, op })
}

/// Exactly `N` ABI words.
fn words<const N: usize>(args: &[u8]) -> Result<[&[u8; WORD]; N]> {
    if args.len() != N * WORD {
        return Err(EthError::Erc20 {
            reason: format!("{} bytes of arguments, expected {}", args.len(), N * WORD),
        });
    }
    let mut chunks = args.chunks_exact(WORD).filter_map(|w| w.try_into().ok());
    let mut out = [&[0u8; WORD]; N];
    for slot in &mut out {
        *slot = chunks.next().ok_or_else(|| EthError::Erc20 {
            reason: "short argument".into(),
        })?;
    }
    Ok(out)
}

/// An ABI `address` word: 12 zero bytes, then the address.
fn address(word: &[u8; WORD]) -> Result<Address> {
    let (pad, addr) = word.split_at(WORD - 20);
    if pad.iter().any(|b| *b != 0) {
        return Err(EthError::Erc20 {
            reason: "address argument has bits above its 20 bytes".into(),
        });
    }
    Ok(Address::from_slice(addr))
}
