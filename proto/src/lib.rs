//! The wire protocol spoken on smartsignd's Unix socket.
//!
//! Every call is one request frame and one response frame (a push keeps
//! its connection for a second call): a 4-byte
//! big-endian length, then that many bytes of JSON, at most [`MAX_FRAME`].
//! The JSON carries the protocol version in `v`. This crate is linked into
//! the PAM module, so it depends on serde, serde_json, libc and zeroize alone.

mod client;
mod frame;
mod message;
mod secret;

pub use client::{Client, ClientError, Session};
pub use frame::{FrameError, MAX_FRAME, read_frame, write_frame};
pub use message::{
    AccountStatus, DenyReason, ErrorKind, LoginContext, NewPhone, PROTOCOL_VERSION, PhoneInfo,
    Request, RequestFrame, Response, ResponseFrame,
};
pub use secret::Secret;

/// Where smartsignd listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/smartsign/smartsignd.sock";
