//! Backup codes: ten one-time codes for when neither the phone nor the
//! mailbox is at hand. Shown once; only their Argon2id hashes are kept.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use zeroize::Zeroizing;

/// Codes in one set.
pub const COUNT: usize = 10;
/// Characters per code (about 50 bits), shown as two groups of five.
const LENGTH: usize = 10;
/// No 0/o, 1/l/i: nothing that reads as something else.
const ALPHABET: &[u8] = b"23456789abcdefghjkmnpqrstuvwxyz";

/// A new set from the OS random source, as `abcde-fghjk`.
pub fn new_codes() -> Result<Vec<Zeroizing<String>>, String> {
    (0..COUNT).map(|_| new_code()).collect()
}

fn new_code() -> Result<Zeroizing<String>, String> {
    // Below 248 = 8 * 31 every remainder is equally likely.
    let mut code = Zeroizing::new(String::with_capacity(LENGTH + 1));
    let mut bytes = Zeroizing::new([0u8; 64]);
    getrandom::fill(bytes.as_mut()).map_err(|err| format!("randomness: {err}"))?;
    for byte in bytes.iter().filter(|b| **b < 248) {
        if code.len() == LENGTH / 2 {
            code.push('-');
        }
        code.push(char::from(ALPHABET[usize::from(*byte) % ALPHABET.len()]));
        if code.len() == LENGTH + 1 {
            return Ok(code);
        }
    }
    Err("the OS random source gave too few usable bytes".into())
}

/// An answer in the shape of a backup code, as stored: lower case, no
/// dash or spaces. `None` for anything else (an app code, say), so that
/// the slow hash is only worked for answers that could match.
pub fn normalize(answer: &str) -> Option<Zeroizing<String>> {
    let code: Zeroizing<String> = Zeroizing::new(
        answer
            .chars()
            .filter(|c| *c != '-' && *c != ' ')
            .map(|c| c.to_ascii_lowercase())
            .collect(),
    );
    let shaped = code.len() == LENGTH && code.bytes().all(|b| ALPHABET.contains(&b));
    shaped.then_some(code)
}

pub fn hash(code: &str) -> Result<String, String> {
    let normal = normalize(code).ok_or("not a backup code")?;
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|err| format!("randomness: {err}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|err| err.to_string())?;
    hasher()?
        .hash_password(normal.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|err| err.to_string())
}

/// Whether `code` (normalized) is the one `stored` was made from.
pub fn matches(code: &str, stored: &str) -> bool {
    let (Ok(parsed), Ok(hasher)) = (PasswordHash::new(stored), hasher()) else {
        return false;
    };
    hasher.verify_password(code.as_bytes(), &parsed).is_ok()
}

/// Argon2id at 4 MiB and one pass: the codes carry 50 random bits, so the
/// hash need not make up for weak input as a password hash must, and a
/// login may try all ten.
fn hasher() -> Result<Argon2<'static>, String> {
    let params = Params::new(4096, 1, 1, None).map_err(|err| err.to_string())?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unambiguous_and_verify_only_themselves() {
        let codes = new_codes().unwrap();
        assert_eq!(codes.len(), COUNT);
        for code in &codes {
            assert_eq!(code.len(), 11, "{}", **code);
            assert_eq!(code.as_bytes()[5], b'-');
            assert!(!code.contains(['0', 'o', '1', 'l', 'i']));
        }
        let stored = hash(&codes[0]).unwrap();
        assert!(stored.starts_with("$argon2id$"));
        assert!(!stored.contains(codes[0].as_str()));
        let typed = normalize(&codes[0].to_uppercase().replace('-', " ")).unwrap();
        assert!(matches(&typed, &stored));
        assert!(!matches(&normalize(&codes[1]).unwrap(), &stored));
        for other in ["123456", "01234567", "abcde-fghj", "abcde-fghjk0", ""] {
            assert!(normalize(other).is_none(), "{other}");
        }
    }
}
