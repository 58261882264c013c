//! RFC 6238 codes as every authenticator app shows them by default:
//! HMAC-SHA-1, 6 digits, 30-second steps. The arithmetic is totp-rs's;
//! what is ours is the window, and refusing a step that was already used.

use totp_rs::{Algorithm, Builder, Secret, Totp};
use zeroize::Zeroizing;

pub const DIGITS: usize = 6;
pub const STEP_SECS: u64 = 30;
/// 160 bits, as RFC 4226 recommends.
const SECRET_BYTES: usize = 20;

/// A new secret from the OS random source, base32 as apps expect it.
pub fn generate_secret() -> Result<Zeroizing<String>, getrandom::Error> {
    let mut bytes = Zeroizing::new([0u8; SECRET_BYTES]);
    getrandom::fill(bytes.as_mut())?;
    let secret = Secret::new_stack(*bytes);
    Ok(Zeroizing::new(secret.to_base32()))
}

/// How a typed code relates to one phone's secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeMatch {
    /// Matches a step newer than any used before: accept, and claim the step.
    Fresh(u64),
    /// Matches only a step already used, or older: a replay.
    Used,
    NoMatch,
}

/// Checks `code` against `secret` at `now` (Unix seconds), `skew` steps either
/// side, refusing steps up to and including `last_step`. Every step in the
/// window is computed and compared in constant time, matching or not.
pub fn check(secret_b32: &str, code: &str, now: u64, skew: u8, last_step: u64) -> CodeMatch {
    let Some(totp) = totp(secret_b32, "") else {
        return CodeMatch::NoMatch;
    };
    let current = now / STEP_SECS;
    let mut newest = None;
    for step in current.saturating_sub(skew.into())..=current + u64::from(skew) {
        if totp.check(code, step * STEP_SECS).is_some() {
            newest = Some(step);
        }
    }
    match newest {
        Some(step) if step > last_step => CodeMatch::Fresh(step),
        Some(_) => CodeMatch::Used,
        None => CodeMatch::NoMatch,
    }
}

/// The code an app shows at `unix` (for benchmarks and tools).
pub fn code_at(secret_b32: &str, unix: u64) -> Option<String> {
    Some(totp(secret_b32, "")?.generate(unix).to_string())
}

/// The `otpauth://` URI that an app scans to add the account.
pub fn otpauth_uri(secret_b32: &str, account: &str) -> Option<Zeroizing<String>> {
    let totp = totp(secret_b32, account)?;
    totp.to_url().ok().map(Zeroizing::new)
}

fn totp(secret_b32: &str, account: &str) -> Option<Totp> {
    let secret = Secret::try_from_base32(secret_b32).ok()?;
    let mut builder = Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(DIGITS as u8)
        .with_step_duration(STEP_SECS)
        .with_skew(0)
        .with_secret(secret);
    if !account.is_empty() {
        builder = builder
            .with_issuer(Some("SmartSign"))
            .with_account_name(account);
    }
    builder.build().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-1: the ASCII secret "12345678901234567890".
    const RFC_SECRET: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
    const RFC_VECTORS: [(u64, &str); 6] = [
        (59, "94287082"),
        (1_111_111_109, "07081804"),
        (1_111_111_111, "14050471"),
        (1_234_567_890, "89005924"),
        (2_000_000_000, "69279037"),
        (20_000_000_000, "65353130"),
    ];

    #[test]
    fn rfc6238_vectors() {
        for (time, eight) in RFC_VECTORS {
            let totp8 = Builder::new()
                .with_algorithm(Algorithm::SHA1)
                .with_digits(8)
                .with_skew(0)
                .with_secret(Secret::try_from_base32(RFC_SECRET).unwrap())
                .build()
                .unwrap();
            assert_eq!(totp8.generate(time).to_string(), eight, "t={time}");
            // Six digits are the last six of eight (both are the value mod 10^n).
            let six = &eight[2..];
            assert_eq!(
                check(RFC_SECRET, six, time, 0, 0),
                CodeMatch::Fresh(time / 30),
                "t={time}"
            );
        }
    }

    #[test]
    fn window_and_replay() {
        let (time, six) = (1_111_111_109, "081804");
        let step = time / 30;
        // One step of skew accepts the code from the next or previous step.
        assert_eq!(
            check(RFC_SECRET, six, time + 30, 1, 0),
            CodeMatch::Fresh(step)
        );
        assert_eq!(
            check(RFC_SECRET, six, time - 30, 1, 0),
            CodeMatch::Fresh(step)
        );
        assert_eq!(check(RFC_SECRET, six, time + 60, 1, 0), CodeMatch::NoMatch);
        assert_eq!(check(RFC_SECRET, six, time + 30, 0, 0), CodeMatch::NoMatch);
        // Once its step is used, the code and every older one are refused.
        assert_eq!(check(RFC_SECRET, six, time, 1, step), CodeMatch::Used);
        assert_eq!(check(RFC_SECRET, six, time, 1, step + 1), CodeMatch::Used);
        assert_eq!(
            check(RFC_SECRET, six, time, 1, step - 1),
            CodeMatch::Fresh(step)
        );
    }

    #[test]
    fn malformed_codes_never_match() {
        for code in [
            "",
            "08180",
            "0818044",
            "+81804",
            " 81804",
            "08l804",
            "０８１８０４",
            "081804\0",
        ] {
            assert_eq!(
                check(RFC_SECRET, code, 1_111_111_109, 1, 0),
                CodeMatch::NoMatch,
                "{code:?}"
            );
        }
        assert_eq!(
            check("not base32!", "081804", 1_111_111_109, 1, 0),
            CodeMatch::NoMatch
        );
    }

    #[test]
    fn new_secrets_are_160_bits_and_distinct() {
        let a = generate_secret().unwrap();
        let b = generate_secret().unwrap();
        assert_eq!(
            Secret::try_from_base32(a.as_str())
                .unwrap()
                .as_bytes()
                .len(),
            20
        );
        assert_ne!(*a, *b);
    }

    #[test]
    fn uri_for_apps() {
        let uri = otpauth_uri(RFC_SECRET, "alice@web-3").unwrap();
        assert!(
            uri.starts_with("otpauth://totp/SmartSign:alice%40web-3?"),
            "{}",
            *uri
        );
        assert!(uri.contains("secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"));
        assert!(uri.contains("issuer=SmartSign"));
    }
}
