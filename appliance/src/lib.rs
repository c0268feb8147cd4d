//! Host-testable logic of the Resilire appliance.
//!
//! Everything here is plain Rust over `core` + `alloc`: ring index arithmetic,
//! the xenstore wire protocol and client, and the configuration schema. The
//! unikernel (`src/main.rs` and `src/pv/`) adds the parts that need Xen.
//! Test on the host with `cargo test -p resilire-appliance --lib`.
#![cfg_attr(not(test), no_std)]
#![deny(missing_docs)]

extern crate alloc;

pub mod config;
pub mod control;
pub mod frames;
pub mod ring;
pub mod xenstore;
pub mod xs_wire;

/// The appliance's version, as reported in its status.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
