//! The node API: HTTPS with JSON on one port ([`DEFAULT_PORT`]), mutual TLS,
//! roles carried in client certificates.
//!
//! This crate owns the contract (endpoints, the role table, wire types), the
//! audit log, and the server. The node-agent implements [`NodeOps`] and runs
//! [`server::serve`]; nodectl uses the same types as a client.

pub mod audit;
pub mod endpoint;
pub mod error;
pub mod server;
pub mod tls;
pub mod types;

pub use endpoint::{Endpoint, Mode};
pub use error::ApiError;
pub use server::NodeOps;

/// The one documented port of the node API.
pub const DEFAULT_PORT: u16 = 50443;
