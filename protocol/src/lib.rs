//! cosigner's wire format and IO-free ceremony state machines.
//!
//! Client, parent and enclave share this crate. It has no IO: every ceremony is a function of
//! (state, message) so it runs in memory in tests. The messages and state machines arrive with the
//! end-to-end wallet; what is fixed now is the version they will carry.

/// Version of the wire protocol; every frame will carry it.
pub const PROTOCOL_VERSION: u16 = 1;
