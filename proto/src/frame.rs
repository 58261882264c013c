//! Length-prefixed JSON frames with one deadline for the whole exchange.
//!
//! A frame is a 4-byte big-endian length and that many bytes of JSON. Every
//! read and write re-arms the socket timeout with the time left until the
//! deadline, so a peer that trickles bytes cannot stretch a call past it.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::PROTOCOL_VERSION;

/// The largest frame either side sends or accepts.
pub const MAX_FRAME: usize = 64 * 1024;

#[derive(Debug)]
pub enum FrameError {
    /// The deadline passed before the frame was complete.
    Timeout,
    /// The peer closed the connection before sending anything.
    Closed,
    /// The peer closed the connection in the middle of a frame.
    Truncated,
    TooLarge(usize),
    /// The bytes are not a frame of ours.
    Malformed(String),
    UnsupportedVersion(u32),
    Io(io::Error),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Timeout => f.write_str("timed out"),
            FrameError::Closed => f.write_str("connection closed"),
            FrameError::Truncated => f.write_str("connection closed in the middle of a frame"),
            FrameError::TooLarge(len) => {
                write!(f, "frame of {len} bytes is over the limit of {MAX_FRAME}")
            }
            FrameError::Malformed(why) => write!(f, "malformed frame: {why}"),
            FrameError::UnsupportedVersion(v) => {
                write!(
                    f,
                    "protocol version {v} is not supported (this side speaks {PROTOCOL_VERSION})"
                )
            }
            FrameError::Io(err) => write!(f, "{err}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Serializes `value` and sends it as one frame before `deadline`.
pub fn write_frame<T: Serialize>(
    stream: &mut UnixStream,
    value: &T,
    deadline: Instant,
) -> Result<(), FrameError> {
    let body = Zeroizing::new(
        serde_json::to_vec(value).map_err(|err| FrameError::Malformed(err.to_string()))?,
    );
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(body.len()));
    }

    let mut frame = Zeroizing::new(Vec::with_capacity(4 + body.len()));
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);

    let mut sent = 0;
    while sent < frame.len() {
        stream
            .set_write_timeout(Some(time_left(deadline)?))
            .map_err(FrameError::Io)?;
        match stream.write(&frame[sent..]) {
            Ok(0) => return Err(FrameError::Closed),
            Ok(n) => sent += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(io_error(err)),
        }
    }
    Ok(())
}

/// Receives one frame before `deadline`, checks its version and parses it.
pub fn read_frame<T: DeserializeOwned>(
    stream: &mut UnixStream,
    deadline: Instant,
) -> Result<T, FrameError> {
    let mut header = [0u8; 4];
    match read_full(stream, &mut header, deadline) {
        Ok(()) => {}
        Err(FrameError::Truncated) => return Err(FrameError::Closed),
        Err(err) => return Err(err),
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    if len == 0 {
        return Err(FrameError::Malformed("empty frame".into()));
    }

    let mut body = Zeroizing::new(vec![0u8; len]);
    read_full(stream, &mut body, deadline).map_err(|err| match err {
        FrameError::Closed => FrameError::Truncated,
        other => other,
    })?;
    parse(&body)
}

/// Parses a frame body: the version first, so that a frame of another
/// version gets a clear answer even when its shape has changed.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    #[derive(serde::Deserialize)]
    struct Version {
        v: u32,
    }

    let version: Version =
        serde_json::from_slice(body).map_err(|err| FrameError::Malformed(err.to_string()))?;
    if version.v != PROTOCOL_VERSION {
        return Err(FrameError::UnsupportedVersion(version.v));
    }
    serde_json::from_slice(body).map_err(|err| FrameError::Malformed(err.to_string()))
}

fn read_full(stream: &mut UnixStream, buf: &mut [u8], deadline: Instant) -> Result<(), FrameError> {
    let mut filled = 0;
    while filled < buf.len() {
        stream
            .set_read_timeout(Some(time_left(deadline)?))
            .map_err(FrameError::Io)?;
        match stream.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(io_error(err)),
        }
    }
    Ok(())
}

/// The time until `deadline`; a zero timeout would mean "block forever" to
/// the socket, so an expired deadline is an error instead.
fn time_left(deadline: Instant) -> Result<Duration, FrameError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(FrameError::Timeout)
    } else {
        Ok(left)
    }
}

fn io_error(err: io::Error) -> FrameError {
    match err.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => FrameError::Timeout,
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => FrameError::Closed,
        _ => FrameError::Io(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Request, RequestFrame};

    fn soon() -> Instant {
        Instant::now() + Duration::from_millis(300)
    }

    fn read_request(bytes: &[u8]) -> Result<RequestFrame, FrameError> {
        let (mut client, mut server) = UnixStream::pair().unwrap();
        client.write_all(bytes).unwrap();
        drop(client);
        read_frame(&mut server, soon())
    }

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(body);
        bytes
    }

    #[test]
    fn round_trip() {
        let (mut client, mut server) = UnixStream::pair().unwrap();
        let sent = RequestFrame {
            v: 1,
            request: Request::Status { user: None },
        };
        write_frame(&mut client, &sent, soon()).unwrap();
        let got: RequestFrame = read_frame(&mut server, soon()).unwrap();
        assert_eq!(got.request, sent.request);
    }

    #[test]
    fn oversized_length_is_refused_before_reading_the_body() {
        let err = read_request(&u32::MAX.to_be_bytes()).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge(len) if len == u32::MAX as usize));
        let err = read_request(&((MAX_FRAME + 1) as u32).to_be_bytes()).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge(_)));
    }

    #[test]
    fn oversized_value_is_not_sent() {
        let (mut client, _server) = UnixStream::pair().unwrap();
        let big = Request::PhoneAdd {
            user: None,
            name: "x".repeat(MAX_FRAME),
            code: None,
        };
        let err = write_frame(&mut client, &RequestFrame { v: 1, request: big }, soon());
        assert!(matches!(err, Err(FrameError::TooLarge(_))));
    }

    #[test]
    fn truncated_frames_are_errors() {
        assert!(matches!(read_request(&[]), Err(FrameError::Closed)));
        assert!(matches!(read_request(&[0, 0]), Err(FrameError::Closed)));
        let mut short = framed(br#"{"v":1,"request":{"op":"status","user":null}}"#);
        short.truncate(short.len() - 3);
        assert!(matches!(read_request(&short), Err(FrameError::Truncated)));
    }

    #[test]
    fn garbage_is_malformed() {
        for body in [
            &b"\xff\xfe\x00garbage"[..],
            b"{}",
            b"[1,2,3]",
            b"{\"v\":1}",
            b"{\"v\":1,\"request\":{\"op\":\"format_disk\"}}",
            b"{\"v\":1,\"request\":{\"op\":\"status\",\"user\":\"a\0b\"",
        ] {
            let err = read_request(&framed(body)).unwrap_err();
            assert!(matches!(err, FrameError::Malformed(_)), "{body:?}: {err}");
        }
        assert!(matches!(
            read_request(&[0, 0, 0, 0]),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn other_versions_are_named() {
        let err = read_request(&framed(br#"{"v":2,"request":{"op":"new_op"}}"#)).unwrap_err();
        assert!(matches!(err, FrameError::UnsupportedVersion(2)));
    }

    #[test]
    fn a_silent_peer_times_out_at_the_deadline() {
        let (_client, mut server) = UnixStream::pair().unwrap();
        let started = Instant::now();
        let err = read_frame::<RequestFrame>(&mut server, started + Duration::from_millis(200));
        assert!(matches!(err, Err(FrameError::Timeout)));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn a_trickling_peer_cannot_stretch_the_deadline() {
        let (mut client, mut server) = UnixStream::pair().unwrap();
        let trickle = std::thread::spawn(move || {
            // A header promising 100 bytes, then one byte every 50 ms.
            let _ = client.write_all(&100u32.to_be_bytes());
            for _ in 0..40 {
                if client.write_all(b" ").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let started = Instant::now();
        let err = read_frame::<RequestFrame>(&mut server, started + Duration::from_millis(300));
        assert!(matches!(err, Err(FrameError::Timeout)));
        assert!(started.elapsed() < Duration::from_millis(1500));
        drop(server);
        trickle.join().unwrap();
    }
}
