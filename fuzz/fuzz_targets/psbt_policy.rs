//! Any bytes into the transaction and policy readers the enclave runs on untrusted input:
//! `psbt::decode_psbt_file` then `psbt::analyze` (as a file and as a raw PSBT, against a wallet's
//! own key and its children), the descriptors `cosigner-hwi displayaddress` reads, the policy and
//! members parsers (Bitcoin and Ethereum policies), and the DAO message decoder. Errors are fine, panics are not.
#![no_main]

use cosigner_protocol::dao::DaoMessage;
use cosigner_protocol::hd::WalletXpub;
use cosigner_protocol::policy::{Chain, Member, Policy, parse_members};
use cosigner_protocol::psbt::{Network, OwnKeys, analyze, decode_psbt_file};
use cosigner_protocol::wire::WalletId;
use libfuzzer_sys::fuzz_target;

// A valid x-only key (the secp256k1 generator's x), as the wallet's output key.
const KEY: [u8; 32] = [
    0x79, 0xbe, 0x66, 0x7e, 0xf9, 0xdc, 0xbb, 0xac, 0x55, 0xa0, 0x62, 0x95, 0xce, 0x87, 0x0b, 0x07,
    0x02, 0x9b, 0xfc, 0xdb, 0x2d, 0xce, 0x28, 0xd9, 0x59, 0xf2, 0x81, 0x5b, 0x16, 0xf8, 0x17, 0x98,
];

fuzz_target!(|data: &[u8]| {
    // The wallet's own key and its children (labels naming children are checked by derivation).
    let mut group_key = vec![0x02];
    group_key.extend_from_slice(&KEY);
    let Ok(keys) = OwnKeys::of_wallet(&WalletId([7; 16]), &group_key) else {
        return;
    };
    if let Ok(psbt) = decode_psbt_file(data) {
        let _ = analyze(&psbt, &keys, Network::Regtest);
    }
    let _ = analyze(data, &keys, Network::Regtest);
    if let Ok(text) = std::str::from_utf8(data) {
        // What Bitcoin Core hands `cosigner-hwi displayaddress --desc`.
        if let Ok(xpub) = WalletXpub::new(&WalletId([7; 16]), &group_key, false) {
            let _ = xpub.child_of_descriptor(text);
        }
        let _ = parse_members(text);
        let owner = Member {
            name: "owner".into(),
            device_key: vec![
                0x03, 0x6b, 0x17, 0xd1, 0xf2, 0xe1, 0x2c, 0x42, 0x47, 0xf8, 0xbc, 0xe6, 0xe5, 0x63,
                0xa4, 0x40, 0xf2, 0x77, 0x03, 0x7d, 0x81, 0x2d, 0xeb, 0x33, 0xa0, 0xf4, 0xa1, 0x39,
                0x45, 0xd8, 0x98, 0xc2, 0x96,
            ],
        };
        let _ = Policy::parse(text, std::slice::from_ref(&owner));
        let _ = Policy::parse_for(Chain::Ethereum, text, &[owner]);
    }
    if let Ok(message) = DaoMessage::decode(data) {
        let again = DaoMessage::decode(&message.encode().expect("re-encodes")).expect("decodes");
        assert_eq!(again, message);
    }
});
