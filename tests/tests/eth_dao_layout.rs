//! The DAO treasury's layout under threshold ECDSA, in memory through the protocol's own state
//! machines (the mailbox ceremonies that will carry it are not built yet: docs/ethereum.md, "Not
//! yet"): five members and a provider weighted as docs/policy.md, "Weights and threshold", says
//! — the provider holds w = n − k_min + 1 = 3 parties, the threshold is n + 1 = 6 of 8 — so no
//! set of members signs without the provider and the provider needs the smallest tier's 3
//! members. The policy (`examples/policies/dao-eth.toml`, written as the scenario states it)
//! decides the approvals; the signed transactions are executed by py-evm.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use cosigner_eth::{TxRequest, Valuation, address_of_point, checksummed};
use cosigner_protocol::dao::weights;
use cosigner_protocol::policy::{Chain, Policy, parse_members};
use cosigner_protocol::wire::WalletId;
use cosigner_tests::ecdsa::{self, SKIP_LINE, TESTER_CHAIN_ID};

const ETH: u128 = 1_000_000_000_000_000_000;
const BOB: &str = "0x000000000000000000000000000000000000b0b0";

fn payment(nonce: u64, wei: u128) -> cosigner_eth::UnsignedTx {
    TxRequest::from_json(&format!(
        r#"{{"type":"0x2","chainId":{TESTER_CHAIN_ID},"nonce":{nonce},"to":"{BOB}","value":"{wei}",
            "gas":21000,"maxFeePerGas":"2000000000","maxPriorityFeePerGas":"1000000000"}}"#
    ))
    .unwrap()
    .tx
}

#[test]
fn the_dao_treasury_layout_signs_with_the_provider_and_its_tiers_members() {
    let members = parse_members(include_str!("../../examples/policies/dao-members.toml")).unwrap();
    let text = include_str!("../../examples/policies/dao-eth.toml").replace(
        "chain_ids = [1]",
        &format!("chain_ids = [{TESTER_CHAIN_ID}]"),
    );
    let policy = Policy::parse_for(Chain::Ethereum, &text, &members).unwrap();
    let (w, t) = weights(members.len(), policy.min_approvals()).unwrap();
    assert_eq!((w, t), (3, 6));
    let n = u16::try_from(members.len()).unwrap() + w;
    // Members are parties 1–5, the provider 6, 7 and 8.
    let outputs = ecdsa::dkg(WalletId([4; 16]), t, n).unwrap();
    let address = checksummed(&address_of_point(&outputs[0].public_key).unwrap());
    let provider: Vec<_> = outputs[5..].iter().map(|o| &o.key).collect();
    let member = |i: usize| &outputs[i].key;
    let approvals = |tx: &cosigner_eth::UnsignedTx| {
        cosigner_eth::policy::judge(&policy, &Valuation::of(tx).unwrap(), &[], 0)
            .unwrap()
            .decision
            .approvals
    };
    // 5 ETH: 3 approvals; the provider's 3 parties and those 3 members make the threshold.
    let small = payment(0, 5 * ETH);
    assert_eq!(approvals(&small), 3);
    let mut signers: Vec<_> = provider.clone();
    signers.extend([member(0), member(2), member(4)]);
    let first = ecdsa::sign_tx(&signers, small).unwrap();
    // 20 ETH: 4 approvals. DKLs23 signs with exactly the threshold: the provider signs only
    // once the fourth approval is in, with 3 of the approving members.
    let large = payment(1, 20 * ETH);
    assert_eq!(approvals(&large), 4);
    let mut signers: Vec<_> = provider.clone();
    signers.extend([member(1), member(2), member(3)]);
    let second = ecdsa::sign_tx(&signers, large).unwrap();
    // All five members without the provider are below the threshold: no signature.
    let members_only: Vec<_> = (0..5).map(member).collect();
    assert!(ecdsa::sign_tx(&members_only, payment(2, ETH)).is_err());
    // The provider with 2 members (a compromised provider) is below it too.
    let mut short: Vec<_> = provider.clone();
    short.extend([member(0), member(1)]);
    assert!(ecdsa::sign_tx(&short, payment(2, ETH)).is_err());
    if !ecdsa::python_available() {
        println!("{SKIP_LINE}");
        return;
    }
    let report = ecdsa::run_in_evm(&address, 30 * ETH, &[first, second]).unwrap();
    assert_eq!(report.senders, vec![address.clone(); 2]);
    assert_eq!(report.receipts, vec![1, 1]);
    assert_eq!(report.balances[&BOB.to_lowercase()], (25 * ETH).to_string());
}
