//! The PAM return codes this module produces, and the panic guard.

use pam::constants::PamResultCode;

/// Every result `pam_sm_authenticate` can return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The second factor was given.
    Success,
    /// A wrong, reused or malformed code.
    AuthErr,
    /// Locked out after too many failures.
    MaxTries,
    /// SmartSign could not decide (daemon down, slow or refusing) under failmode=secure.
    AuthInfoUnavail,
    /// SmartSign has nothing to ask: the rest of the stack decides.
    Ignore,
    /// The application's conversation failed.
    ConvErr,
    /// A bug or an unusable PAM handle; also what a caught panic becomes.
    SystemErr,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Success,
        Outcome::AuthErr,
        Outcome::MaxTries,
        Outcome::AuthInfoUnavail,
        Outcome::Ignore,
        Outcome::ConvErr,
        Outcome::SystemErr,
    ];

    pub fn code(self) -> PamResultCode {
        match self {
            Outcome::Success => PamResultCode::PAM_SUCCESS,
            Outcome::AuthErr => PamResultCode::PAM_AUTH_ERR,
            Outcome::MaxTries => PamResultCode::PAM_MAXTRIES,
            Outcome::AuthInfoUnavail => PamResultCode::PAM_AUTHINFO_UNAVAIL,
            Outcome::Ignore => PamResultCode::PAM_IGNORE,
            Outcome::ConvErr => PamResultCode::PAM_CONV_ERR,
            Outcome::SystemErr => PamResultCode::PAM_SYSTEM_ERR,
        }
    }

    /// The integer libpam sees.
    pub fn raw(self) -> i32 {
        self.code() as i32
    }

    /// The outcome for a raw code, `None` for codes this module never returns.
    pub fn from_raw(raw: i32) -> Option<Outcome> {
        Outcome::ALL
            .into_iter()
            .find(|outcome| outcome.raw() == raw)
    }

    /// Maps a code returned by libpam (from `pam_get_user`, the conversation)
    /// to what this module returns; anything unexpected is a system error.
    pub fn from_pam(code: &PamResultCode) -> Outcome {
        match code {
            PamResultCode::PAM_CONV_ERR | PamResultCode::PAM_CONV_AGAIN => Outcome::ConvErr,
            PamResultCode::PAM_AUTH_ERR => Outcome::AuthErr,
            _ => Outcome::SystemErr,
        }
    }
}

/// Runs a hook body; a panic inside it becomes `PAM_SYSTEM_ERR`.
pub fn guarded(body: impl FnOnce() -> Outcome) -> PamResultCode {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(outcome) => outcome.code(),
        Err(payload) => {
            // Dropping a panic payload can itself panic; never let that escape.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(payload)))
                .map_err(std::mem::forget);
            PamResultCode::PAM_SYSTEM_ERR
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values of `<security/_pam_types.h>` in Linux-PAM.
    #[test]
    fn codes_match_libpam() {
        let expected = [0, 7, 11, 9, 25, 19, 4];
        for (outcome, raw) in Outcome::ALL.into_iter().zip(expected) {
            assert_eq!(outcome.raw(), raw, "{outcome:?}");
        }
    }

    #[test]
    fn every_code_round_trips() {
        for outcome in Outcome::ALL {
            assert_eq!(Outcome::from_raw(outcome.raw()), Some(outcome));
        }
        assert_eq!(Outcome::from_raw(26), None, "PAM_ABORT is never produced");
        assert_eq!(Outcome::from_raw(-1), None);
        assert_eq!(Outcome::from_raw(10_000), None);
    }

    #[test]
    fn a_panic_becomes_system_err() {
        assert_eq!(guarded(|| panic!("boom")), PamResultCode::PAM_SYSTEM_ERR);
        assert_eq!(guarded(|| Outcome::Ignore), PamResultCode::PAM_IGNORE);
    }
}
