//! The operator commands beside `serve`: `status`, `drain`, `mirror`, `pins`, `cluster up`, and the
//! HTTP/3 client of `h3-get`. They talk to nodes over HTTP; none of them runs a node.

pub mod cluster_up;
#[cfg(feature = "http3")]
pub mod h3_client;
pub mod operator;
pub mod pins;
pub mod status;
