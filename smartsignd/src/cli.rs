//! The command lines of `smartsign` and `smartsignd`, here so that the man
//! pages can be generated from the same definitions.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use smartsign_proto::DEFAULT_SOCKET;

use crate::config::DEFAULT_CONFIG;

/// Manage your SmartSign second factor: phones with an authenticator app,
/// and the address emergency codes are mailed to.
///
/// Exit codes: 0 done, 1 failed, 2 bad usage or input, 3 smartsignd not
/// reachable, 4 refused, 5 not found, 6 wrong code, 7 already exists,
/// 8 a code from an enrolled phone is needed (--code), 9 no mail could be
/// sent, 10 too many mails or pushes this hour, 11 no push could be sent.
#[derive(Parser)]
#[command(name = "smartsign", version)]
pub struct UserCli {
    /// smartsignd's socket.
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Act on this user's account (root only).
    #[arg(long, global = true, value_name = "NAME")]
    pub user: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Phones, pending phones and lockout.
    Status {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add, confirm, list or remove phones.
    #[command(subcommand)]
    Phone(PhoneCommand),
    /// Register, confirm or remove the address emergency codes go to.
    #[command(subcommand)]
    Email(EmailCommand),
    /// Make ten new backup codes (shown once), replacing any earlier ones.
    BackupCodes {
        /// When a user asks: a current code from one of the account's phones
        /// (`-` reads it from standard input; asked for when missing).
        #[arg(long, value_name = "CODE")]
        code: Option<String>,
    },
    /// Turn SmartSign off for this account, where the policy lets users
    /// (root: for any account). Logins then need no second factor.
    Disable {
        /// A current code from one of the account's phones (`-`: standard
        /// input; asked for when missing).
        #[arg(long, value_name = "CODE")]
        code: Option<String>,
    },
    /// Turn SmartSign back on.
    Enable,
    /// Remove every phone, the address and the backup codes of an account,
    /// and lift its lockout (root only, with --user).
    Reset {
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Say which rules apply to an account, and why (root only, with --user).
    Policy,
    /// Lift a lockout now (root only, with --user).
    Unlock,
}

#[derive(Subcommand)]
pub enum EmailCommand {
    /// Register an address: a code is mailed to it, to be typed back here
    /// (or later with `smartsign email confirm CODE`). Root sets it at once.
    Set {
        address: String,
        /// When the account already has a phone: a current code from it
        /// (`-` reads it from standard input).
        #[arg(long, value_name = "CODE")]
        code: Option<String>,
    },
    /// Confirm the address with the code mailed to it (`-`: from standard input).
    Confirm { code: String },
    /// Mail a one-time code to the registered address: the proof for
    /// changes to an account enrolled by its address alone (--code).
    SendCode,
    /// Stop sending codes by email.
    Remove {
        /// A current code from one of the account's phones, or for an account
        /// with an address alone the code from `email send-code` (`-`: standard input).
        #[arg(long, value_name = "CODE")]
        code: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum PhoneCommand {
    /// Enroll a phone: shows a QR code for the app, then asks for its code.
    Add {
        /// A name to tell your phones apart, such as "Pixel 8".
        name: String,
        /// Print name, secret, otpauth_uri and push_url (the ntfy topic, or
        /// null without push) as JSON and do not prompt; confirm
        /// afterwards with `smartsign phone confirm`.
        #[arg(long)]
        json: bool,
        /// When the account already has a phone: a current code from it
        /// (`-` reads it from standard input). Asked for at a prompt when
        /// missing (not with --json).
        #[arg(long, value_name = "CODE")]
        code: Option<String>,
    },
    /// Confirm a pending phone with the code its app shows now.
    Confirm {
        name: String,
        /// The code, or `-` to read it from standard input (kept out of `ps`).
        code: String,
    },
    /// Send a test push notification to a phone, to check that it follows
    /// its ntfy topic.
    Test {
        /// The phone's name, as `smartsign phone list` shows it.
        name: String,
    },
    /// Enrolled and pending phones.
    List {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a phone; its codes stop working at once.
    Remove {
        name: String,
        /// A current code from one of the account's phones (asked for when
        /// missing; `-` reads it from standard input).
        #[arg(long, value_name = "CODE")]
        code: Option<String>,
    },
}

/// SmartSign's daemon: verifies second factors for pam_smartsign and the
/// smartsign command over a Unix socket. Runs in the foreground; the audit
/// trail goes to syslog (LOG_AUTHPRIV) and to stderr.
#[derive(Parser)]
#[command(version)]
pub struct DaemonCli {
    /// The configuration file.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Validate the configuration, print it with defaults filled in, and exit.
    #[arg(long)]
    pub check_config: bool,
}
