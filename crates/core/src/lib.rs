//! Tollgate's domain core: the rules every service shares, with no I/O.
//!
//! Key format and hashing, resource names and ids, field validation, rate-limit defaults and
//! caps, IP allowlists, capabilities and money arithmetic live here so that the keys, authz
//! and metering services agree on them by construction.

pub mod capability;
pub mod clock;
pub mod counters;
pub mod ids;
pub mod ip_allowlist;
pub mod key_format;
pub mod limits;
pub mod money;
pub mod names;
pub mod page_token;
pub mod resources;
pub mod secret_hash;
pub mod throttle;
pub mod time;
pub mod validation;
pub mod windows;

pub use capability::Capability;
pub use secret_hash::{KeyPepper, SecretHash};
pub use validation::{FieldViolation, Violations};
