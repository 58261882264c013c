//! State: phones, their secrets, used steps, failures and lockouts.
//!
//! [`Store`] is what the daemon needs; [`SqliteStore`] keeps it in one file
//! for a single host. Every check-and-set a login relies on (claiming a TOTP
//! step, counting a failure into a lockout) is one atomic statement or
//! transaction, so concurrent logins cannot both win.

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use zeroize::Zeroizing;

/// A phone as the store holds it. Not `Debug`: it carries the secret.
pub struct PhoneRecord {
    pub id: i64,
    pub name: String,
    pub secret: Zeroizing<String>,
    pub confirmed: bool,
    pub created: u64,
    /// The newest TOTP step accepted from this phone; older steps are refused.
    pub last_step: u64,
    pub last_used: Option<u64>,
    /// The ntfy topic its push notifications go to; phones enrolled before
    /// push existed have none.
    pub push_topic: Option<String>,
}

#[derive(Debug)]
pub enum StoreError {
    /// A confirmed phone of that name exists.
    Exists,
    /// The file was written by a newer smartsignd.
    NewerSchema {
        found: i64,
        known: i64,
    },
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    Db(rusqlite::Error),
    /// The database is not the store this directory held.
    Lost {
        id_file: PathBuf,
        why: &'static str,
    },
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Exists => f.write_str("a phone of that name exists"),
            StoreError::NewerSchema { found, known } => write!(
                f,
                "the store has schema version {found}, newer than this smartsignd knows ({known})"
            ),
            StoreError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            StoreError::Db(err) => write!(f, "store: {err}"),
            StoreError::Lost { id_file, why } => write!(
                f,
                "the database {why} ({} names it): restore the store from a backup, or remove \
                 {} to start afresh with nobody enrolled",
                id_file.display(),
                id_file.display()
            ),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> Self {
        StoreError::Db(err)
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

pub trait Store: Send + Sync {
    /// All phones of `user`, confirmed and pending, oldest first.
    fn phones(&self, user: &str) -> StoreResult<Vec<PhoneRecord>>;
    /// Creates a pending phone, or gives a pending one of that name a new secret.
    fn put_pending_phone(&self, user: &str, name: &str, secret: &str, now: u64) -> StoreResult<()>;
    /// Confirms a pending phone, claiming the step of the code that confirmed
    /// it; only while its secret is still the one the code was checked against.
    fn confirm_phone(&self, id: i64, secret: &str, step: u64) -> StoreResult<bool>;
    /// Notes a login approved with this phone.
    fn mark_used(&self, user: &str, name: &str, now: u64) -> StoreResult<()>;
    /// Gives a pending phone its push topic.
    fn set_push_topic(&self, user: &str, name: &str, topic: &str) -> StoreResult<()>;
    /// A value kept under `key`, or `value` kept there now if none was.
    fn meta_or_insert(&self, key: &str, value: &str) -> StoreResult<String>;
    /// Writes everything out to the main file, before the daemon stops.
    fn flush(&self) -> StoreResult<()>;
    fn remove_phone(&self, user: &str, name: &str) -> StoreResult<bool>;
    /// Records a login with `step`, only if it is newer than the last one.
    /// `false` means another login claimed it (or a newer one) first.
    fn claim_step(&self, id: i64, step: u64, now: u64) -> StoreResult<bool>;
    /// Counts a failure; at `max` failures within `window`, locks the user
    /// until `now + window` and returns that time.
    fn record_failure(
        &self,
        user: &str,
        now: u64,
        window: Duration,
        max: u32,
    ) -> StoreResult<Option<u64>>;
    fn recent_failures(&self, user: &str, now: u64, window: Duration) -> StoreResult<u32>;
    fn clear_failures(&self, user: &str) -> StoreResult<()>;
    fn locked_until(&self, user: &str, now: u64) -> StoreResult<Option<u64>>;
    /// Lifts a lockout and forgets the failures counted so far.
    fn unlock(&self, user: &str) -> StoreResult<()>;

    /// The account's confirmed address.
    fn email(&self, user: &str) -> StoreResult<Option<String>>;
    /// When the account's address was confirmed (Unix seconds).
    fn email_since(&self, user: &str) -> StoreResult<Option<u64>>;
    /// Makes `address` the account's, ending every code mailed before.
    fn set_email(&self, user: &str, address: &str, now: u64) -> StoreResult<()>;
    fn remove_email(&self, user: &str) -> StoreResult<bool>;
    /// Stores a code, replacing any earlier one of that purpose.
    fn put_email_code(&self, user: &str, purpose: CodePurpose, code: &EmailCode)
    -> StoreResult<()>;
    fn email_code(&self, user: &str, purpose: CodePurpose) -> StoreResult<Option<EmailCode>>;
    /// Deletes the code if it is still `code`; `false` if another request
    /// used or replaced it first.
    fn take_email_code(&self, user: &str, purpose: CodePurpose, code: &str) -> StoreResult<bool>;
    /// Counts a mail sent to `user` and returns how many went out since `since`.
    fn mails_since(&self, user: &str, since: u64) -> StoreResult<u32>;
    fn record_mail(&self, user: &str, now: u64) -> StoreResult<()>;
    /// Pushes (and test notifications) sent to the account's phones since then.
    fn pushes_since(&self, user: &str, since: u64) -> StoreResult<Vec<u64>>;
    fn record_push(&self, user: &str, now: u64) -> StoreResult<()>;

    /// Replaces the account's backup codes with these hashes.
    fn replace_backup_codes(&self, user: &str, hashes: &[String]) -> StoreResult<()>;
    /// The unused ones: (id, hash).
    fn backup_codes(&self, user: &str) -> StoreResult<Vec<(i64, String)>>;
    /// Marks one used; `false` if another login used it first.
    fn use_backup_code(&self, id: i64, now: u64) -> StoreResult<bool>;

    /// Whether SmartSign is turned off for the account, and whether root did it.
    fn disabled(&self, user: &str) -> StoreResult<Option<bool>>;
    fn set_disabled(&self, user: &str, by_root: Option<bool>, now: u64) -> StoreResult<()>;
    /// Forgets everything about the account: phones, address, codes,
    /// failures, lockout, the disabled mark.
    fn reset(&self, user: &str) -> StoreResult<()>;
}

/// Each entry moves the schema one version up; never edit a shipped one.
const MIGRATIONS: &[&str] = &[
    // 1: phones, failures and lockouts.
    "CREATE TABLE phones (
        id INTEGER PRIMARY KEY,
        user TEXT NOT NULL,
        name TEXT NOT NULL,
        secret TEXT NOT NULL,
        confirmed INTEGER NOT NULL DEFAULT 0,
        created INTEGER NOT NULL,
        last_step INTEGER NOT NULL DEFAULT 0,
        last_used INTEGER,
        UNIQUE (user, name)
    );
    CREATE TABLE failures (user TEXT NOT NULL, at INTEGER NOT NULL);
    CREATE INDEX failures_by_user ON failures (user, at);
    CREATE TABLE lockouts (user TEXT PRIMARY KEY, until INTEGER NOT NULL);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
    // 2: email addresses, emailed codes and the mails sent.
    "CREATE TABLE emails (user TEXT PRIMARY KEY, address TEXT NOT NULL, since INTEGER NOT NULL);
    CREATE TABLE email_codes (
        user TEXT NOT NULL,
        purpose TEXT NOT NULL,
        code TEXT NOT NULL,
        address TEXT NOT NULL,
        expires INTEGER NOT NULL,
        PRIMARY KEY (user, purpose)
    );
    CREATE TABLE mails_sent (user TEXT NOT NULL, at INTEGER NOT NULL);
    CREATE INDEX mails_sent_by_user ON mails_sent (user, at);",
    // 3: backup codes, as hashes.
    "CREATE TABLE backup_codes (
        id INTEGER PRIMARY KEY,
        user TEXT NOT NULL,
        hash TEXT NOT NULL,
        used INTEGER
    );
    CREATE INDEX backup_codes_by_user ON backup_codes (user);
    CREATE TABLE disabled (user TEXT PRIMARY KEY, since INTEGER NOT NULL, by_root INTEGER NOT NULL);",
    // 4: each phone's push topic.
    "ALTER TABLE phones ADD COLUMN push_topic TEXT;",
    // 5: expired failures and mail records are swept by time; pushes sent,
    // for the hourly limit.
    "CREATE INDEX failures_by_time ON failures (at);
    CREATE INDEX mails_sent_by_time ON mails_sent (at);
    CREATE TABLE pushes_sent (user TEXT NOT NULL, at INTEGER NOT NULL);
    CREATE INDEX pushes_sent_by_user ON pushes_sent (user, at);
    CREATE INDEX pushes_sent_by_time ON pushes_sent (at);",
];

/// What an emailed code is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodePurpose {
    Login,
    /// Proves a new address before it becomes the account's.
    ConfirmAddress,
    /// Proves a change to an account enrolled by its address alone.
    Change,
}

impl CodePurpose {
    fn as_str(self) -> &'static str {
        match self {
            CodePurpose::Login => "login",
            CodePurpose::ConfirmAddress => "confirm",
            CodePurpose::Change => "change",
        }
    }
}

/// A code waiting in a mailbox. Not `Debug`: it carries the code.
pub struct EmailCode {
    pub code: Zeroizing<String>,
    pub address: String,
    pub expires: u64,
}

pub struct SqliteStore {
    db: Mutex<Connection>,
}

impl SqliteStore {
    pub const FILE: &str = "smartsign.db";
    /// Names the store that belongs in this directory; see `check_identity`.
    pub const ID_FILE: &str = "store-id";

    /// Opens (creating if needed) `state_dir/smartsign.db`: the directory
    /// 0700, the file 0600, whatever they were before.
    pub fn open(state_dir: &Path) -> StoreResult<SqliteStore> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io { path, source }
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(io(state_dir))?;
        std::fs::set_permissions(state_dir, Permissions::from_mode(0o700))
            .map_err(io(state_dir))?;

        let file = state_dir.join(Self::FILE);
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&file)
            .map_err(io(&file))?;
        std::fs::set_permissions(&file, Permissions::from_mode(0o600)).map_err(io(&file))?;

        let db = Connection::open(&file)?;
        db.busy_timeout(Duration::from_secs(5))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        // Commits reach the OS at once and the disk at the next checkpoint
        // (or `flush`): a killed daemon loses nothing, a power cut may lose
        // the last seconds of used steps and failure counts. Enrollment
        // changes are flushed as they are made.
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.pragma_update(None, "foreign_keys", true)?;
        // Every statement of the login path stays prepared.
        db.set_prepared_statement_cache_capacity(64);
        let store = SqliteStore { db: Mutex::new(db) };
        store.migrate()?;
        store.check_identity(&state_dir.join(Self::ID_FILE))?;
        Ok(store)
    }

    /// A store that was lost (an emptied file, a missing WAL, a backup of
    /// the wrong file) would unenroll everybody, and every login would pass
    /// on the password alone. So the store's random id is kept in a second
    /// file too: when the store turns up without it, the daemon stops.
    fn check_identity(&self, id_file: &Path) -> StoreResult<()> {
        let db = self.lock()?;
        let stored: Option<String> = db
            .prepare_cached("SELECT value FROM meta WHERE key = 'store_id'")?
            .query_row([], |row| row.get(0))
            .optional()?;
        let expected = match std::fs::read_to_string(id_file) {
            Ok(text) => Some(text.trim().to_owned()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(StoreError::Io {
                    path: id_file.to_owned(),
                    source,
                });
            }
        };
        match (stored, expected) {
            (Some(stored), Some(expected)) if stored == expected => Ok(()),
            (Some(_), Some(_)) => Err(StoreError::Lost {
                id_file: id_file.to_owned(),
                why: "holds a different store than the one kept here before",
            }),
            (None, Some(_)) => Err(StoreError::Lost {
                id_file: id_file.to_owned(),
                why: "holds no SmartSign data, but a store was kept here before",
            }),
            (stored, None) => {
                let id = match stored {
                    Some(id) => id,
                    None => {
                        let id = new_store_id().map_err(|err| StoreError::Io {
                            path: id_file.to_owned(),
                            source: err,
                        })?;
                        db.prepare_cached("INSERT INTO meta (key, value) VALUES ('store_id', ?1)")?
                            .execute([&id])?;
                        id
                    }
                };
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(id_file)
                    .map_err(|source| StoreError::Io {
                        path: id_file.to_owned(),
                        source,
                    })?;
                std::io::Write::write_all(&mut file, format!("{id}\n").as_bytes()).map_err(
                    |source| StoreError::Io {
                        path: id_file.to_owned(),
                        source,
                    },
                )?;
                Ok(())
            }
        }
    }

    fn migrate(&self) -> StoreResult<()> {
        let mut db = self.lock()?;
        let found: i64 = db.pragma_query_value(None, "user_version", |row| row.get(0))?;
        let known = MIGRATIONS.len() as i64;
        if found > known {
            return Err(StoreError::NewerSchema { found, known });
        }
        for (index, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let tx = db.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", index as i64 + 1)?;
            tx.commit()?;
        }
        Ok(())
    }

    pub fn schema_version(&self) -> StoreResult<i64> {
        Ok(self
            .lock()?
            .pragma_query_value(None, "user_version", |row| row.get(0))?)
    }

    /// A thread that panicked while holding the connection left no open
    /// transaction behind (dropping one rolls it back), so the lock is
    /// taken over rather than failing every later request.
    fn lock(&self) -> StoreResult<std::sync::MutexGuard<'_, Connection>> {
        Ok(self
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

fn new_store_id() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn since(now: u64, window: Duration) -> i64 {
    now.saturating_sub(window.as_secs()) as i64
}

impl Store for SqliteStore {
    fn phones(&self, user: &str) -> StoreResult<Vec<PhoneRecord>> {
        let db = self.lock()?;
        let mut query = db.prepare_cached(
            "SELECT id, name, secret, confirmed, created, last_step, last_used, push_topic
             FROM phones WHERE user = ?1 ORDER BY id",
        )?;
        let rows = query.query_map([user], |row| {
            Ok(PhoneRecord {
                id: row.get(0)?,
                name: row.get(1)?,
                secret: Zeroizing::new(row.get(2)?),
                confirmed: row.get(3)?,
                created: row.get::<_, i64>(4)? as u64,
                last_step: row.get::<_, i64>(5)? as u64,
                last_used: row.get::<_, Option<i64>>(6)?.map(|t| t as u64),
                push_topic: row.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn put_pending_phone(&self, user: &str, name: &str, secret: &str, now: u64) -> StoreResult<()> {
        let db = self.lock()?;
        let changed = db
            .prepare_cached(
                "INSERT INTO phones (user, name, secret, created) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (user, name) DO UPDATE SET secret = excluded.secret,
                 created = excluded.created
             WHERE confirmed = 0",
            )?
            .execute(params![user, name, secret, now as i64])?;
        if changed == 0 {
            Err(StoreError::Exists)
        } else {
            Ok(())
        }
    }

    fn mark_used(&self, user: &str, name: &str, now: u64) -> StoreResult<()> {
        let db = self.lock()?;
        db.prepare_cached("UPDATE phones SET last_used = ?3 WHERE user = ?1 AND name = ?2")?
            .execute(params![user, name, now as i64])?;
        Ok(())
    }

    fn set_push_topic(&self, user: &str, name: &str, topic: &str) -> StoreResult<()> {
        let db = self.lock()?;
        db.prepare_cached(
            "UPDATE phones SET push_topic = ?3 WHERE user = ?1 AND name = ?2 AND confirmed = 0",
        )?
        .execute(params![user, name, topic])?;
        Ok(())
    }

    fn meta_or_insert(&self, key: &str, value: &str) -> StoreResult<String> {
        let db = self.lock()?;
        db.prepare_cached(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
        )?
        .execute(params![key, value])?;
        Ok(db
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
            .query_row([key], |row| row.get(0))?)
    }

    fn confirm_phone(&self, id: i64, secret: &str, step: u64) -> StoreResult<bool> {
        let db = self.lock()?;
        let changed = db
            .prepare_cached(
                "UPDATE phones SET confirmed = 1, last_step = ?2
             WHERE id = ?1 AND confirmed = 0 AND secret = ?3",
            )?
            .execute(params![id, step as i64, secret])?;
        Ok(changed == 1)
    }

    fn flush(&self) -> StoreResult<()> {
        let db = self.lock()?;
        db.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    fn remove_phone(&self, user: &str, name: &str) -> StoreResult<bool> {
        let db = self.lock()?;
        let changed = db
            .prepare_cached("DELETE FROM phones WHERE user = ?1 AND name = ?2")?
            .execute(params![user, name])?;
        Ok(changed == 1)
    }

    fn claim_step(&self, id: i64, step: u64, now: u64) -> StoreResult<bool> {
        let db = self.lock()?;
        let changed = db
            .prepare_cached(
                "UPDATE phones SET last_step = ?2, last_used = ?3
             WHERE id = ?1 AND confirmed = 1 AND last_step < ?2",
            )?
            .execute(params![id, step as i64, now as i64])?;
        Ok(changed == 1)
    }

    fn record_failure(
        &self,
        user: &str,
        now: u64,
        window: Duration,
        max: u32,
    ) -> StoreResult<Option<u64>> {
        let mut db = self.lock()?;
        let tx = db.transaction()?;
        let since = since(now, window);
        tx.prepare_cached("DELETE FROM failures WHERE at <= ?1")?
            .execute([since])?;
        tx.prepare_cached("INSERT INTO failures (user, at) VALUES (?1, ?2)")?
            .execute(params![user, now as i64])?;
        let count: i64 = tx
            .prepare_cached("SELECT count(*) FROM failures WHERE user = ?1 AND at > ?2")?
            .query_row(params![user, since], |row| row.get(0))?;
        let locked = if count >= i64::from(max) {
            let until = now + window.as_secs();
            tx.prepare_cached(
                "INSERT INTO lockouts (user, until) VALUES (?1, ?2)
                 ON CONFLICT (user) DO UPDATE SET until = excluded.until",
            )?
            .execute(params![user, until as i64])?;
            tx.prepare_cached("DELETE FROM failures WHERE user = ?1")?
                .execute([user])?;
            Some(until)
        } else {
            None
        };
        tx.commit()?;
        Ok(locked)
    }

    fn recent_failures(&self, user: &str, now: u64, window: Duration) -> StoreResult<u32> {
        let db = self.lock()?;
        let count: i64 = db
            .prepare_cached("SELECT count(*) FROM failures WHERE user = ?1 AND at > ?2")?
            .query_row(params![user, since(now, window)], |row| row.get(0))?;
        Ok(count as u32)
    }

    fn clear_failures(&self, user: &str) -> StoreResult<()> {
        self.lock()?
            .prepare_cached("DELETE FROM failures WHERE user = ?1")?
            .execute([user])?;
        Ok(())
    }

    fn locked_until(&self, user: &str, now: u64) -> StoreResult<Option<u64>> {
        let db = self.lock()?;
        let until: Option<i64> = db
            .prepare_cached("SELECT until FROM lockouts WHERE user = ?1 AND until > ?2")?
            .query_row(params![user, now as i64], |row| row.get(0))
            .optional()?;
        Ok(until.map(|t| t as u64))
    }

    fn unlock(&self, user: &str) -> StoreResult<()> {
        let mut db = self.lock()?;
        let tx = db.transaction()?;
        tx.prepare_cached("DELETE FROM lockouts WHERE user = ?1")?
            .execute([user])?;
        tx.prepare_cached("DELETE FROM failures WHERE user = ?1")?
            .execute([user])?;
        tx.prepare_cached("DELETE FROM pushes_sent WHERE user = ?1")?
            .execute([user])?;
        tx.commit()?;
        Ok(())
    }

    fn email(&self, user: &str) -> StoreResult<Option<String>> {
        let db = self.lock()?;
        Ok(db
            .prepare_cached("SELECT address FROM emails WHERE user = ?1")?
            .query_row([user], |row| row.get(0))
            .optional()?)
    }

    fn email_since(&self, user: &str) -> StoreResult<Option<u64>> {
        let db = self.lock()?;
        let since: Option<i64> = db
            .prepare_cached("SELECT since FROM emails WHERE user = ?1")?
            .query_row([user], |row| row.get(0))
            .optional()?;
        Ok(since.map(|t| t as u64))
    }

    fn set_email(&self, user: &str, address: &str, now: u64) -> StoreResult<()> {
        let mut db = self.lock()?;
        let tx = db.transaction()?;
        tx.prepare_cached(
            "INSERT INTO emails (user, address, since) VALUES (?1, ?2, ?3)
             ON CONFLICT (user) DO UPDATE SET address = excluded.address, since = excluded.since",
        )?
        .execute(params![user, address, now as i64])?;
        // Codes mailed to the old address, or waiting to confirm another
        // one, end with this change.
        tx.prepare_cached("DELETE FROM email_codes WHERE user = ?1")?
            .execute([user])?;
        tx.commit()?;
        Ok(())
    }

    fn remove_email(&self, user: &str) -> StoreResult<bool> {
        let mut db = self.lock()?;
        let tx = db.transaction()?;
        let removed = tx
            .prepare_cached("DELETE FROM emails WHERE user = ?1")?
            .execute([user])?;
        tx.prepare_cached("DELETE FROM email_codes WHERE user = ?1")?
            .execute([user])?;
        tx.commit()?;
        Ok(removed == 1)
    }

    fn put_email_code(
        &self,
        user: &str,
        purpose: CodePurpose,
        code: &EmailCode,
    ) -> StoreResult<()> {
        self.lock()?
            .prepare_cached(
                "INSERT INTO email_codes (user, purpose, code, address, expires)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (user, purpose) DO UPDATE SET code = excluded.code,
                 address = excluded.address, expires = excluded.expires",
            )?
            .execute(params![
                user,
                purpose.as_str(),
                code.code.as_str(),
                code.address,
                code.expires as i64
            ])?;
        Ok(())
    }

    fn email_code(&self, user: &str, purpose: CodePurpose) -> StoreResult<Option<EmailCode>> {
        let db = self.lock()?;
        Ok(db
            .prepare_cached(
                "SELECT code, address, expires FROM email_codes WHERE user = ?1 AND purpose = ?2",
            )?
            .query_row(params![user, purpose.as_str()], |row| {
                Ok(EmailCode {
                    code: Zeroizing::new(row.get(0)?),
                    address: row.get(1)?,
                    expires: row.get::<_, i64>(2)? as u64,
                })
            })
            .optional()?)
    }

    fn take_email_code(&self, user: &str, purpose: CodePurpose, code: &str) -> StoreResult<bool> {
        let changed = self
            .lock()?
            .prepare_cached(
                "DELETE FROM email_codes WHERE user = ?1 AND purpose = ?2 AND code = ?3",
            )?
            .execute(params![user, purpose.as_str(), code])?;
        Ok(changed == 1)
    }

    fn mails_since(&self, user: &str, since: u64) -> StoreResult<u32> {
        let db = self.lock()?;
        let count: i64 = db
            .prepare_cached("SELECT count(*) FROM mails_sent WHERE user = ?1 AND at > ?2")?
            .query_row(params![user, since as i64], |row| row.get(0))?;
        Ok(count as u32)
    }

    fn replace_backup_codes(&self, user: &str, hashes: &[String]) -> StoreResult<()> {
        let mut db = self.lock()?;
        let tx = db.transaction()?;
        tx.prepare_cached("DELETE FROM backup_codes WHERE user = ?1")?
            .execute([user])?;
        for hash in hashes {
            tx.prepare_cached("INSERT INTO backup_codes (user, hash) VALUES (?1, ?2)")?
                .execute(params![user, hash])?;
        }
        tx.commit()?;
        Ok(())
    }

    fn backup_codes(&self, user: &str) -> StoreResult<Vec<(i64, String)>> {
        let db = self.lock()?;
        let mut query = db
            .prepare_cached("SELECT id, hash FROM backup_codes WHERE user = ?1 AND used IS NULL")?;
        let rows = query.query_map([user], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn disabled(&self, user: &str) -> StoreResult<Option<bool>> {
        let db = self.lock()?;
        Ok(db
            .prepare_cached("SELECT by_root FROM disabled WHERE user = ?1")?
            .query_row([user], |row| row.get(0))
            .optional()?)
    }

    fn set_disabled(&self, user: &str, by_root: Option<bool>, now: u64) -> StoreResult<()> {
        let db = self.lock()?;
        match by_root {
            Some(by_root) => db
                .prepare_cached(
                    "INSERT INTO disabled (user, since, by_root) VALUES (?1, ?2, ?3)
                     ON CONFLICT (user) DO UPDATE
                     SET since = excluded.since, by_root = excluded.by_root",
                )?
                .execute(params![user, now as i64, by_root])?,
            None => db
                .prepare_cached("DELETE FROM disabled WHERE user = ?1")?
                .execute([user])?,
        };
        Ok(())
    }

    fn reset(&self, user: &str) -> StoreResult<()> {
        let mut db = self.lock()?;
        let tx = db.transaction()?;
        for table in [
            "phones",
            "failures",
            "lockouts",
            "emails",
            "email_codes",
            "backup_codes",
            "disabled",
            "pushes_sent",
        ] {
            tx.execute(&format!("DELETE FROM {table} WHERE user = ?1"), [user])?;
        }
        tx.commit()?;
        Ok(())
    }

    fn use_backup_code(&self, id: i64, now: u64) -> StoreResult<bool> {
        let changed = self
            .lock()?
            .prepare_cached("UPDATE backup_codes SET used = ?2 WHERE id = ?1 AND used IS NULL")?
            .execute(params![id, now as i64])?;
        Ok(changed == 1)
    }

    fn record_mail(&self, user: &str, now: u64) -> StoreResult<()> {
        let mut db = self.lock()?;
        let tx = db.transaction()?;
        // A day of history is all any limit looks at.
        tx.prepare_cached("DELETE FROM mails_sent WHERE at < ?1")?
            .execute([now.saturating_sub(86_400) as i64])?;
        tx.prepare_cached("INSERT INTO mails_sent (user, at) VALUES (?1, ?2)")?
            .execute(params![user, now as i64])?;
        tx.commit()?;
        Ok(())
    }

    fn pushes_since(&self, user: &str, since: u64) -> StoreResult<Vec<u64>> {
        let db = self.lock()?;
        let mut query = db
            .prepare_cached("SELECT at FROM pushes_sent WHERE user = ?1 AND at > ?2 ORDER BY at")?;
        let rows = query.query_map(params![user, since as i64], |row| {
            Ok(row.get::<_, i64>(0)? as u64)
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn record_push(&self, user: &str, now: u64) -> StoreResult<()> {
        let mut db = self.lock()?;
        let tx = db.transaction()?;
        tx.prepare_cached("DELETE FROM pushes_sent WHERE at < ?1")?
            .execute([now.saturating_sub(86_400) as i64])?;
        tx.prepare_cached("INSERT INTO pushes_sent (user, at) VALUES (?1, ?2)")?
            .execute(params![user, now as i64])?;
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::sync::Arc;

    pub(crate) fn temp_state(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("smartsignd-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn files_are_private_and_schema_is_current() {
        let dir = temp_state("perms");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        let store = SqliteStore::open(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        let file = dir.join(SqliteStore::FILE);
        assert_eq!(std::fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
        drop(store);
        // Reopening migrates nothing and keeps the data.
        let store = SqliteStore::open(&dir).unwrap();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = temp_state("newer");
        drop(SqliteStore::open(&dir).unwrap());
        let db = Connection::open(dir.join(SqliteStore::FILE)).unwrap();
        db.pragma_update(None, "user_version", 99).unwrap();
        drop(db);
        let err = SqliteStore::open(&dir).err().unwrap();
        assert!(
            matches!(err, StoreError::NewerSchema { found: 99, .. }),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_damaged_file_is_an_error_not_a_panic() {
        let dir = temp_state("damaged");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(SqliteStore::FILE),
            b"this is not a database, just junk bytes",
        )
        .unwrap();
        assert!(SqliteStore::open(&dir).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn pending_then_confirmed() {
        let dir = temp_state("phones");
        let store = SqliteStore::open(&dir).unwrap();
        store
            .put_pending_phone("alice", "Pixel", "AAAA", 10)
            .unwrap();
        store
            .put_pending_phone("alice", "Pixel", "BBBB", 11)
            .unwrap();
        let phones = store.phones("alice").unwrap();
        assert_eq!(phones.len(), 1);
        assert_eq!(*phones[0].secret, "BBBB");
        assert!(!phones[0].confirmed);
        // Logins cannot claim steps on a pending phone.
        assert!(!store.claim_step(phones[0].id, 5, 12).unwrap());
        assert!(
            !store.confirm_phone(phones[0].id, "AAAA", 7).unwrap(),
            "the replaced secret"
        );
        assert!(store.confirm_phone(phones[0].id, "BBBB", 7).unwrap());
        assert!(!store.confirm_phone(phones[0].id, "BBBB", 8).unwrap());
        assert!(matches!(
            store.put_pending_phone("alice", "Pixel", "CCCC", 13),
            Err(StoreError::Exists)
        ));
        assert!(store.phones("bob").unwrap().is_empty());
        assert!(store.remove_phone("alice", "Pixel").unwrap());
        assert!(!store.remove_phone("alice", "Pixel").unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_step_is_claimed_once_even_under_a_race() {
        let dir = temp_state("race");
        let store = Arc::new(SqliteStore::open(&dir).unwrap());
        store
            .put_pending_phone("alice", "Pixel", "AAAA", 1)
            .unwrap();
        let id = store.phones("alice").unwrap()[0].id;
        store.confirm_phone(id, "AAAA", 100).unwrap();
        assert!(
            !store.claim_step(id, 100, 2).unwrap(),
            "the confirming step is used"
        );

        let winners: usize = (0..8)
            .map(|_| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || store.claim_step(id, 101, 3).unwrap())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| usize::from(t.join().unwrap()))
            .sum();
        assert_eq!(winners, 1);
        assert!(
            !store.claim_step(id, 100, 4).unwrap(),
            "an older step stays refused"
        );
        assert_eq!(store.phones("alice").unwrap()[0].last_used, Some(3));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn failures_lock_for_the_window() {
        let dir = temp_state("lockout");
        let store = SqliteStore::open(&dir).unwrap();
        let window = Duration::from_secs(60);
        assert_eq!(
            store.record_failure("alice", 1000, window, 3).unwrap(),
            None
        );
        // A failure that has left the window no longer counts.
        assert_eq!(
            store.record_failure("alice", 1061, window, 3).unwrap(),
            None
        );
        assert_eq!(
            store.record_failure("alice", 1062, window, 3).unwrap(),
            None
        );
        assert_eq!(store.recent_failures("alice", 1062, window).unwrap(), 2);
        assert_eq!(
            store.record_failure("alice", 1063, window, 3).unwrap(),
            Some(1123)
        );
        assert_eq!(store.locked_until("alice", 1100).unwrap(), Some(1123));
        assert_eq!(store.locked_until("alice", 1123).unwrap(), None);
        assert_eq!(store.locked_until("bob", 1100).unwrap(), None);
        store.record_failure("alice", 1200, window, 3).unwrap();
        store.clear_failures("alice").unwrap();
        assert_eq!(store.recent_failures("alice", 1200, window).unwrap(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_lost_store_stops_the_daemon_instead_of_unenrolling_everybody() {
        let dir = temp_state("lost");
        let store = SqliteStore::open(&dir).unwrap();
        store
            .put_pending_phone("alice", "Pixel", "AAAA", 1)
            .unwrap();
        store.flush().unwrap();
        drop(store);
        let id_file = dir.join(SqliteStore::ID_FILE);
        assert_eq!(std::fs::metadata(&id_file).unwrap().mode() & 0o777, 0o600);

        // The file emptied (or restored without its WAL): refused, twice.
        let db = dir.join(SqliteStore::FILE);
        let saved = std::fs::read(&db).unwrap();
        std::fs::write(&db, b"").unwrap();
        for _ in 0..2 {
            let err = SqliteStore::open(&dir).err().unwrap();
            assert!(matches!(err, StoreError::Lost { .. }), "{err}");
            assert!(
                err.to_string().contains("restore the store from a backup"),
                "{err}"
            );
        }

        // The right file back: it opens, with its data.
        std::fs::write(&db, &saved).unwrap();
        let store = SqliteStore::open(&dir).unwrap();
        assert_eq!(store.phones("alice").unwrap().len(), 1);
        drop(store);

        // Another host's store in its place: refused.
        let other = temp_state("lost-other");
        drop(SqliteStore::open(&other).unwrap());
        std::fs::copy(other.join(SqliteStore::FILE), &db).unwrap();
        assert!(matches!(
            SqliteStore::open(&dir),
            Err(StoreError::Lost { .. })
        ));

        // An admin who removes the id file starts afresh on purpose.
        std::fs::remove_file(&id_file).unwrap();
        assert!(SqliteStore::open(&dir).is_ok());
        assert!(id_file.exists());
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&other);
    }

    /// A store of schema 1 (the first release) opens under this build with
    /// its phones intact and the newer tables added.
    #[test]
    fn version_1_stores_migrate() {
        let dir = temp_state("migrate");
        std::fs::create_dir_all(&dir).unwrap();
        let db = Connection::open(dir.join(SqliteStore::FILE)).unwrap();
        db.execute_batch(MIGRATIONS[0]).unwrap();
        db.pragma_update(None, "user_version", 1).unwrap();
        db.execute(
            "INSERT INTO phones (user, name, secret, confirmed, created) VALUES ('alice', 'P', 'S', 1, 5)",
            [],
        )
        .unwrap();
        drop(db);
        let store = SqliteStore::open(&dir).unwrap();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
        assert_eq!(store.phones("alice").unwrap().len(), 1);
        assert_eq!(store.email("alice").unwrap(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn email_codes_are_replaced_and_taken_once() {
        let dir = temp_state("email");
        let store = SqliteStore::open(&dir).unwrap();
        let code = |c: &str| EmailCode {
            code: Zeroizing::new(c.into()),
            address: "a@b.c".into(),
            expires: 99,
        };
        store
            .put_email_code("alice", CodePurpose::Login, &code("11111111"))
            .unwrap();
        store
            .put_email_code("alice", CodePurpose::Login, &code("22222222"))
            .unwrap();
        assert!(
            !store
                .take_email_code("alice", CodePurpose::Login, "11111111")
                .unwrap()
        );
        assert!(
            !store
                .take_email_code("alice", CodePurpose::ConfirmAddress, "22222222")
                .unwrap()
        );
        assert!(
            store
                .take_email_code("alice", CodePurpose::Login, "22222222")
                .unwrap()
        );
        assert!(
            !store
                .take_email_code("alice", CodePurpose::Login, "22222222")
                .unwrap()
        );

        store.record_mail("alice", 1000).unwrap();
        store.record_mail("alice", 2000).unwrap();
        assert_eq!(store.mails_since("alice", 1500).unwrap(), 1);
        assert_eq!(store.mails_since("bob", 0).unwrap(), 0);
        store.set_email("alice", "a@b.c", 1).unwrap();
        assert_eq!(store.email("alice").unwrap().as_deref(), Some("a@b.c"));
        assert!(store.remove_email("alice").unwrap());
        assert!(!store.remove_email("alice").unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
