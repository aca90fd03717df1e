//! What `medgemmad` and `medgemmactl` must agree on, in one place: the
//! configuration schema with its defaults, limits and checks
//! ([`config`]), the status documents as types ([`status`]), the pins file
//! ([`pins`]), the admin socket's routes and bodies ([`admin`]), the
//! accounts file and its hashing ([`accounts`]), the terminology store
//! ([`terms`]) and the well-known paths of an installed appliance
//! ([`paths`]).
//!
//! The daemon serialises these types and `medgemmactl` deserialises the same
//! ones, so a renamed key fails to compile instead of printing `-`.
//!
//! Owns: the contracts between the two programs. Must never: depend on the
//! model, the sandbox or the server (it is the lowest room), or carry
//! patient text (no document here has a field for it).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod accounts;
pub mod admin;
pub mod config;
pub mod paths;
pub mod pins;
pub mod status;
pub mod terms;
