//! `smartsign`: the user's login security page on the command line.
//! It talks only to smartsignd, which decides what the caller may do.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use clap::Parser;
use qrcode::QrCode;
use qrcode::render::unicode::Dense1x2;
use serde::Serialize;
use smartsign_proto::{
    AccountStatus, Client, ErrorKind, NewPhone, PhoneInfo, Request, Response, Secret,
};
use smartsignd::cli::{Command, EmailCommand, PhoneCommand, UserCli as Cli};

#[derive(Clone, Copy)]
enum Exit {
    Failed = 1,
    Usage = 2,
    Unreachable = 3,
    Refused = 4,
    NotFound = 5,
    WrongCode = 6,
    Exists = 7,
    CodeRequired = 8,
    MailFailed = 9,
    TooMany = 10,
    PushFailed = 11,
}

impl From<ErrorKind> for Exit {
    fn from(kind: ErrorKind) -> Self {
        match kind {
            ErrorKind::Refused => Exit::Refused,
            ErrorKind::NotFound => Exit::NotFound,
            ErrorKind::AlreadyExists => Exit::Exists,
            ErrorKind::WrongCode => Exit::WrongCode,
            ErrorKind::CodeRequired => Exit::CodeRequired,
            ErrorKind::MailFailed => Exit::MailFailed,
            ErrorKind::TooMany => Exit::TooMany,
            ErrorKind::PushFailed => Exit::PushFailed,
            ErrorKind::BadRequest => Exit::Usage,
            ErrorKind::UnsupportedVersion | ErrorKind::Internal => Exit::Failed,
        }
    }
}

/// How to have logins approved on the phone: subscribe the ntfy app.
fn show_push_setup(name: &str, url: &str) {
    println!("\nTo approve logins with a tap, install the ntfy app on {name:?} (Google Play,");
    println!("App Store or F-Droid), tap +, and subscribe to this topic (or scan this):\n");
    print_qr(url);
    println!("\n  {url}\n");
    println!("Keep it to yourself: whoever follows this topic can approve your logins.");
    println!("Check it with: smartsign phone test {name:?}");
}

fn print_qr(text: &str) {
    match QrCode::new(text.as_bytes()) {
        // Light modules drawn as blocks: the code reads right on a dark terminal.
        Ok(code) => println!(
            "{}",
            code.render::<Dense1x2>()
                .dark_color(Dense1x2::Light)
                .light_color(Dense1x2::Dark)
                .build()
        ),
        Err(err) => println!("(no QR code: {err})"),
    }
}

/// Why a command failed: what to print and which exit code.
struct Failure(Exit, String);

type Outcome = Result<(), Failure>;

/// Tries at the interactive code prompt before giving up.
const CONFIRM_TRIES: usize = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let client = Client::new(&cli.socket, Duration::from_secs(10));
    let app = App {
        client,
        user: cli.user,
    };
    let outcome = match cli.command {
        Command::Status { json } => app.status(json),
        Command::Phone(PhoneCommand::Add {
            name,
            json: true,
            code,
        }) => code
            .map(code_arg)
            .transpose()
            .and_then(|code| app.add_json(name, code)),
        Command::Phone(PhoneCommand::Add {
            name,
            json: false,
            code,
        }) => code
            .map(code_arg)
            .transpose()
            .and_then(|code| app.add_interactive(name, code)),
        Command::Phone(PhoneCommand::Confirm { name, code }) => {
            code_arg(code).and_then(|code| app.confirm(name, code))
        }
        Command::Phone(PhoneCommand::List { json }) => app.list(json),
        Command::Phone(PhoneCommand::Test { name }) => app.test(name),
        Command::Phone(PhoneCommand::Remove { name, code }) => code
            .map(code_arg)
            .transpose()
            .and_then(|code| app.remove(name, code)),
        Command::Email(EmailCommand::Set { address, code }) => code
            .map(code_arg)
            .transpose()
            .and_then(|code| app.email_set(address, code)),
        Command::Email(EmailCommand::SendCode) => app.send_code(),
        Command::Email(EmailCommand::Confirm { code }) => {
            code_arg(code).and_then(|code| app.email_confirm(code))
        }
        Command::Email(EmailCommand::Remove { code }) => code
            .map(code_arg)
            .transpose()
            .and_then(|code| app.email_remove(code)),
        Command::BackupCodes { code } => code
            .map(code_arg)
            .transpose()
            .and_then(|code| app.backup_codes(code)),
        Command::Disable { code } => code
            .map(code_arg)
            .transpose()
            .and_then(|code| app.disable(code)),
        Command::Enable => app.simple(
            Request::Enable {
                user: app.user.clone(),
            },
            "SmartSign is on for this account.",
        ),
        Command::Reset { yes } => app.reset(yes),
        Command::Policy => app.explain(),
        Command::Unlock => app.unlock(),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(exit, message)) => {
            eprintln!("smartsign: {message}");
            ExitCode::from(exit as u8)
        }
    }
}

struct App {
    client: Client,
    user: Option<String>,
}

impl App {
    fn call(&self, request: Request) -> Result<Response, Failure> {
        match self.client.call(request) {
            Ok(Response::Error { kind, message }) => Err(Failure(kind.into(), message)),
            Ok(response) => Ok(response),
            Err(err) => Err(Failure(Exit::Unreachable, err.to_string())),
        }
    }

    fn status(&self, json: bool) -> Outcome {
        let status = match self.call(Request::Status {
            user: self.user.clone(),
        })? {
            Response::Status(status) => status,
            other => return Err(unexpected(&other)),
        };
        if json {
            return print_json(&status);
        }
        print_status(&status);
        Ok(())
    }

    /// Sends the request `build` makes; when the daemon wants a code from an
    /// enrolled phone and none was given, asks for one (if `ask`) and retries.
    fn with_code(
        &self,
        code: Option<Secret>,
        ask: bool,
        build: impl Fn(Option<Secret>) -> Request,
    ) -> Result<Response, Failure> {
        let given = code.is_some();
        match self.call(build(code)) {
            Err(Failure(Exit::CodeRequired, message)) if !given && ask => {
                println!("{message}.");
                let code = if message.contains("mailed") {
                    self.send_code()?;
                    prompt("Code from the email: ")?
                } else {
                    prompt("Code from one of your enrolled phones: ")?
                };
                self.call(build(Some(code)))
            }
            Err(Failure(Exit::CodeRequired, message)) => Err(Failure(
                Exit::CodeRequired,
                format!("{message}: add --code CODE"),
            )),
            other => other,
        }
    }

    fn add(&self, name: String, code: Option<Secret>, ask: bool) -> Result<NewPhone, Failure> {
        let user = self.user.clone();
        let response = self.with_code(code, ask, |code| Request::PhoneAdd {
            user: user.clone(),
            name: name.clone(),
            code,
        })?;
        match response {
            Response::PhoneCreated(phone) => Ok(phone),
            other => Err(unexpected(&other)),
        }
    }

    fn add_json(&self, name: String, code: Option<Secret>) -> Outcome {
        print_json(&self.add(name, code, false)?)
    }

    fn add_interactive(&self, name: String, code: Option<Secret>) -> Outcome {
        let phone = self.add(name, code, true)?;
        let uri = phone.otpauth_uri.expose();
        println!("Scan this QR code with your authenticator app (Aegis, FreeOTP, Google");
        println!("Authenticator, 1Password, ...):\n");
        print_qr(uri);
        println!(
            "\nOr type this secret into the app: {}",
            grouped(phone.secret.expose())
        );
        println!("otpauth URI: {uri}\n");

        for _ in 0..CONFIRM_TRIES {
            let Ok(code) = prompt("Type the 6-digit code the app shows for it now: ") else {
                break;
            };
            match self.confirm(phone.name.clone(), code) {
                Ok(()) => {
                    if let Some(url) = &phone.push_url {
                        show_push_setup(&phone.name, url.expose());
                    }
                    return Ok(());
                }
                Err(Failure(Exit::WrongCode, message)) => println!("{message}; try again."),
                Err(other) => return Err(other),
            }
        }
        Err(Failure(
            Exit::WrongCode,
            format!(
                "{:?} is pending; confirm it later with: smartsign phone confirm {:?} CODE",
                phone.name, phone.name
            ),
        ))
    }

    fn test(&self, name: String) -> Outcome {
        let request = Request::PhoneTest {
            user: self.user.clone(),
            name: name.clone(),
        };
        match self.call(request)? {
            Response::Done => {
                println!(
                    "The relay took a test notification for {name:?}; \
                     it should show on the phone now."
                );
                Ok(())
            }
            other => Err(unexpected(&other)),
        }
    }

    fn confirm(&self, name: String, code: Secret) -> Outcome {
        let request = Request::PhoneConfirm {
            user: self.user.clone(),
            name: name.clone(),
            code,
        };
        match self.call(request)? {
            Response::Done => {
                println!("Phone {name:?} is enrolled: its codes now work at login.");
                Ok(())
            }
            other => Err(unexpected(&other)),
        }
    }

    fn list(&self, json: bool) -> Outcome {
        let phones = match self.call(Request::PhoneList {
            user: self.user.clone(),
        })? {
            Response::Phones { phones } => phones,
            other => return Err(unexpected(&other)),
        };
        if json {
            return print_json(&phones);
        }
        if phones.is_empty() {
            println!("No phones. Add one with: smartsign phone add NAME");
        }
        for phone in &phones {
            println!("{}", describe_phone(phone));
        }
        Ok(())
    }

    fn remove(&self, name: String, code: Option<Secret>) -> Outcome {
        let user = self.user.clone();
        let response = self.with_code(code, true, |code| Request::PhoneRemove {
            user: user.clone(),
            name: name.clone(),
            code,
        })?;
        match response {
            Response::Done => {
                println!("Phone {name:?} removed.");
                let left = match self.call(Request::PhoneList {
                    user: self.user.clone(),
                }) {
                    Ok(Response::Phones { phones }) => {
                        phones.iter().filter(|p| p.confirmed).count()
                    }
                    _ => 1,
                };
                if left == 0 {
                    println!(
                        "No enrolled phone is left: logins ask for no second factor until one is added."
                    );
                }
                Ok(())
            }
            other => Err(unexpected(&other)),
        }
    }

    fn email_set(&self, address: String, code: Option<Secret>) -> Outcome {
        let user = self.user.clone();
        let response = self.with_code(code, true, |code| Request::EmailSet {
            user: user.clone(),
            address: address.clone(),
            code,
        })?;
        match response {
            Response::Done => {
                println!("Emergency codes now go to {address}.");
                Ok(())
            }
            Response::EmailSent { to, .. } => {
                println!("A code is on its way to {to}.");
                match prompt("Type the code from the mail: ") {
                    Ok(code) => self.email_confirm(code),
                    Err(_) => {
                        println!("\nConfirm it later with: smartsign email confirm CODE");
                        Ok(())
                    }
                }
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Mails a one-time code to the account's address, the proof of a
    /// change for an account enrolled by its address alone.
    fn send_code(&self) -> Outcome {
        let request = Request::EmailChangeCode {
            user: self.user.clone(),
        };
        match self.call(request)? {
            Response::EmailSent { to, expires } => {
                println!(
                    "A code is on its way to {to}; it is good until {}.",
                    when(expires)
                );
                Ok(())
            }
            Response::LockedOut { until } => Err(Failure(
                Exit::Refused,
                format!(
                    "locked out after too many wrong codes until {}",
                    when(until)
                ),
            )),
            Response::Deny { reason } => Err(Failure(Exit::Refused, reason.describe().into())),
            other => Err(unexpected(&other)),
        }
    }

    fn email_confirm(&self, code: Secret) -> Outcome {
        match self.call(Request::EmailConfirm {
            user: self.user.clone(),
            code,
        })? {
            Response::Done => {
                println!("The address is confirmed: emergency codes go there now.");
                Ok(())
            }
            other => Err(unexpected(&other)),
        }
    }

    fn email_remove(&self, code: Option<Secret>) -> Outcome {
        let user = self.user.clone();
        match self.with_code(code, true, |code| Request::EmailRemove {
            user: user.clone(),
            code,
        })? {
            Response::Done => {
                println!("No more codes by email.");
                Ok(())
            }
            other => Err(unexpected(&other)),
        }
    }

    fn backup_codes(&self, code: Option<Secret>) -> Outcome {
        let user = self.user.clone();
        match self.with_code(code, true, |code| Request::BackupCodes {
            user: user.clone(),
            code,
        })? {
            Response::BackupCodes { codes } => {
                println!("Your backup codes; each works once, at the SmartSign prompt.");
                println!(
                    "Keep them somewhere safe. They are shown only now; earlier codes no longer work.\n"
                );
                for code in &codes {
                    println!("    {}", code.expose());
                }
                Ok(())
            }
            other => Err(unexpected(&other)),
        }
    }

    fn disable(&self, code: Option<Secret>) -> Outcome {
        let user = self.user.clone();
        match self.with_code(code, true, |code| Request::Disable {
            user: user.clone(),
            code,
        })? {
            Response::Done => {
                println!("SmartSign is off for this account: logins ask for no second factor.");
                println!("Turn it back on with: smartsign enable");
                Ok(())
            }
            other => Err(unexpected(&other)),
        }
    }

    fn reset(&self, yes: bool) -> Outcome {
        let Some(user) = self.user.clone() else {
            return Err(Failure(
                Exit::Usage,
                "name the account: smartsign --user NAME reset".into(),
            ));
        };
        if !yes {
            let answer = prompt(&format!(
                "Remove every phone, the address and the backup codes of {user}? Type yes: "
            ))
            .map_err(|Failure(exit, why)| Failure(exit, format!("{why} (or add --yes)")))?;
            if answer.expose() != "yes" {
                return Err(Failure(Exit::Failed, "nothing changed".into()));
            }
        }
        self.simple(
            Request::Reset { user: user.clone() },
            &format!("{user} is reset: no phone, address or backup code is left."),
        )
    }

    /// A request answered with `Done`, and the line to print then.
    fn simple(&self, request: Request, done: &str) -> Outcome {
        match self.call(request)? {
            Response::Done => {
                println!("{done}");
                Ok(())
            }
            other => Err(unexpected(&other)),
        }
    }

    fn explain(&self) -> Outcome {
        let Some(user) = self.user.clone() else {
            return Err(Failure(
                Exit::Usage,
                "name the account: smartsign --user NAME policy".into(),
            ));
        };
        match self.call(Request::Explain { user: user.clone() })? {
            Response::Explanation { lines } => {
                println!("SmartSign policy for {user}:");
                for line in lines {
                    println!("  {line}");
                }
                Ok(())
            }
            other => Err(unexpected(&other)),
        }
    }

    fn unlock(&self) -> Outcome {
        let Some(user) = self.user.clone() else {
            return Err(Failure(
                Exit::Usage,
                "name the account: smartsign --user NAME unlock".into(),
            ));
        };
        match self.call(Request::Unlock { user: user.clone() })? {
            Response::Done => {
                println!("{user} is unlocked; earlier wrong codes no longer count.");
                Ok(())
            }
            other => Err(unexpected(&other)),
        }
    }
}

/// A code from the command line; `-` reads it from standard input, where
/// other users cannot see it as they can see arguments.
fn code_arg(text: String) -> Result<Secret, Failure> {
    if text == "-" {
        prompt("")
    } else {
        Ok(Secret::new(text))
    }
}

/// Asks on stdout and reads one line from stdin; end of input is a failure.
fn prompt(text: &str) -> Result<Secret, Failure> {
    print!("{text}");
    let _ = std::io::stdout().flush();
    let mut line = zeroize::Zeroizing::new(String::new());
    match std::io::stdin().lock().take_line(&mut line) {
        Ok(n) if n > 0 => Ok(Secret::new(line.trim().to_owned())),
        _ => Err(Failure(Exit::Usage, "no answer on standard input".into())),
    }
}

/// Reads one line of at most 1 KiB, so a runaway pipe cannot fill memory.
trait TakeLine {
    fn take_line(&mut self, line: &mut String) -> std::io::Result<usize>;
}

impl<R: BufRead> TakeLine for R {
    fn take_line(&mut self, line: &mut String) -> std::io::Result<usize> {
        std::io::Read::take(self, 1024).read_line(line)
    }
}

fn print_status(status: &AccountStatus) {
    println!("SmartSign for {}", status.user);
    if status.phones.is_empty() {
        println!("  No phones. Add one with: smartsign phone add NAME");
    } else {
        println!("  Phones:");
        for phone in &status.phones {
            println!("    {}", describe_phone(phone));
        }
    }
    match (&status.email, &status.email_pending) {
        (Some(address), Some(pending)) => {
            println!("  Email: {address} (waiting for {pending} to be confirmed)")
        }
        (Some(address), None) => println!("  Email: {address}"),
        (None, Some(pending)) => {
            println!("  Email: {pending}, waiting: smartsign email confirm CODE")
        }
        (None, None) => println!("  Email: none (add one with: smartsign email set ADDRESS)"),
    }
    println!(
        "  Backup codes: {} left (new ones with: smartsign backup-codes)",
        status.backup_codes_left
    );
    match status.locked_until {
        Some(until) => println!(
            "  Locked out until {} after too many wrong codes.",
            when(until)
        ),
        None => println!(
            "  Not locked out: {} failed attempt(s) recently; {} lock the account.",
            status.recent_failures, status.max_failures
        ),
    }
}

fn describe_phone(phone: &PhoneInfo) -> String {
    if !phone.confirmed {
        return format!(
            "{:<20} pending: smartsign phone confirm {:?} CODE",
            phone.name, phone.name
        );
    }
    let used = phone.last_used.map_or_else(
        || "never used".to_owned(),
        |t| format!("last used {}", when(t)),
    );
    let push = if phone.push { ", push" } else { "" };
    format!(
        "{:<20} enrolled {}, {used}{push}",
        phone.name,
        when(phone.created)
    )
}

fn when(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

/// `JBSWY3DPEHPK3PXP` as `JBSW Y3DP EHPK 3PXP`, easier to type.
fn grouped(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    chars
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join(" ")
}

fn print_json<T: Serialize>(value: &T) -> Outcome {
    let text = serde_json::to_string_pretty(value)
        .map_err(|err| Failure(Exit::Failed, format!("cannot print JSON: {err}")))?;
    println!("{text}");
    Ok(())
}

fn unexpected(response: &Response) -> Failure {
    Failure(
        Exit::Failed,
        format!("unexpected answer from smartsignd: {response:?}"),
    )
}
