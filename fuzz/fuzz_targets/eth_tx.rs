//! Any bytes as an Ethereum transaction's signing payload (what `EthSignStart` carries to the
//! enclave) and as an `eth_signTransaction` JSON file (what `sign --eth-tx` reads): errors are fine,
//! panics are not. Whatever decodes is its own canonical encoding and can be valued and judged by
//! a policy with a token table (examples/policies/dao-eth.toml). The same bytes as a signed
//! transaction (what a treasury member opens of the provider's `Signed`): whatever opens is its
//! own canonical encoding once signed again.
#![no_main]

use std::sync::OnceLock;

use cosigner_eth::{SignedTx, TxRequest, UnsignedTx, Valuation};
use cosigner_protocol::policy::{Chain, Policy, parse_members};
use libfuzzer_sys::fuzz_target;

fn policy() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| {
        let members = parse_members(include_str!("../../examples/policies/dao-members.toml"))
            .expect("example members");
        let text = include_str!("../../examples/policies/dao-eth.toml");
        Policy::parse_for(Chain::Ethereum, text, &members).expect("example policy")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(tx) = UnsignedTx::from_signing_payload(data) {
        assert_eq!(tx.signing_payload(), data);
        if let Ok(valued) = Valuation::of(&tx) {
            let _ = cosigner_eth::policy::judge(policy(), &valued, &[], 0);
        }
        let _ = tx.max_fee();
    }
    if let Ok((tx, signature)) = SignedTx::open(data) {
        let signed = tx.into_signed(&signature).expect("an opened signature signs again");
        assert_eq!(signed.raw, data);
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(request) = TxRequest::from_json(text)
    {
        let again = UnsignedTx::from_signing_payload(&request.tx.signing_payload());
        assert_eq!(again.as_ref(), Ok(&request.tx));
    }
});
