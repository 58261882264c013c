//! smartsignd: the only holder of SmartSign's secrets. It decides each
//! login, verifies codes, keeps state and writes the audit trail; the PAM
//! module and the smartsign command reach it over a Unix socket.

pub mod audit;
pub mod config;
pub mod mail;
pub mod names;
pub mod server;
pub mod service;
pub mod store;
pub mod totp;
