//! [`flow::Pam`](crate::flow::Pam) on a real libpam handle.

use std::ffi::{CString, c_char, c_int};

use pam::constants::{PAM_ERROR_MSG, PAM_PROMPT_ECHO_OFF, PAM_SILENT, PAM_TEXT_INFO, PamFlag};
use pam::conv::Conv;
use pam::items::{AuthTok, RHost, Service, Tty};
use pam::module::PamHandle;
use smartsign_proto::Secret;

use std::cell::RefCell;

use crate::flow::{Pam, Priority, Push};
use crate::outcome::Outcome;

#[link(name = "pam")]
unsafe extern "C" {
    /// From `<security/pam_ext.h>`: logs to LOG_AUTHPRIV with the
    /// `pam_smartsign(service:auth)` prefix, without touching the host's openlog().
    fn pam_syslog(pamh: *const PamHandle, priority: c_int, fmt: *const c_char, ...);
}

/// Where a push waits between two calls of one PAM transaction.
const PUSH_KEY: &str = "pam_smartsign.push";

/// Equal contents, in time that depends on the lengths alone.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub struct Handle<'a> {
    pamh: &'a mut PamHandle,
    silent: bool,
}

impl<'a> Handle<'a> {
    pub fn new(pamh: &'a mut PamHandle, flags: PamFlag) -> Self {
        Self {
            pamh,
            silent: flags & PAM_SILENT != 0,
        }
    }

    fn message(&mut self, style: pam::constants::PamMessageStyle, text: &str) {
        if self.silent {
            return;
        }
        if let Ok(Some(conv)) = self.pamh.get_item::<Conv>() {
            // A failed message changes nothing about the login's outcome.
            let _ = conv.send(style, text);
        }
    }

    pub fn log_warning(&mut self, text: &str) {
        self.log(Priority::Warning, text);
    }

    fn string_item<'s, T>(&'s self) -> Option<String>
    where
        T: pam::items::Item<'s> + std::ops::Deref<Target = &'s std::ffi::CStr>,
    {
        match self.pamh.get_item::<T>() {
            Ok(Some(item)) => Some(item.to_string_lossy().into_owned()),
            _ => None,
        }
    }
}

impl Pam for Handle<'_> {
    fn user(&mut self) -> Result<String, Outcome> {
        self.pamh
            .get_user(None)
            .map_err(|code| Outcome::from_pam(&code))
    }

    fn service(&self) -> Option<String> {
        self.string_item::<Service>()
    }

    fn rhost(&self) -> Option<String> {
        self.string_item::<RHost>()
            .filter(|rhost| !rhost.is_empty())
    }

    fn tty(&self) -> Option<String> {
        self.string_item::<Tty>().filter(|tty| !tty.is_empty())
    }

    fn prompt_hidden(&mut self, prompt: &str) -> Result<Option<Secret>, Outcome> {
        let conv = match self.pamh.get_item::<Conv>() {
            Ok(Some(conv)) => conv,
            Ok(None) => return Err(Outcome::ConvErr),
            Err(code) => return Err(Outcome::from_pam(&code)),
        };
        let reply = conv
            .send(PAM_PROMPT_ECHO_OFF, prompt)
            .map_err(|code| Outcome::from_pam(&code))?;
        // A reply that is not UTF-8 goes on, replaced, so the daemon refuses and logs it.
        Ok(reply.map(|bytes| Secret::new(String::from_utf8_lossy(bytes.as_bytes()).into_owned())))
    }

    fn is_password(&self, answer: &str) -> bool {
        match self.pamh.get_item::<AuthTok>() {
            Ok(Some(password)) => {
                !password.as_bytes().is_empty()
                    && same_bytes(password.as_bytes(), answer.as_bytes())
            }
            _ => false,
        }
    }

    fn keep_push(&mut self, push: Push) {
        // libpam drops it (closing its connection) at pam_end, or when
        // this key is set again.
        if self
            .pamh
            .set_data(PUSH_KEY, Box::new(RefCell::new(Some(push))))
            .is_err()
        {
            self.log(Priority::Warning, "cannot keep the push for the next call");
        }
    }

    fn take_push(&mut self) -> Option<Push> {
        // SAFETY: this module alone stores under PUSH_KEY, always a
        // RefCell<Option<Push>> (keep_push above).
        let kept = unsafe { self.pamh.get_data::<RefCell<Option<Push>>>(PUSH_KEY) };
        kept.ok()
            .and_then(|cell| cell.try_borrow_mut().ok()?.take())
    }

    fn error(&mut self, text: &str) {
        self.message(PAM_ERROR_MSG, text);
    }

    fn info(&mut self, text: &str) {
        self.message(PAM_TEXT_INFO, text);
    }

    fn log(&mut self, priority: Priority, text: &str) {
        let level = match priority {
            Priority::Error => libc::LOG_ERR,
            Priority::Warning => libc::LOG_WARNING,
            Priority::Info => libc::LOG_INFO,
            Priority::Debug => libc::LOG_DEBUG,
        };
        let text: String = text
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        let Ok(text) = CString::new(text) else { return };

        // SAFETY: `pamh` is the live handle of this call; the format is a
        // literal "%s" taking exactly one NUL-terminated string.
        unsafe { pam_syslog(&raw const *self.pamh, level, c"%s".as_ptr(), text.as_ptr()) };
    }
}
