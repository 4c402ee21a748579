//! Destinations other than the default broker, each against its real server
//! (nats-server with JetStream, redis-server, an HTTP receiver in this
//! binary): every committed row arrives, refused rows are dead-lettered with
//! the reason, a down destination holds back only its own rows.

#[path = "../common/mod.rs"]
mod common;
mod webhook;
