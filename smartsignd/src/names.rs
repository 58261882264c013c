//! What a user name and a phone name may contain. Both come from clients
//! and end up in prompts, logs and the store.

/// The longest user name accepted (Linux's LOGIN_NAME_MAX is 256).
pub const MAX_USER: usize = 256;
pub const MAX_PHONE_NAME: usize = 64;

/// A plausible login name: no control characters, white space, `/` or `:`,
/// and no leading `-`. Whether the account exists is asked of NSS elsewhere.
pub fn check_user(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_USER {
        return Err(format!("a user name is 1 to {MAX_USER} bytes"));
    }
    if name.starts_with('-') {
        return Err("a user name cannot start with '-'".into());
    }
    if name
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '/' || c == ':')
    {
        return Err("a user name cannot hold control characters, spaces, '/' or ':'".into());
    }
    Ok(())
}

/// A phone's display name, such as `Pixel 8` or `work iPhone`.
pub fn check_phone(name: &str) -> Result<(), String> {
    if name.trim().is_empty() || name.chars().count() > MAX_PHONE_NAME {
        return Err(format!("a phone name is 1 to {MAX_PHONE_NAME} characters"));
    }
    if name.trim() != name {
        return Err("a phone name cannot start or end with a space".into());
    }
    if name.chars().any(crate::audit::is_invisible) {
        return Err("a phone name cannot hold control or invisible characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users() {
        for good in [
            "alice",
            "bob.smith",
            "svc_backup",
            "j-doe",
            "user@example.org",
            "u1000",
        ] {
            assert!(check_user(good).is_ok(), "{good}");
        }
        let long = "a".repeat(MAX_USER + 1);
        for bad in [
            "",
            "../etc/passwd",
            "a/b",
            "a\0b",
            "a\nb",
            "a b",
            "-rf",
            "a:b",
            &long,
        ] {
            assert!(check_user(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn phones() {
        for good in ["Pixel 8", "work iPhone", "Téléphone", "x"] {
            assert!(check_phone(good).is_ok(), "{good}");
        }
        let long = "p".repeat(MAX_PHONE_NAME + 1);
        for bad in [
            "",
            "   ",
            " lead",
            "trail ",
            "a\tb",
            "a\u{1b}[2J",
            "a\0",
            &long,
        ] {
            assert!(check_phone(bad).is_err(), "{bad:?}");
        }
    }
}
