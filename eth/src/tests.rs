//! Vectors from the EIPs themselves, and the refusals a signer owes its policy.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use alloy_primitives::{Address, U256};

use crate::{
    Call, Erc20, EthError, RecoverableSignature, SignedTx, TxRequest, UnsignedTx, Valuation,
};

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s.trim_start_matches("0x")).unwrap()
}

fn array(s: &str) -> [u8; 32] {
    unhex(s).try_into().unwrap()
}

/// EIP-155 §"Example": the signing data, its hash, and the signed transaction for chain 1.
const EIP155_SIGNING_DATA: &str =
    "ec098504a817c800825208943535353535353535353535353535353535353535880de0b6b3a764000080018080";
const EIP155_SIGNING_HASH: &str =
    "daf5a779ae972f972197303d7b574746c7ef83eadac0f2791ad23db92e4c8e53";
const EIP155_SIGNED: &str = "f86c098504a817c800825208943535353535353535353535353535353535353535880de0b6b3a76400008025a028ef61340bd939bc2195fe537567866003e1a15d3c71ff63e1590620aa636276a067cbe9d8997f761aecb703304b3800ccf555c9f3dc64214b297fb1966a3b6d83";

#[test]
fn eip155_example_round_trips_byte_for_byte() {
    let tx = UnsignedTx::from_signing_payload(&unhex(EIP155_SIGNING_DATA)).unwrap();
    assert_eq!(tx.chain_id(), 1);
    assert_eq!(tx.nonce(), 9);
    assert_eq!(tx.value(), U256::from(10u128.pow(18)));
    assert_eq!(tx.max_fee(), U256::from(21_000u64 * 20_000_000_000));
    assert_eq!(tx.signing_hash(), array(EIP155_SIGNING_HASH));
    let signature = RecoverableSignature {
        r: array("28ef61340bd939bc2195fe537567866003e1a15d3c71ff63e1590620aa636276"),
        s: array("67cbe9d8997f761aecb703304b3800ccf555c9f3dc64214b297fb1966a3b6d83"),
        // v = 37 = 35 + 2·1 + 0.
        y_parity: false,
    };
    let signed = tx.clone().into_signed(&signature).unwrap();
    assert_eq!(hex::encode(&signed.raw), EIP155_SIGNED);
    assert_eq!(
        signed.hash,
        alloy_primitives::keccak256(unhex(EIP155_SIGNED)).0
    );
    // What a treasury member opens of the provider's `Signed`: the same transaction and
    // signature; a byte more, a byte less, or another type is refused.
    assert_eq!(SignedTx::open(&signed.raw), Ok((tx, signature)));
    let mut longer = signed.raw.clone();
    longer.push(0);
    assert!(SignedTx::open(&longer).is_err());
    assert!(SignedTx::open(&signed.raw[..signed.raw.len() - 1]).is_err());
    assert!(SignedTx::open(&[0x01, 0xc0]).is_err());
    assert!(SignedTx::open(&[]).is_err());
}

#[test]
fn the_same_transaction_from_json_has_the_same_signing_data() {
    let request = TxRequest::from_json(
        r#"{"chainId":"0x1","nonce":9,"gasPrice":"20000000000","gas":"0x5208",
            "to":"0x3535353535353535353535353535353535353535","value":"0xde0b6b3a7640000"}"#,
    )
    .unwrap();
    assert_eq!(
        hex::encode(request.tx.signing_payload()),
        EIP155_SIGNING_DATA
    );
    assert_eq!(request.from, None);
}

#[test]
fn non_canonical_payloads_are_refused() {
    let mut payload = unhex(EIP155_SIGNING_DATA);
    // EIP-155's two trailing fields must be empty (0x80); alloy's decoder tolerates other values.
    let last = payload.len() - 1;
    payload[last] = 0x01;
    assert_eq!(
        UnsignedTx::from_signing_payload(&payload),
        Err(EthError::NotCanonical)
    );
    // A legacy transaction without a chain id (pre-EIP-155, replayable on every chain).
    let pre155 = unhex(
        "e9098504a817c800825208943535353535353535353535353535353535353535880de0b6b3a764000080",
    );
    assert_eq!(
        UnsignedTx::from_signing_payload(&pre155),
        Err(EthError::NoChainId)
    );
    // Trailing bytes after the transaction.
    let mut long = unhex(EIP155_SIGNING_DATA);
    long.push(0);
    assert!(UnsignedTx::from_signing_payload(&long).is_err());
    // Other EIP-2718 types.
    for ty in [0x01u8, 0x03, 0x04, 0x7f] {
        assert_eq!(
            UnsignedTx::from_signing_payload(&[ty, 0xc0]),
            Err(EthError::UnsupportedType { ty })
        );
    }
    assert!(matches!(
        UnsignedTx::from_signing_payload(&[]),
        Err(EthError::Encoding { .. })
    ));
}

fn eip1559(json_extra: &str) -> UnsignedTx {
    let text = format!(
        r#"{{"type":"0x2","chainId":"0x7763","nonce":"0x0","gas":"0x186a0","maxFeePerGas":"0x3b9aca00",
            "maxPriorityFeePerGas":"0x1","to":"0x1111111111111111111111111111111111111111"{json_extra}}}"#
    );
    TxRequest::from_json(&text).unwrap().tx
}

#[test]
fn an_eip1559_transaction_round_trips_through_its_signing_payload() {
    let tx = eip1559(r#","value":"1000""#);
    let payload = tx.signing_payload();
    assert_eq!(payload[0], 0x02);
    assert_eq!(UnsignedTx::from_signing_payload(&payload).unwrap(), tx);
    assert_eq!(tx.max_fee(), U256::from(100_000u64 * 1_000_000_000));
}

fn word_of(address: &str) -> String {
    format!("{:0>64}", address.trim_start_matches("0x"))
}

#[test]
fn erc20_calls_are_valued_by_token() {
    let token: Address = "0x1111111111111111111111111111111111111111"
        .parse()
        .unwrap();
    let bob = "0x2222222222222222222222222222222222222222";
    let amount = format!("{:064x}", 500_000_000u64);
    let transfer = eip1559(&format!(r#","data":"0xa9059cbb{}{amount}""#, word_of(bob)));
    let valued = Valuation::of(&transfer).unwrap();
    assert_eq!(valued.value, U256::ZERO);
    assert_eq!(
        valued.call,
        Call::Erc20 {
            token,
            op: Erc20::Transfer {
                to: bob.parse().unwrap(),
                amount: U256::from(500_000_000u64)
            }
        }
    );
    let approve = eip1559(&format!(r#","data":"0x095ea7b3{}{amount}""#, word_of(bob)));
    assert!(matches!(
        Valuation::of(&approve).unwrap().call,
        Call::Erc20 {
            op: Erc20::Approve { .. },
            ..
        }
    ));
    let from = eip1559(&format!(
        r#","data":"0x23b872dd{}{}{amount}""#,
        word_of(bob),
        word_of(bob)
    ));
    assert!(matches!(
        Valuation::of(&from).unwrap().call,
        Call::Erc20 {
            op: Erc20::TransferFrom { .. },
            ..
        }
    ));
}

#[test]
fn erc20_calls_that_a_token_could_read_another_way_are_refused() {
    let amount = format!("{:064x}", 1u64);
    let dirty = format!(
        "ff{}",
        &word_of("0x2222222222222222222222222222222222222222")[2..]
    );
    for data in [
        format!("0xa9059cbb{dirty}{amount}"),
        format!("0xa9059cbb{}", word_of("0x22")),
        format!("0xa9059cbb{}{amount}00", word_of("0x22")),
    ] {
        let tx = eip1559(&format!(r#","data":"{data}""#));
        assert!(
            matches!(Valuation::of(&tx), Err(EthError::Erc20 { .. })),
            "{data}"
        );
    }
    let unknown = eip1559(r#","data":"0xdeadbeef00""#);
    assert_eq!(
        Valuation::of(&unknown).unwrap().call,
        Call::Unknown {
            selector: Some([0xde, 0xad, 0xbe, 0xef])
        }
    );
    assert_eq!(Valuation::of(&eip1559("")).unwrap().call, Call::None);
}

#[test]
fn requests_are_read_strictly() {
    let base = r#""chainId":"0x1","nonce":"0x0","gas":"0x5208","to":"0x3535353535353535353535353535353535353535""#;
    for (extra, field) in [
        (r#","gasPrice":"0x1","maxFeePerGas":"0x1""#, "gasPrice"),
        (r#","type":"0x2","gasPrice":"0x1""#, "gasPrice"),
        (r#","type":"0x1","gasPrice":"0x1""#, "type"),
        (r#","gasPrice":"-1""#, "gasPrice"),
        (r#","gasPrice":"0x""#, "gasPrice"),
        (r#","gasPrice":"0x1","gasLimit":"0x5209""#, "gasLimit"),
        (r#","gasPrice":"0x1","data":"0x00","input":"0x01""#, "input"),
        (
            r#","gasPrice":"0x1","accessList":[{"address":"0x3535353535353535353535353535353535353535","storageKeys":[]}]"#,
            "accessList",
        ),
        (r#","gasPrice":"0x1","surprise":1"#, "(document)"),
        (r#","gasPrice":"0x1","from":"0x35353535""#, "from"),
        (r#""#, "gasPrice"),
    ] {
        let text = format!("{{{base}{extra}}}");
        match TxRequest::from_json(&text) {
            Err(EthError::Field { field: got, .. }) => assert_eq!(got, field, "{text}"),
            other => panic!("{text}: {other:?}"),
        }
    }
    // A mixed-case address must carry its EIP-55 checksum (the EIP's own example, one letter flipped).
    let good = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed";
    let flipped = "0x5AAeb6053F3E94C9b9A09f33669435E7Ef1BeAed";
    let with_to =
        |to: &str| format!(r#"{{"chainId":1,"nonce":0,"gas":21000,"gasPrice":1,"to":"{to}"}}"#);
    assert!(TxRequest::from_json(&with_to(good)).is_ok());
    assert!(matches!(
        TxRequest::from_json(&with_to(flipped)),
        Err(EthError::Field { field: "to", .. })
    ));
}

#[test]
fn high_s_and_zero_signatures_are_refused() {
    let tx = UnsignedTx::from_signing_payload(&unhex(EIP155_SIGNING_DATA)).unwrap();
    let high = RecoverableSignature {
        r: [1; 32],
        s: [0xff; 32],
        y_parity: false,
    };
    assert!(matches!(
        tx.clone().into_signed(&high),
        Err(EthError::Signature { .. })
    ));
    let zero = RecoverableSignature {
        r: [0; 32],
        s: [1; 32],
        y_parity: false,
    };
    assert!(matches!(
        tx.into_signed(&zero),
        Err(EthError::Signature { .. })
    ));
}

#[test]
fn addresses_carry_the_eip55_checksum() {
    // The address of the EIP-155 example's key 0x4646…46.
    let address: Address = "0x9d8a62f656a8d1615c1294fd71e9cfb3e4855a4f"
        .parse()
        .unwrap();
    assert_eq!(
        crate::checksummed(&address),
        "0x9d8A62f656a8d1615C1294fd71e9CFb3E4855A4F"
    );
}
