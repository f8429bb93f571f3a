//! Any bytes as an Ethereum transaction's signing payload (what `EthSignStart` carries to the
//! enclave) and as an `eth_signTransaction` JSON file (what `sign --eth-tx` reads): errors are fine,
//! panics are not. Whatever decodes is its own canonical encoding and can be valued.
#![no_main]

use cosigner_eth::{TxRequest, UnsignedTx, Valuation};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(tx) = UnsignedTx::from_signing_payload(data) {
        assert_eq!(tx.signing_payload(), data);
        let _ = Valuation::of(&tx);
        let _ = tx.max_fee();
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(request) = TxRequest::from_json(text)
    {
        let again = UnsignedTx::from_signing_payload(&request.tx.signing_payload());
        assert_eq!(again.as_ref(), Ok(&request.tx));
    }
});
