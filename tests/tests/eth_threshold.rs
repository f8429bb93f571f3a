//! Ethereum transactions signed by a 2-of-3 threshold ECDSA key (made by the DKG, no party ever
//! holding it) are ordinary transactions to independent Ethereum software: eth-account recovers
//! the wallet's address as their sender, and py-evm (through eth-tester) executes them, moving
//! the balances. EIP-1559 and legacy EIP-155 transactions, every pair of signers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use cosigner_eth::{TxRequest, U256, Valuation, address_of_point, checksummed};
use cosigner_protocol::wire::WalletId;
use cosigner_tests::ecdsa::{self, SKIP_LINE, TESTER_CHAIN_ID};

const ETH: u128 = 1_000_000_000_000_000_000;
const BOB: &str = "0x000000000000000000000000000000000000b0b0";
const CAROL: &str = "0x00000000000000000000000000000000000ca401";

fn request(json: &str) -> cosigner_eth::UnsignedTx {
    TxRequest::from_json(json).unwrap().tx
}

#[test]
fn threshold_signed_transactions_recover_to_the_wallet_and_execute_in_the_evm() {
    if !ecdsa::python_available() {
        println!("{SKIP_LINE}");
        return;
    }
    let outputs = ecdsa::dkg(WalletId([1; 16]), 2, 3).unwrap();
    let address = checksummed(&address_of_point(&outputs[0].public_key).unwrap());
    let [a, b, c] = [&outputs[0].key, &outputs[1].key, &outputs[2].key];
    let chain = TESTER_CHAIN_ID;
    let txs = [
        // Device and provider: the everyday pair. 5 ETH to Bob, EIP-1559.
        (
            vec![a, b],
            request(&format!(
                r#"{{"type":"0x2","chainId":{chain},"nonce":"0x0","to":"{BOB}","value":"{}",
                "gas":"0x5208","maxFeePerGas":"0x77359400","maxPriorityFeePerGas":"0x3b9aca00"}}"#,
                5 * ETH
            )),
        ),
        // Device and recovery cosigner: 1 ETH to Carol, EIP-1559.
        (
            vec![a, c],
            request(&format!(
                r#"{{"chainId":{chain},"nonce":1,"to":"{CAROL}","value":"{}",
                "gas":21000,"maxFeePerGas":"2000000000","maxPriorityFeePerGas":"1000000000"}}"#,
                ETH
            )),
        ),
        // Provider and recovery cosigner, a legacy EIP-155 transaction: 2 ETH to Bob.
        (
            vec![b, c],
            request(&format!(
                r#"{{"chainId":"{chain:#x}","nonce":"0x2","to":"{BOB}","value":"{}","gas":"0x5208","gasPrice":"0x77359400"}}"#,
                2 * ETH
            )),
        ),
    ];
    let mut signed = Vec::new();
    for (keys, tx) in txs {
        let valuation = Valuation::of(&tx).unwrap();
        assert_eq!(valuation.chain_id, chain);
        signed.push(ecdsa::sign_tx(&keys, tx).unwrap());
    }
    let report = ecdsa::run_in_evm(&address, 100 * ETH, &signed).unwrap();
    assert_eq!(
        report.senders,
        vec![address.clone(); 3],
        "eth-account recovers the wallet's address"
    );
    assert_eq!(
        report.receipts,
        vec![1, 1, 1],
        "py-evm executed every transaction"
    );
    let balance =
        |who: &str| U256::from_str_radix(&report.balances[&who.to_lowercase()], 10).unwrap();
    assert_eq!(balance(BOB), U256::from(7 * ETH));
    assert_eq!(balance(CAROL), U256::from(ETH));
    // What left the wallet: 8 ETH and three 21000-gas fees, each at most gas × max fee.
    let spent = U256::from(100 * ETH) - balance(&address);
    assert!(
        spent > U256::from(8 * ETH)
            && spent <= U256::from(8 * ETH + 3 * 21_000 * 2_000_000_000u128)
    );
}

#[test]
fn a_transaction_altered_after_signing_no_longer_comes_from_the_wallet() {
    if !ecdsa::python_available() {
        println!("{SKIP_LINE}");
        return;
    }
    let outputs = ecdsa::dkg(WalletId([2; 16]), 2, 3).unwrap();
    let address = checksummed(&address_of_point(&outputs[0].public_key).unwrap());
    let with_value = |wei: u8| {
        request(&format!(
            r#"{{"chainId":{TESTER_CHAIN_ID},"nonce":0,"to":"{BOB}","value":"{wei}","gas":21000,"gasPrice":"1000000000"}}"#
        ))
    };
    let signature = ecdsa::sign(
        &[&outputs[0].key, &outputs[1].key],
        with_value(1).signing_hash(),
    )
    .unwrap();
    let honest = with_value(1).into_signed(&signature).unwrap();
    // The same signature on the transaction with 2 wei instead of 1.
    let altered = with_value(2).into_signed(&signature).unwrap();
    let report = ecdsa::run_in_evm(&address, ETH, &[honest]).unwrap();
    assert_eq!(report.senders, vec![address.clone()]);
    let recovered = std::process::Command::new("python3")
        .args(["-c", "import sys; from eth_account import Account; print(Account.recover_transaction(sys.argv[1]))"])
        .arg(format!("0x{}", hex::encode(&altered.raw)))
        .output()
        .unwrap();
    let sender = String::from_utf8_lossy(&recovered.stdout)
        .trim()
        .to_string();
    assert_ne!(
        sender, address,
        "an altered transaction recovers to another account (or none)"
    );
}
