//! The Hub contract (hub-api.md): routes, errors, headers, ranges and JSON shapes.
//!
//! Only this module knows the Hub's wire format; the catalog and the store know nothing of it.

pub mod cache;
pub mod conditional;
pub mod error;
pub mod headers;
pub mod json;
pub mod query;
pub mod range;
pub mod route;

pub use cache::CacheStatus;
pub use error::{ErrorSource, HubError};
