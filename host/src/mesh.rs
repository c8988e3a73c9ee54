//! Mesh security: workload identities (SPIFFE IDs in X.509 certificates), the
//! mesh CA behind `weir ca`, and certificate files that rotate without a
//! restart.
//!
//! The listener ([`crate::listener::tls`]) and the upstream
//! ([`crate::upstream::tls`]) build their rustls configs from these parts;
//! plugins see the verified identities as attributes (`source.principal`,
//! `connection.uri_san_peer_certificate`, ...), read from [`TlsSession`].

pub mod ca;
pub mod identity;
pub mod rotate;
pub mod spiffe;

pub use identity::{CertIdentity, TlsSession};
