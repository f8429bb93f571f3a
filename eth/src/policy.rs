//! An Ethereum transaction weighed by its wallet's policy (`cosigner_protocol::policy`, parsed
//! for [`Chain::Ethereum`]): the transaction becomes one spend per asset leaving the wallet, and
//! every one must be allowed.
//!
//! * **Ether**: the value sent plus the most the fee can cost (gas limit × max fee per gas, or ×
//!   gas price; the fee is value leaving, as in docs/policy.md, "Fees"). Its destination is the
//!   recipient; for a token call that sends no ether, none (only the fee leaves).
//! * **A token of the policy's table**: for `transfer` and `transferFrom` the amount, to their
//!   recipient; for `approve` and `increaseAllowance` the allowance granted, to the spender (what
//!   it may take later is counted now, the safe side). The fee is ether, judged in the ether spend
//!   above, whose destination is then the token contract (where the gas is spent). Any other
//!   function of a table token is refused, whatever `calls` says.
//! * **Anything the enclave cannot value** (a call of another function, of a token not in the
//!   table, or a contract creation) is an ether spend marked as a call of that contract
//!   (`Spend::call`): only a rule naming the contract in its `calls` allows it.
//!
//! The spends of one transaction are judged together: each by the first rule of its asset that
//! matches, and the transaction needs the most approvals any of them needs. Rules of different
//! assets must then name the same approvers, or the approvals could not be counted once
//! (refused, naming both rules).

use cosigner_protocol::policy::{
    ASSET_ETH, Chain, Decision, Denial, PastSpend, Policy, Spend, eth_address_text,
};
use serde::Serialize;

use crate::{Address, Call, Erc20, U256, Valuation};

/// What [`Spend::call`] says of a contract creation (no contract address to name in `calls`).
pub const CONTRACT_CREATION: &str = "contract creation";

/// One asset leaving the wallet in a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outflow {
    /// `"eth"` or a token's asset name.
    pub asset: String,
    /// Base units leaving (wei, token base units), fee included.
    pub amount: u128,
    /// The part of `amount` that is fee (ether only).
    pub fee: u128,
    /// Where it goes (`0x…`, lower case).
    pub destinations: Vec<String>,
    /// The contract of a call that could not be valued.
    pub call: Option<String>,
}

/// A transaction the policy allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgement {
    /// The strictest decision: the most approvals any spend needs.
    pub decision: Decision,
    /// What leaves, to record in the wallet's history once signed.
    pub outflows: Vec<Outflow>,
}

/// The spends of a valued transaction under `policy`'s token table (module docs). An amount
/// above 2^128 base units cannot be weighed and is refused.
pub fn outflows(policy: &Policy, v: &Valuation) -> Result<Vec<Outflow>, Denial> {
    let ether = wide(v.value.checked_add(v.max_fee), "value and fee")?;
    let fee = wide(Some(v.max_fee), "fee")?;
    let to = v.to.as_ref().map(text);
    let mut out = Vec::with_capacity(2);
    let (destinations, call) = match (&v.call, &to) {
        (Call::None, _) => (to.iter().cloned().collect(), None),
        (Call::Erc20 { token, op }, Some(contract)) => match policy.token_at(&token.0.0) {
            Some(known) => {
                out.push(token_outflow(&known.asset, op)?);
                // The fee (and any ether sent) goes to run the token contract.
                (vec![contract.clone()], None)
            }
            None => (vec![contract.clone()], Some(contract.clone())),
        },
        // A token of the table is valued or refused, never allowed as an unvalued call: a `calls`
        // rule naming it would let any other function of it move tokens past the token's rules.
        (_, Some(contract)) if v.to.is_some_and(|a| policy.token_at(&a.0.0).is_some()) => {
            return Err(denial(format!(
                "a call of token contract {contract} other than transfer, approve, \
                 increaseAllowance or transferFrom cannot be valued"
            )));
        }
        (_, Some(contract)) => (vec![contract.clone()], Some(contract.clone())),
        (_, None) => (vec![], Some(CONTRACT_CREATION.to_string())),
    };
    out.insert(
        0,
        Outflow {
            asset: ASSET_ETH.into(),
            amount: ether,
            fee,
            destinations,
            call,
        },
    );
    Ok(out)
}

/// Judges a valued transaction against `policy` with the wallet's `history` at `now_ms`.
pub fn judge(
    policy: &Policy,
    v: &Valuation,
    history: &[PastSpend],
    now_ms: u64,
) -> Result<Judgement, Denial> {
    if policy.chain() != Chain::Ethereum {
        return Err(denial(
            "the wallet's policy is not an Ethereum policy".into(),
        ));
    }
    // Its `eth` is the native coin of the chain the transaction names: only chains it lists.
    if !policy.allows_chain(v.chain_id) {
        return Err(denial(format!(
            "chain id {} is not one of the policy's chain_ids",
            v.chain_id
        )));
    }
    let outflows = outflows(policy, v)?;
    let mut strictest: Option<Decision> = None;
    for flow in &outflows {
        let spend = Spend {
            asset: &flow.asset,
            value_leaving: flow.amount,
            destinations: &flow.destinations,
            now_ms,
            history,
            call: flow.call.as_deref(),
        };
        let decision = policy.evaluate_with_fee(&spend, flow.fee)?;
        strictest = Some(match strictest {
            None => decision,
            Some(held) if held.approvers != decision.approvers => {
                return Err(denial(format!(
                    "rules {:?} and {:?} both apply but name different approvers",
                    held.rule, decision.rule
                )));
            }
            // On a tie the token's rule is named (it comes after the fee's): it says more.
            Some(held) if decision.approvals >= held.approvals => decision,
            Some(held) => held,
        });
    }
    let decision = strictest.ok_or_else(|| denial("nothing to judge".into()))?;
    Ok(Judgement { decision, outflows })
}

fn token_outflow(asset: &str, op: &Erc20) -> Result<Outflow, Denial> {
    let to = match op {
        Erc20::Transfer { to, .. } | Erc20::TransferFrom { to, .. } => to,
        Erc20::Approve { spender, .. } | Erc20::IncreaseAllowance { spender, .. } => spender,
    };
    Ok(Outflow {
        asset: asset.into(),
        amount: wide(Some(op.amount()), "token amount")?,
        fee: 0,
        destinations: vec![text(to)],
        call: None,
    })
}

fn wide(amount: Option<U256>, what: &str) -> Result<u128, Denial> {
    amount
        .and_then(|a| u128::try_from(a).ok())
        .ok_or_else(|| denial(format!("the {what} is above 2^128 base units")))
}

fn text(address: &Address) -> String {
    eth_address_text(&address.0.0)
}

fn denial(reason: String) -> Denial {
    Denial { reason }
}

#[cfg(test)]
mod tests;
