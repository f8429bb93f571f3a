//! `cosigner-parent`: the untrusted half on the host.
//!
//! It relays client TCP connections to the enclave (vsock in a Nitro deployment, a unix socket
//! locally) without terminating TLS, and keeps the enclave's sealed blobs. It holds no secret and
//! is trusted for nothing: whatever it changes, drops or replays, the enclave or the client
//! detects.
//!
//! * [`config`]: the TOML configuration ([`Config`]), strict about unknown fields and addresses;
//! * [`store`]: the [`Store`] trait and [`SqliteStore`], where blobs live; [`pg`]: the same and
//!   the mailbox's tables in PostgreSQL (`database = "postgres://…"`);
//! * [`store_server`]: answers the enclave's `StoreRequest` frames on a connection;
//! * [`aws_credentials`]: the AWS credentials handed to the enclave for KMS (IMDSv2, environment,
//!   file);
//! * [`relay`]: copies one client connection's bytes to the enclave and back;
//! * [`mailbox`]: the members' mailbox (signed envelopes, SQLite, its own TCP listener);
//! * [`server`]: [`Parent`] binds both sockets and runs the accept loops ([`RunningParent`]);
//! * [`logging`], [`metrics`], [`http`]: JSON-line logs (the enclave's too), the Prometheus
//!   exposition, and the operator listener serving `/metrics`, `/healthz` and `/readyz`.

pub mod audit;
pub mod aws_credentials;
pub mod config;
pub mod enrollment;
mod error;
mod frames;
pub mod http;
pub mod hybrid_vsock;
pub mod logging;
pub mod mailbox;
pub mod metrics;
pub mod pg;
mod pg_mailbox;
pub mod pool;
pub mod proxy;
pub mod relay;
pub mod server;
pub mod store;
pub mod store_server;

pub use config::{Config, EnclaveAddr};
pub use error::{ParentError, Result};
pub use server::{Parent, RunningParent};
pub use store::{SqliteStore, Store};
