//! `pam_smartsign.so`: asks for SmartSign's second factor after the password.
//!
//! This file is the thin FFI layer. The login itself is [`flow::authenticate`],
//! written against the [`flow::Pam`] and [`flow::Daemon`] traits so that unit
//! tests can script both sides. Every entry point runs behind
//! [`outcome::guarded`], so a panic becomes `PAM_SYSTEM_ERR` instead of
//! unwinding into the host process.

pub mod args;
pub mod flow;
mod handle;
pub mod outcome;

use std::ffi::CStr;
use std::time::{SystemTime, UNIX_EPOCH};

use pam::constants::{PamFlag, PamResultCode};
use pam::module::{PamHandle, PamHooks};
use smartsign_proto::Client;

use crate::args::Args;
use crate::handle::Handle;
use crate::outcome::{Outcome, guarded};

struct SmartSign;

pam::pam_hooks!(SmartSign);

impl PamHooks for SmartSign {
    fn sm_authenticate(pamh: &mut PamHandle, args: Vec<&CStr>, flags: PamFlag) -> PamResultCode {
        guarded(|| {
            let mut handle = Handle::new(pamh, flags);
            let args = Args::parse(&args, &mut |text| handle.log_warning(text));
            let daemon = Client::new(&args.socket, args.timeout);
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            flow::authenticate(&mut handle, &daemon, &args, now)
        })
    }

    fn sm_setcred(_pamh: &mut PamHandle, _args: Vec<&CStr>, _flags: PamFlag) -> PamResultCode {
        Outcome::Success.code()
    }
}
