//! pglock's own log lines on stderr (contract §8): one line an event, `pglock: ...` for people or
//! one JSON object a line with `--log-format json`. Every line carries the run id, which the child
//! also receives as `PGLOCK_RUN_ID`.
//!
//! A process-wide logger: pglock is one short-lived process with one run, and the events come from
//! every layer (connection, lock, child), so passing a handle everywhere would add nothing.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::{Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    Quiet,
    Normal,
    Verbose,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub verbosity: Verbosity,
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

/// A field value of a JSON log line.
pub enum V<'a> {
    S(&'a str),
    I(i64),
}

struct Logger {
    settings: LogSettings,
    run_id: String,
    key: String,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// The lock id as a JSON value: a number, `"A,B"` for the two-int4 form, `null` until the server
/// has computed it (`--key-hashtext`, `--lock-of`).
static LOCK_ID: Mutex<String> = Mutex::new(String::new());

/// Sets the `lock_id` of the lines that follow (a JSON value).
pub fn set_lock_id(json: String) {
    *LOCK_ID.lock().unwrap_or_else(|e| e.into_inner()) = json;
}

/// The phases of a run, for `waited_ms` and `ran_ms` of the last event.
struct Clock {
    start: Instant,
    acquired: Option<Instant>,
    child_start: Option<Instant>,
    child_end: Option<Instant>,
}

static CLOCK: Mutex<Option<Clock>> = Mutex::new(None);

pub fn init(settings: LogSettings, run_id: String, key: String, lock_id: String) {
    let _ = LOGGER.set(Logger {
        settings,
        run_id,
        key,
    });
    set_lock_id(lock_id);
    *CLOCK.lock().unwrap_or_else(|e| e.into_inner()) = Some(Clock {
        start: Instant::now(),
        acquired: None,
        child_start: None,
        child_end: None,
    });
}

pub enum Mark {
    Acquired,
    ChildStart,
    ChildEnd,
}

pub fn mark(m: Mark) {
    let mut guard = CLOCK.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = guard.as_mut() {
        let now = Some(Instant::now());
        match m {
            Mark::Acquired => c.acquired = now,
            Mark::ChildStart => c.child_start = now,
            Mark::ChildEnd => c.child_end = now,
        }
    }
}

/// (waited_ms, ran_ms) so far: time until the lock was acquired (or until now when it was not),
/// and the child's run time.
pub fn timings() -> (i64, i64) {
    let guard = CLOCK.lock().unwrap_or_else(|e| e.into_inner());
    let Some(c) = guard.as_ref() else {
        return (0, 0);
    };
    let now = Instant::now();
    let waited = c.acquired.unwrap_or(now).duration_since(c.start);
    let ran = match c.child_start {
        Some(s) => c.child_end.unwrap_or(now).duration_since(s),
        None => Default::default(),
    };
    (waited.as_millis() as i64, ran.as_millis() as i64)
}

pub fn enabled(level: Level) -> bool {
    let verbosity = LOGGER
        .get()
        .map_or(Verbosity::Normal, |l| l.settings.verbosity);
    match verbosity {
        Verbosity::Quiet => level == Level::Error,
        Verbosity::Normal => level <= Level::Info,
        Verbosity::Verbose => true,
    }
}

/// Emits one event: `msg` for the text form, `fields` for the JSON form (which also has the msg).
pub fn event(level: Level, event: &str, msg: &str, fields: &[(&str, V)]) {
    if !enabled(level) {
        return;
    }
    let line = match LOGGER.get() {
        Some(l) if l.settings.json => json_line(l, level, event, msg, fields),
        Some(l) => format!("pglock: {msg} [run {}]\n", l.run_id),
        None => format!("pglock: {msg}\n"),
    };
    // One write of the whole line, so that lines from concurrent pglocks do not interleave.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

pub fn info(ev: &str, msg: &str, fields: &[(&str, V)]) {
    event(Level::Info, ev, msg, fields)
}
pub fn warn(ev: &str, msg: &str, fields: &[(&str, V)]) {
    event(Level::Warn, ev, msg, fields)
}
pub fn debug(ev: &str, msg: &str) {
    event(Level::Debug, ev, msg, &[])
}

fn json_line(l: &Logger, level: Level, event: &str, msg: &str, fields: &[(&str, V)]) -> String {
    let mut s = String::with_capacity(256);
    s.push_str("{\"ts\":");
    json_str(&mut s, &rfc3339_now());
    s.push_str(",\"level\":");
    json_str(&mut s, level.as_str());
    s.push_str(",\"event\":");
    json_str(&mut s, event);
    s.push_str(",\"key\":");
    json_str(&mut s, &l.key);
    let _ = write!(
        s,
        ",\"lock_id\":{}",
        LOCK_ID.lock().unwrap_or_else(|e| e.into_inner())
    );
    s.push_str(",\"run_id\":");
    json_str(&mut s, &l.run_id);
    s.push_str(",\"msg\":");
    json_str(&mut s, msg);
    for (k, v) in fields {
        s.push(',');
        json_str(&mut s, k);
        s.push(':');
        match v {
            V::S(t) => json_str(&mut s, t),
            V::I(n) => {
                let _ = write!(s, "{n}");
            }
        }
    }
    s.push_str("}\n");
    s
}

/// Text that came from the server (role and application names, addresses, messages), safe to
/// print: every control character (terminal escapes, BEL, carriage returns, line feeds) becomes a
/// space, so a line stays one line that cannot forge a `pglock:` line or drive the terminal
/// (contract §8). The one function every such text passes through, in every output.
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

pub fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Now as `2026-11-28T01:50:00.123Z`.
pub fn rfc3339_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs() as i64, d.subsec_millis())
}

fn rfc3339(secs: i64, millis: u32) -> String {
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The date (year, month, day) of a day since 1970-01-01, proleptic Gregorian (Howard Hinnant's
/// `civil_from_days`).
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A new run id: 16 hex digits from the kernel's random source (time and pid as a fallback).
pub fn new_run_id() -> String {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        b = (t.as_nanos() as u64 ^ (u64::from(std::process::id()) << 40)).to_be_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_830_600, 5), "2026-11-28T01:50:00.005Z");
        assert_eq!(rfc3339(951_782_400, 0), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn server_text_is_printable() {
        assert_eq!(
            printable("evil\u{1b}[31m\u{7}x\npglock: forged\r\u{9b}"),
            "evil [31m x pglock: forged  "
        );
    }

    #[test]
    fn escapes() {
        let mut s = String::new();
        json_str(&mut s, "a\"b\\c\n\u{1}");
        assert_eq!(s, r#""a\"b\\c\n\u0001""#);
    }
}
