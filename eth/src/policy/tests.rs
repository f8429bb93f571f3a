#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use cosigner_protocol::policy::{Member, parse_members};

use super::*;
use crate::TxRequest;

const DAO_ETH: &str = include_str!("../../../examples/policies/dao-eth.toml");
const PERSONAL_ETH: &str = include_str!("../../../examples/policies/personal-eth.toml");
const DAO_MEMBERS: &str = include_str!("../../../examples/policies/dao-members.toml");
/// The USDC contract the example policies name.
const USDC: &str = "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48";
const BOB: &str = "0x2222222222222222222222222222222222222222";
const ETH: u128 = 1_000_000_000_000_000_000;
/// The fee cap of [`tx`]: 21 000 gas at 1 gwei.
const FEE: u128 = 21_000 * 1_000_000_000;
const NOW: u64 = 1_000 * 3_600_000;

fn members() -> Vec<Member> {
    parse_members(DAO_MEMBERS).unwrap()
}

fn owner() -> Vec<Member> {
    vec![Member {
        name: "owner".into(),
        ..members().remove(0)
    }]
}

/// An EIP-1559 transaction to `to` sending `value` wei with call data `data`.
fn tx(to: &str, value: u128, data: &str) -> Valuation {
    let text = format!(
        r#"{{"type":"0x2","chainId":"0x1","nonce":"0x0","gas":"0x5208","maxFeePerGas":"0x3b9aca00",
            "maxPriorityFeePerGas":"0x1","to":"{to}","value":"0x{value:x}","data":"{data}"}}"#
    );
    Valuation::of(&TxRequest::from_json(&text).unwrap().tx).unwrap()
}

fn transfer(to: &str, amount: u128) -> String {
    format!(
        "0xa9059cbb{:0>64}{amount:064x}",
        to.trim_start_matches("0x")
    )
}

fn verdict(policy: &Policy, v: &Valuation, history: &[PastSpend]) -> String {
    match judge(policy, v, history, NOW) {
        Ok(j) => format!("{}:{}", j.decision.rule, j.decision.approvals),
        Err(denial) => format!("denied: {denial}"),
    }
}

#[test]
fn the_dao_scenario_is_written_as_stated() {
    let p = Policy::parse_for(Chain::Ethereum, DAO_ETH, &members()).unwrap();
    assert_eq!(p.min_approvals(), 3);
    // Value leaving is the ether sent plus the most the fee can cost.
    assert_eq!(verdict(&p, &tx(BOB, 5 * ETH, "0x"), &[]), "small:3");
    assert_eq!(
        verdict(&p, &tx(BOB, 10 * ETH - FEE - 1, "0x"), &[]),
        "small:3"
    );
    assert_eq!(verdict(&p, &tx(BOB, 10 * ETH - FEE, "0x"), &[]), "large:4");
    assert_eq!(verdict(&p, &tx(BOB, 20 * ETH, "0x"), &[]), "large:4");
    assert_eq!(verdict(&p, &tx(BOB, 100 * ETH, "0x"), &[]), "major:5");
    let flows = outflows(&p, &tx(BOB, 5 * ETH, "0x")).unwrap();
    assert_eq!(
        flows,
        [Outflow {
            asset: "eth".into(),
            amount: 5 * ETH + FEE,
            fee: FEE,
            destinations: vec![BOB.into()],
            call: None,
        }]
    );
}

#[test]
fn a_token_transfer_is_a_token_spend_and_an_ether_fee() {
    let p = Policy::parse_for(Chain::Ethereum, DAO_ETH, &members()).unwrap();
    let usdc = |n: u128| n * 1_000_000;
    let small = tx(USDC, 0, &transfer(BOB, usdc(24_999)));
    assert_eq!(verdict(&p, &small, &[]), "usdc-small:3");
    let flows = outflows(&p, &small).unwrap();
    assert_eq!(flows.len(), 2);
    assert_eq!((flows[0].asset.as_str(), flows[0].amount), ("eth", FEE));
    assert_eq!(
        flows[0].destinations,
        [USDC],
        "only the fee leaves in ether, to run the token"
    );
    assert_eq!(
        (
            flows[1].asset.as_str(),
            flows[1].amount,
            flows[1].destinations.clone()
        ),
        ("usdc", usdc(24_999), vec![BOB.to_string()])
    );
    // The stricter of the token's and the fee's rules decides.
    let big = tx(USDC, 0, &transfer(BOB, usdc(25_000)));
    assert_eq!(verdict(&p, &big, &[]), "usdc-major:5");
    let with_ether = tx(USDC, 50 * ETH, &transfer(BOB, usdc(1)));
    assert_eq!(verdict(&p, &with_ether, &[]), "large:4");
    // The recipient's address is compared whatever its case.
    let mixed = tx(USDC, 0, &transfer(&BOB.replace('2', "A"), 1));
    assert_eq!(
        outflows(&p, &mixed).unwrap()[1].destinations,
        [BOB.replace('2', "a")]
    );
}

#[test]
fn calls_nobody_can_value_need_a_rule_naming_the_contract() {
    let p = Policy::parse_for(Chain::Ethereum, DAO_ETH, &members()).unwrap();
    let swap = tx(BOB, 0, "0x12345678");
    let denied = verdict(&p, &swap, &[]);
    assert!(
        denied.starts_with("denied: no rule matches: a call of"),
        "{denied}"
    );
    // A token the table does not know is a call nobody valued.
    let other_token = tx(BOB, 0, &transfer(USDC, 1));
    assert!(verdict(&p, &other_token, &[]).starts_with("denied"));
    let allowing = format!(
        r#"{DAO_ETH}
        [[rule]]
        name = "router"
        calls = ["{}"]
        below = "1 ETH"
        approvals = 4
        "#,
        BOB.to_uppercase().replace("0X", "0x")
    );
    let p = Policy::parse_for(Chain::Ethereum, &allowing, &members()).unwrap();
    assert_eq!(verdict(&p, &swap, &[]), "router:4");
    assert!(verdict(&p, &tx(BOB, 2 * ETH, "0x12345678"), &[]).starts_with("denied"));
    // A `calls` rule matches calls only: a plain payment still goes by the amount tiers.
    assert_eq!(verdict(&p, &tx(BOB, ETH, "0x"), &[]), "small:3");
}

#[test]
fn a_personal_daily_limit_counts_ether_and_tokens_apart() {
    let p = Policy::parse_for(Chain::Ethereum, PERSONAL_ETH, &owner()).unwrap();
    let spent = |asset: &str, amount: u128| PastSpend {
        at_ms: NOW - 3_600_000,
        asset: asset.into(),
        amount,
    };
    assert_eq!(verdict(&p, &tx(BOB, ETH - FEE, "0x"), &[]), "daily:1");
    assert!(verdict(&p, &tx(BOB, ETH - FEE + 1, "0x"), &[]).starts_with("denied"));
    let history = [spent("eth", ETH / 2)];
    assert!(verdict(&p, &tx(BOB, ETH / 2, "0x"), &history).starts_with("denied"));
    // Spent USDC does not count against ether, and the other way round.
    let history = [spent("usdc", 2_000_000_000)];
    assert_eq!(verdict(&p, &tx(BOB, ETH / 2, "0x"), &history), "daily:1");
    let pay = tx(USDC, 0, &transfer(BOB, 1));
    assert!(verdict(&p, &pay, &history).starts_with("denied"));
    assert_eq!(
        verdict(&p, &pay, &[spent("eth", ETH - FEE)]),
        "daily-usdc:1"
    );
    assert!(
        verdict(&p, &pay, &[spent("eth", ETH - FEE + 1)]).starts_with("denied"),
        "the fee of a token transfer is ether leaving"
    );
}

#[test]
fn rules_of_different_approvers_on_one_transaction_are_refused() {
    let text = r#"
        [[token]]
        symbol = "USDC"
        address = "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48"
        decimals = 6
        [[rule]]
        name = "gas"
        approvals = 1
        approvers = ["alice"]
        [[rule]]
        name = "usdc"
        asset = "usdc"
        approvals = 1
        approvers = ["bob"]
    "#;
    let p = Policy::parse_for(Chain::Ethereum, text, &members()).unwrap();
    let denied = verdict(&p, &tx(USDC, 0, &transfer(BOB, 1)), &[]);
    assert!(denied.contains("different approvers"), "{denied}");
}

#[test]
fn ethereum_policies_are_refused_where_they_would_mislead() {
    let refused = |text: &str| {
        Policy::parse_for(Chain::Ethereum, text, &members())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| panic!("accepted:\n{text}"))
    };
    let rule = "[[rule]]\nname = \"r\"\napprovals = 3\n";
    // An asset neither ether nor in the table.
    assert!(refused(&format!("{rule}asset = \"dai\"")).contains("neither"));
    // Bitcoin's units on an Ethereum policy.
    assert!(refused("[[rule]]\nname = \"r\"\nbelow = \"1 BTC\"\napprovals = 3").contains("unit"));
    let token = |symbol: &str, address: &str, decimals: u8| {
        format!(
            "[[token]]\nsymbol = \"{symbol}\"\naddress = \"{address}\"\ndecimals = {decimals}\n"
        )
    };
    for bad in [
        token("ETH", USDC, 18),
        token("US DC", USDC, 6),
        token("USDC", "0xa0b8", 6),
        token("USDC", USDC, 37),
        format!("{}{}", token("USDC", USDC, 6), token("usdc", BOB, 6)),
        format!("{}{}", token("USDC", USDC, 6), token("DAI", USDC, 18)),
    ] {
        refused(&format!("{bad}{rule}"));
    }
    // `calls` only on allowing rules, of addresses.
    refused("[[rule]]\nname = \"r\"\ncalls = [\"uniswap\"]\napprovals = 3");
    refused(&format!(
        "[[rule]]\nname = \"d\"\ncalls = [\"{BOB}\"]\ndeny = true\n{rule}"
    ));
    // A token table or calls on a Bitcoin policy.
    assert!(Policy::parse(&format!("{}{rule}", token("USDC", USDC, 6)), &members()).is_err());
    assert!(
        Policy::parse(
            &format!("[[rule]]\nname = \"r\"\ncalls = [\"{BOB}\"]\napprovals = 3"),
            &members()
        )
        .is_err()
    );
    // Amounts with a token's symbol are exact.
    let text = format!(
        "{}[[rule]]\nname = \"u\"\nasset = \"usdc\"\nbelow = \"0.0000001 USDC\"\napprovals = 3",
        token("USDC", USDC, 6)
    );
    assert!(refused(&text).contains("decimals"));
}

#[test]
fn a_table_token_is_valued_or_refused_never_allowed_as_a_call() {
    // `calls` may not name a token of the table.
    let naming_usdc = format!(
        "{DAO_ETH}\n[[rule]]\nname = \"usdc-calls\"\ncalls = [\"{USDC}\"]\napprovals = 5\n"
    );
    assert!(Policy::parse_for(Chain::Ethereum, &naming_usdc, &members()).is_err());
    let p = Policy::parse_for(Chain::Ethereum, DAO_ETH, &members()).unwrap();
    // Any other function of a table token is refused, whatever the rules.
    let other = tx(USDC, 0, "0x12345678");
    let denied = verdict(&p, &other, &[]);
    assert!(denied.contains("cannot be valued"), "{denied}");
    // increaseAllowance grants an allowance: valued like approve, to the spender.
    let usdc = |n: u128| n * 1_000_000;
    let increase = format!(
        "0x39509351{:0>64}{:064x}",
        BOB.trim_start_matches("0x"),
        usdc(30_000)
    );
    assert_eq!(verdict(&p, &tx(USDC, 0, &increase), &[]), "usdc-major:5");
    let flows = outflows(&p, &tx(USDC, 0, &increase)).unwrap();
    assert_eq!(flows[1].destinations, [BOB]);
    // The fee of a token call goes to the token contract.
    assert_eq!(flows[0].destinations, [USDC]);
}

#[test]
fn ethereum_destinations_must_be_addresses() {
    for bad in [
        "vitalik.eth",
        "0x1234",
        "2222222222222222222222222222222222222222",
    ] {
        let text = format!("[[rule]]\nname = \"r\"\ndestinations = [\"{bad}\"]\napprovals = 3");
        assert!(
            Policy::parse_for(Chain::Ethereum, &text, &members()).is_err(),
            "{bad}"
        );
    }
    // A deny rule on some addresses does not catch a token transfer's fee.
    let text = format!(
        "[[token]]\nsymbol = \"USDC\"\naddress = \"{USDC}\"\ndecimals = 6\n\
         [[rule]]\nname = \"blocked\"\ndestinations = [\"{BOB}\"]\ndeny = true\n\
         [[rule]]\nname = \"any\"\napprovals = 1\n\
         [[rule]]\nname = \"usdc\"\nasset = \"usdc\"\napprovals = 1\n"
    );
    let p = Policy::parse_for(Chain::Ethereum, &text, &members()).unwrap();
    let carol = "0x3333333333333333333333333333333333333333";
    assert_eq!(
        verdict(&p, &tx(USDC, 0, &transfer(carol, 1)), &[]),
        "usdc:1"
    );
    assert!(verdict(&p, &tx(BOB, 1, "0x"), &[]).starts_with("denied: rule \"blocked\""));
}

#[test]
fn chain_ids_pin_the_chains_a_policy_spends_on() {
    // The example pins mainnet.
    assert!(DAO_ETH.contains("\nchain_ids = [1]\n"));
    let p = Policy::parse_for(Chain::Ethereum, DAO_ETH, &members()).unwrap();
    assert_eq!(verdict(&p, &tx(BOB, ETH, "0x"), &[]), "small:3");
    let elsewhere = r#"{"type":"0x2","chainId":"0xa","nonce":"0x0","gas":"0x5208",
        "maxFeePerGas":"0x3b9aca00","maxPriorityFeePerGas":"0x1",
        "to":"0x2222222222222222222222222222222222222222","value":"0x1"}"#;
    let v = Valuation::of(&TxRequest::from_json(elsewhere).unwrap().tx).unwrap();
    assert!(verdict(&p, &v, &[]).contains("chain id 10"));
    for bad in ["chain_ids = []", "chain_ids = [0]"] {
        let text = DAO_ETH.replace("chain_ids = [1]", bad);
        assert!(
            Policy::parse_for(Chain::Ethereum, &text, &members()).is_err(),
            "{bad}"
        );
    }
    assert!(
        Policy::parse(
            "chain_ids = [1]\n[[rule]]\nname = \"r\"\napprovals = 1",
            &members()
        )
        .is_err()
    );
}
