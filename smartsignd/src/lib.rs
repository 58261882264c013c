//! smartsignd: the only holder of SmartSign's secrets. It decides each
//! login, verifies codes, keeps state and writes the audit trail; the PAM
//! module and the smartsign command reach it over a Unix socket.

/// A line on the daemon's stderr, prefixed `smartsignd: `. A closed or
/// broken stderr loses the line; it never stops the daemon (eprintln! would
/// panic).
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), "smartsignd: {}", format_args!($($arg)*));
    }};
}

pub mod audit;
pub mod backup;
pub mod cli;
pub mod config;
pub mod mail;
pub mod names;
pub mod policy;
pub mod push;
pub mod server;
pub mod service;
pub mod store;
pub mod totp;
