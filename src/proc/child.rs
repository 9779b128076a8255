//! The child (contract §5) and the loop that supervises it, in the manner of tini and sudo: one
//! thread polls the signal pipe and the lock connection's socket. SIGCHLD reaps (every child,
//! which matters as PID 1 and as the child subreaper pglock makes itself); signals are forwarded;
//! the socket and the heartbeat tick watch the lock.
//!
//! **A job of its own.** The child leads a process group of its own (spawn.rs), the way a shell
//! starts a job. So a signal sent to pglock's process group (GNU `timeout`, a CI runner, `kill
//! -INT -PGID`) reaches pglock alone, and a lost lock, `--max-runtime` or pglock's death (guard.rs)
//! can stop the child's whole group: SIGTERM (with SIGCONT, so that a stopped job handles it),
//! SIGKILL after `--kill-after`.
//!
//! **Forwarding.** What reaches pglock has not reached the child, so pglock forwards every
//! forwarded signal it receives, once, to the child (to its group once the child has exited and
//! members remain). One process that sends INT, TERM or QUIT twice within `SAME_SIGNAL` counts once:
//! GNU `timeout` signals its child (pglock), then its own process group (pglock again). The
//! kernel merges such repeats too when the first is still pending; this widens that to a moment.
//!
//! **The terminal** (sudo's model). When pglock's group is the terminal's foreground at the
//! start, the child's group takes it (spawn.rs): Ctrl-C, Ctrl-\ and a resize reach the child's
//! group alone (pglock, in another group, gets nothing to forward), and the command reads the
//! terminal. Ctrl-Z stops the child's group; pglock sees it stop (`WUNTRACED`), takes the terminal
//! back and stops itself with the same signal, so the shell sees the job stopped. `fg` continues
//! pglock (SIGCONT), which hands the terminal back to the child's group and continues it; `bg`
//! continues it without the terminal. A child that stops reading the terminal from the
//! background while pglock's group has it gets the terminal and is continued. When pglock's
//! group is orphaned (no job-control shell above it could continue it) the kernel discards its
//! stop, and pglock continues the child's group at once, as the kernel would do with a job there.
//!
//! **The group ends with the lock.** When the child exits and processes of its group remain
//! (`cmd &` in a script), pglock stops them (SIGTERM, SIGKILL after `--kill-after`) before the
//! lock is released, and exits with the child's status: contract §5, the child's whole group
//! never outlives the lock's protection (tini and sudo leave them running; the container's end or
//! the terminal's hang-up usually takes them, which a lock cannot count on).
//!
//! `Supervisor` decides (each handler short and tested without a server); `Loop` waits for
//! events and carries out the `Action`s.

use crate::error::{Error, Kind, Result};
use crate::log;
use crate::pg::{Conn, QueryResult, ReadErr};
use crate::proc::guard::group;
use crate::proc::spawn::{ChildSlot, Exec};
use crate::signals::{self, Received, Signals};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

/// Repeats of one signal from one sender within this count once (see the module's comment).
const SAME_SIGNAL: Duration = Duration::from_millis(200);
/// How often the end of the child's group is checked once the child has exited.
const GROUP_POLL: Duration = Duration::from_millis(10);
/// How long the group may take to vanish once it has had SIGKILL (a process in an
/// uninterruptible sleep dies when it leaves it, and runs no code of its own meanwhile).
const AFTER_KILL: Duration = Duration::from_secs(1);

/// Prepares COMMAND's start (see `spawn`): `env` is added to the inherited environment;
/// `remove` names variables the child must not inherit.
pub fn prepare(command: &[OsString], env: &[(&str, String)], remove: &[&str]) -> Result<Exec> {
    Exec::new(command, env, remove).map_err(|e| not_started(command, e))
}

/// The running child: its pid, which is also its process group's id, and the terminal.
pub struct Child {
    pub pid: Pid,
    terminal: Option<Terminal>,
}

impl std::fmt::Display for Child {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.pid.fmt(f)
    }
}

/// Starts a prepared command without a shell, in a process group of its own that takes the
/// terminal when pglock's group has it; `slot` receives what the guard needs of the child.
pub fn start(command: &[OsString], exec: &Exec, slot: Option<&ChildSlot>) -> Result<Child> {
    // Orphans of the child's group come to pglock, which reaps them: a zombie of the group is
    // not left to a reaper that may never run (see `group::alive`).
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_child_subreaper(true);
    let mut terminal = Terminal::open();
    let tty = terminal.as_ref().filter(|t| t.ours()).map(|t| t.fd.as_fd());
    // No signal is lost around the spawn: one that arrives meanwhile waits in the pipe (or, while
    // the child is being started, in the blocked mask) and is forwarded once the pid is known.
    match exec.spawn(slot, tty) {
        Ok(pid) => {
            let pid = Pid::from_raw(pid);
            if let Some(t) = terminal.as_mut() {
                t.child = pid;
            }
            Ok(Child { pid, terminal })
        }
        Err(e) => {
            // The child may have taken the terminal before its exec failed.
            if let (Some(t), Some(_)) = (&terminal, tty) {
                t.reclaim();
            }
            Err(not_started(command, e))
        }
    }
}

pub fn not_started(command: &[OsString], e: std::io::Error) -> Error {
    let name = command[0].to_string_lossy();
    if e.kind() == std::io::ErrorKind::NotFound {
        Error::new(Kind::NotFound, format!("command not found: {name}"))
    } else {
        Error::new(Kind::NotExecutable, format!("cannot execute {name}: {e}"))
    }
}

/// pglock's controlling terminal, whose foreground goes to the child's group and back.
struct Terminal {
    fd: OwnedFd,
    /// pglock's process group.
    own: Pid,
    /// The child's process group (its pid), once started.
    child: Pid,
}

impl Terminal {
    /// The controlling terminal, if pglock has one and reads it: a command started in the
    /// background of a script without job control shares the script's (foreground) process group
    /// but gets /dev/null as stdin (POSIX), and must not take the terminal from the script.
    fn open() -> Option<Terminal> {
        use nix::fcntl::{open, OFlag};
        if !nix::unistd::isatty(std::io::stdin()).unwrap_or(false) {
            return None;
        }
        let fd = open(
            "/dev/tty",
            OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ok()?;
        Some(Terminal {
            fd,
            own: nix::unistd::getpgrp(),
            child: Pid::from_raw(0),
        })
    }

    #[inline(never)]
    fn foreground(&self) -> Option<Pid> {
        // rustix's, a bare ioctl: no errno to read on the way.
        let pgrp = rustix::termios::tcgetpgrp(&self.fd).ok()?;
        Some(Pid::from_raw(pgrp.as_raw_nonzero().get()))
    }

    /// Whether pglock's group is the terminal's foreground.
    fn ours(&self) -> bool {
        self.foreground() == Some(self.own)
    }

    /// Makes `pgrp` the foreground, with SIGTTOU blocked: pglock may be in the background.
    fn set(&self, pgrp: Pid) {
        use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
        let mut ttou = SigSet::empty();
        ttou.add(Signal::SIGTTOU);
        let mut old = SigSet::empty();
        let _ = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&ttou), Some(&mut old));
        let to = rustix::process::Pid::from_raw(pgrp.as_raw());
        if let Err(e) = to.map_or(Err(rustix::io::Errno::INVAL), |to| {
            rustix::termios::tcsetpgrp(&self.fd, to)
        }) {
            log::debug(
                "terminal",
                &format!("cannot hand the terminal to group {pgrp}: {e}"),
            );
        }
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    }

    /// To the child's group, when pglock's group has it (not after `bg`).
    fn give(&self) {
        if self.ours() {
            self.set(self.child);
        }
    }

    /// Back to pglock's group, when the child's group has it (not after a shell took it).
    fn take(&self) {
        if self.foreground() == Some(self.child) {
            self.set(self.own);
        }
    }

    /// Back to pglock's group from a child that failed to start.
    fn reclaim(&self) {
        if !self.ours() {
            self.set(self.own);
        }
    }
}

impl Drop for Terminal {
    /// The child's group is gone: the terminal returns to pglock's group, whose shell waits.
    fn drop(&mut self) {
        self.take();
    }
}

/// How the child's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The child exited (its code, or 128+N for signal N).
    Exited(i32),
    /// The lock was lost while the child ran; the child's group was stopped.
    LockLost(String),
    /// `--max-runtime` elapsed; the child's group was stopped.
    MaxRuntime,
}

/// What the loop watches besides the child: the lock connection (absent when an ancestor pglock
/// holds the lock) and the time limits.
pub struct Watch<'a> {
    pub conn: Option<&'a mut Conn>,
    /// A query that returns `t` while this session holds the lock.
    pub check_sql: String,
    pub heartbeat: Duration,
    pub kill_after: Duration,
    pub max_runtime: Option<Duration>,
}

/// The heartbeat's answer: why the lock is lost, or `None` while this session holds it.
fn heartbeat_verdict(result: QueryResult) -> Option<String> {
    match result {
        QueryResult::Rows(rows) => match rows.first().and_then(|r| r.first()) {
            Some(Some(v)) if v == "t" => None,
            _ => Some("the session that took the lock no longer serves this connection, or its transaction ended".into()),
        },
        QueryResult::Error(e) => Some(format!("the lock check failed: {e}")),
    }
}

/// What the supervisor asks of the world; `Loop::apply` carries it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send the signal to the child (forwarding).
    Forward(Signal),
    /// Send the signal to the child's process group.
    Group(Signal),
    /// Send the heartbeat's lock check.
    Heartbeat,
    /// Hand the terminal to the child's group, if pglock's group has it.
    GiveTerminal,
    /// Take the terminal back from the child's group.
    TakeTerminal,
    /// Stop pglock itself with this signal, as its job stopped.
    StopSelf(Signal),
}

#[derive(Debug)]
enum Phase {
    /// The child runs; the lock and the time limit are watched.
    Running,
    /// A reason to end came: the group has had SIGTERM and gets SIGKILL at `kill_at` (`None`
    /// once sent); the run ends with `end` once the group is gone, or at `give_up` after SIGKILL.
    Stopping {
        end: End,
        kill_at: Option<Instant>,
        give_up: Option<Instant>,
    },
}

/// The supervision's state and its decisions: each handler takes one event and returns what to
/// do, with no system call of its own (the tests below need no server and no child).
#[derive(Debug)]
pub struct Supervisor {
    phase: Phase,
    /// The child's status once reaped; its group may outlive it.
    code: Option<i32>,
    /// A lock connection to watch (none when an ancestor pglock holds the lock).
    watching: bool,
    heartbeat: Duration,
    kill_after: Duration,
    next_heartbeat: Instant,
    /// When the unanswered heartbeat was sent.
    heartbeat_sent: Option<Instant>,
    max_runtime_at: Option<Instant>,
    /// The last forwarded signal sent by a process: (signal, sender, when).
    last_forwarded: Option<(Signal, i32, Instant)>,
    /// pglock stopped itself with its job and has not been continued yet.
    suspended: bool,
    /// The SIGCONT that continued pglock is still in the pipe, and already acted on.
    continued_early: bool,
}

impl Supervisor {
    pub fn new(now: Instant, w: &Watch) -> Supervisor {
        Supervisor {
            phase: Phase::Running,
            code: None,
            watching: w.conn.is_some(),
            heartbeat: w.heartbeat,
            kill_after: w.kill_after,
            next_heartbeat: now + w.heartbeat,
            heartbeat_sent: None,
            max_runtime_at: w.max_runtime.map(|d| now + d),
            last_forwarded: None,
            suspended: false,
            continued_early: false,
        }
    }

    /// Whether the lock connection is watched now (not once the group is being stopped).
    pub fn watches_lock(&self) -> bool {
        self.watching && matches!(self.phase, Phase::Running)
    }

    /// When the loop must wake at the latest: the next heartbeat, the time limit, SIGKILL, and
    /// while the child's group outlives it, the next look at the group.
    pub fn wake(&self, now: Instant) -> Instant {
        let mut at = vec![now + Duration::from_secs(3600)];
        match &self.phase {
            Phase::Running => {
                at.extend(self.watching.then_some(self.next_heartbeat));
                at.extend(self.max_runtime_at);
            }
            Phase::Stopping { kill_at, .. } => at.extend(*kill_at),
        }
        at.extend(self.code.map(|_| now + GROUP_POLL));
        at.into_iter().min().unwrap_or(now)
    }

    /// A signal from the pipe.
    pub fn on_signal(&mut self, r: Received, now: Instant) -> Vec<Action> {
        match r.sig {
            Signal::SIGCHLD => vec![],
            Signal::SIGCONT if std::mem::take(&mut self.continued_early) => vec![],
            Signal::SIGCONT => self.on_resumed(now),
            Signal::SIGTSTP => vec![Action::Group(Signal::SIGTSTP)],
            _ if self.repeated(r, now) => {
                log::debug(
                    "signal",
                    &format!(
                        "{} again from process {} at once: counted once",
                        r.sig, r.sender
                    ),
                );
                vec![]
            }
            sig => {
                log::debug("signal", &format!("forwarding {sig} to the command"));
                vec![self.to_child(sig)]
            }
        }
    }

    /// Whether `r` repeats a signal the same process sent within `SAME_SIGNAL`; remembers it
    /// when not.
    fn repeated(&mut self, r: Received, now: Instant) -> bool {
        // Only the signals that supervisors send to a job and then to its group (GNU timeout,
        // CI runners): a second HUP, USR1 or USR2 is a request of its own (a reload, a report).
        if !matches!(r.sig, Signal::SIGINT | Signal::SIGTERM | Signal::SIGQUIT) {
            return false;
        }
        let same = self.last_forwarded.is_some_and(|(sig, from, at)| {
            sig == r.sig && from == r.sender && now.duration_since(at) < SAME_SIGNAL
        });
        if !same && r.sender != 0 {
            self.last_forwarded = Some((r.sig, r.sender, now));
        }
        same && r.sender != 0
    }

    /// The child while it lives; its group once it has exited and members remain.
    fn to_child(&self, sig: Signal) -> Action {
        match self.code {
            None => Action::Forward(sig),
            Some(_) => Action::Group(sig),
        }
    }

    /// pglock runs again (SIGCONT, or a stop the kernel discarded): so does the job, with the
    /// terminal if pglock's group has it (`fg`, not `bg`). A heartbeat outstanding over the
    /// stop waits afresh: the server could not answer a stopped process.
    pub fn on_resumed(&mut self, now: Instant) -> Vec<Action> {
        if std::mem::take(&mut self.suspended) {
            self.heartbeat_sent = self.heartbeat_sent.map(|_| now);
            self.next_heartbeat = now + self.heartbeat;
        }
        vec![Action::GiveTerminal, Action::Group(Signal::SIGCONT)]
    }

    /// pglock runs again after it stopped itself; `continued`: by a SIGCONT (still in the pipe,
    /// to be ignored there), not because the kernel discarded the stop. Acted on at once, before
    /// anything else looks at the clock.
    pub fn on_self_stop_over(&mut self, continued: bool, now: Instant) -> Vec<Action> {
        self.continued_early = continued;
        self.on_resumed(now)
    }

    /// The child stopped with `sig`; `terminal_ours`: pglock's group has the terminal.
    pub fn on_child_stopped(&mut self, sig: Signal, terminal_ours: bool) -> Vec<Action> {
        use Signal::{SIGTSTP, SIGTTIN, SIGTTOU};
        if !matches!(self.phase, Phase::Running) {
            // It must run to handle its SIGTERM.
            return vec![Action::Group(Signal::SIGCONT)];
        }
        match sig {
            // It wants the terminal, which pglock's group holds: hand it over (sudo does).
            SIGTTIN | SIGTTOU if terminal_ours => {
                vec![Action::GiveTerminal, Action::Group(Signal::SIGCONT)]
            }
            // Ctrl-Z, or the terminal from the background: the whole job stops.
            SIGTSTP | SIGTTIN | SIGTTOU => {
                self.suspended = true;
                vec![Action::TakeTerminal, Action::StopSelf(sig)]
            }
            // SIGSTOP (a debugger, an operator): theirs to continue.
            _ => vec![],
        }
    }

    /// The child exited with `code`; `group_alive`: processes of its group remain.
    pub fn on_child_exit(&mut self, code: i32, group_alive: bool, now: Instant) -> Vec<Action> {
        self.code = Some(code);
        if group_alive && matches!(self.phase, Phase::Running) {
            return self.stop(End::Exited(code), now);
        }
        vec![]
    }

    /// What the lock connection's socket brought.
    pub fn on_socket(
        &mut self,
        read: std::result::Result<Option<QueryResult>, ReadErr>,
        now: Instant,
    ) -> Vec<Action> {
        let why = match read {
            Ok(None) => return vec![],
            Ok(Some(result)) => {
                self.heartbeat_sent = None;
                match heartbeat_verdict(result) {
                    Some(why) => why,
                    None => return vec![],
                }
            }
            Err(ReadErr::Protocol(m)) => format!("the server broke the protocol ({m})"),
            Err(e) => format!("the connection to the server broke ({e})"),
        };
        self.stop(End::LockLost(why), now)
    }

    /// The heartbeat and the time limit.
    pub fn on_tick(&mut self, now: Instant) -> Vec<Action> {
        if !matches!(self.phase, Phase::Running) {
            return vec![];
        }
        if self.max_runtime_at.is_some_and(|d| now >= d) {
            return self.stop(End::MaxRuntime, now);
        }
        if !self.watching || now < self.next_heartbeat {
            return vec![];
        }
        self.next_heartbeat = now + self.heartbeat;
        match self.heartbeat_sent {
            Some(sent) => {
                let ms = now.duration_since(sent).as_millis();
                let why = format!("no answer from the server for {ms} ms (heartbeat)");
                self.stop(End::LockLost(why), now)
            }
            None => {
                self.heartbeat_sent = Some(now);
                vec![Action::Heartbeat]
            }
        }
    }

    /// The heartbeat could not be sent.
    pub fn on_heartbeat_failed(&mut self, e: &ReadErr, now: Instant) -> Vec<Action> {
        let why = format!("the connection to the server broke ({e})");
        self.stop(End::LockLost(why), now)
    }

    /// `--kill-after` since SIGTERM: SIGKILL to the group.
    pub fn on_deadline(&mut self, now: Instant) -> Vec<Action> {
        let Phase::Stopping {
            kill_at, give_up, ..
        } = &mut self.phase
        else {
            return vec![];
        };
        if !kill_at.is_some_and(|k| now >= k) {
            return vec![];
        }
        *kill_at = None;
        *give_up = Some(now + AFTER_KILL);
        log::warn(
            "kill",
            "the command's process group did not stop within --kill-after; sending it SIGKILL",
            &[],
        );
        vec![Action::Group(Signal::SIGKILL)]
    }

    /// Whether the run is over: the child has been reaped and its group is gone (or had SIGKILL
    /// `AFTER_KILL` ago).
    pub fn done(&self, group_alive: bool, now: Instant) -> bool {
        let given_up = matches!(self.phase, Phase::Stopping { give_up: Some(g), .. } if now >= g);
        self.code.is_some() && (!group_alive || given_up)
    }

    /// How the run ended.
    pub fn end(self) -> End {
        match self.phase {
            Phase::Running => End::Exited(self.code.unwrap_or(0)),
            Phase::Stopping { end, .. } => end,
        }
    }

    /// A reason to stop the child's group: SIGTERM (and SIGCONT) now, SIGKILL after
    /// --kill-after. Only the first reason counts.
    fn stop(&mut self, end: End, now: Instant) -> Vec<Action> {
        if !matches!(self.phase, Phase::Running) {
            return vec![];
        }
        log_stop(&end, self.kill_after);
        self.phase = Phase::Stopping {
            end,
            kill_at: Some(now + self.kill_after),
            give_up: None,
        };
        vec![
            Action::Group(Signal::SIGTERM),
            Action::Group(Signal::SIGCONT),
        ]
    }
}

fn log_stop(end: &End, kill_after: Duration) {
    let after = crate::duration::format(kill_after);
    let how = format!("(SIGTERM, SIGKILL after {after})");
    match end {
        End::LockLost(why) => log::event(
            log::Level::Error,
            "lock_lost",
            &format!("lock lost while the command ran: {why}; stopping its process group {how}"),
            &[("reason", log::V::S(why))],
        ),
        End::MaxRuntime => log::warn(
            "max_runtime",
            &format!("--max-runtime reached; stopping the command's process group {how}"),
            &[],
        ),
        End::Exited(code) => log::warn(
            "group",
            &format!("the command exited with status {code}, but processes of its process group remain; stopping them {how} before the lock is released"),
            &[],
        ),
    }
}

fn status_code(ws: WaitStatus) -> Option<(Pid, i32)> {
    match ws {
        WaitStatus::Exited(pid, code) => Some((pid, code)),
        WaitStatus::Signaled(pid, sig, _) => Some((pid, 128 + sig as i32)),
        _ => None,
    }
}

/// The events' side: waits on the signal pipe and the socket, reaps, and carries out actions.
struct Loop<'a> {
    child: Child,
    conn: Option<&'a mut Conn>,
    check_sql: String,
    signals: &'a Signals,
}

/// Supervises `child` until it has exited and its process group is gone.
pub fn supervise(child: Child, w: Watch, signals: &Signals) -> End {
    let _job_control = signals.catch_job_control();
    let mut sup = Supervisor::new(Instant::now(), &w);
    let mut lp = Loop {
        child,
        conn: w.conn,
        check_sql: w.check_sql,
        signals,
    };
    lp.reap(&mut sup);
    while !sup.done(lp.group_alive(&sup), Instant::now()) {
        lp.turn(&mut sup);
    }
    if !matches!(sup.phase, Phase::Running) {
        let code = sup.code.unwrap_or(0);
        log::debug("child", &format!("the command stopped with status {code}"));
    }
    // The terminal returns to pglock's group as `lp` drops, the child's group gone.
    sup.end()
}

impl Loop<'_> {
    fn pgid(&self) -> i32 {
        self.child.pid.as_raw()
    }

    /// Only asked once the child has been reaped (it leads the group until then).
    fn group_alive(&self, sup: &Supervisor) -> bool {
        sup.code.is_some() && group::alive(self.pgid())
    }

    /// One wait and what came of it.
    fn turn(&mut self, sup: &mut Supervisor) {
        let (sig_ready, readable) = self.wait(sup);
        if sig_ready {
            for r in self.signals.drain() {
                let actions = sup.on_signal(r, Instant::now());
                self.apply(sup, actions);
            }
            self.reap(sup);
        }
        if sup.watches_lock() {
            if let Some(conn) = self.conn.as_deref_mut() {
                if readable || conn.has_buffered() {
                    let read = conn.poll_result(readable);
                    let actions = sup.on_socket(read, Instant::now());
                    self.apply(sup, actions);
                }
            }
        }
        let now = Instant::now();
        let actions = sup.on_tick(now);
        self.apply(sup, actions);
        let actions = sup.on_deadline(now);
        self.apply(sup, actions);
    }

    /// Polls the signal pipe and, while watched, the socket until `sup.wake`; returns which
    /// are ready.
    fn wait(&self, sup: &Supervisor) -> (bool, bool) {
        let now = Instant::now();
        let conn = self.conn.as_deref().filter(|_| sup.watches_lock());
        let timeout = if conn.is_some_and(|c| c.has_buffered()) {
            Duration::ZERO
        } else {
            sup.wake(now).saturating_duration_since(now)
        };
        let mut fds = vec![PollFd::new(self.signals.fd(), PollFlags::POLLIN)];
        fds.extend(conn.map(|c| PollFd::new(c.fd(), PollFlags::POLLIN)));
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // Interrupted: a signal's handler has just written to the pipe (SIGCHLD when the
        // child exits), read it now rather than poll again.
        let interrupted = match nix::poll::poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(_) => false,
            Err(nix::errno::Errno::EINTR) => true,
            Err(e) => {
                log::debug("poll", &format!("poll failed: {e}"));
                false
            }
        };
        let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
        (interrupted || ready(&fds[0]), fds.get(1).is_some_and(ready))
    }

    /// Reaps every exited child (orphans of the group too), and reports the child's exit or
    /// stop.
    fn reap(&mut self, sup: &mut Supervisor) {
        let flags = WaitPidFlag::WNOHANG | WaitPidFlag::WUNTRACED;
        loop {
            let actions = match waitpid(Pid::from_raw(-1), Some(flags)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(WaitStatus::Stopped(pid, sig)) if pid == self.child.pid => {
                    let ours = self.child.terminal.as_ref().is_some_and(Terminal::ours);
                    sup.on_child_stopped(sig, ours)
                }
                Ok(ws) => match status_code(ws) {
                    Some((pid, code)) if pid == self.child.pid => {
                        let alive = group::alive(self.pgid());
                        sup.on_child_exit(code, alive, Instant::now())
                    }
                    Some((pid, code)) => {
                        log::debug("reap", &format!("reaped process {pid} (status {code})"));
                        continue;
                    }
                    None => continue,
                },
            };
            self.apply(sup, actions);
        }
    }

    fn apply(&mut self, sup: &mut Supervisor, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Forward(sig) => {
                    let _ = kill(self.child.pid, sig);
                }
                Action::Group(sig) => self.signal_group(sig),
                Action::Heartbeat => self.send_heartbeat(sup),
                Action::GiveTerminal => self.child.terminal.iter().for_each(Terminal::give),
                Action::TakeTerminal => self.child.terminal.iter().for_each(Terminal::take),
                Action::StopSelf(sig) => self.stop_self(sup, sig),
            }
        }
    }

    /// `sig` to the child's group, and to the child itself if it has left its group.
    fn signal_group(&self, sig: Signal) {
        group::signal(self.pgid(), sig);
        let left = nix::unistd::getpgid(Some(self.child.pid)).is_ok_and(|g| g != self.child.pid);
        if left {
            let _ = kill(self.child.pid, sig);
        }
    }

    fn send_heartbeat(&mut self, sup: &mut Supervisor) {
        let Some(conn) = self.conn.as_deref_mut() else {
            return;
        };
        if let Err(e) = conn.send_query(&self.check_sql) {
            let actions = sup.on_heartbeat_failed(&e, Instant::now());
            self.apply(sup, actions);
        }
    }

    /// Stops pglock with its job, and resumes the job once pglock runs again; a stop the
    /// kernel discards (an orphaned process group) is undone for the job at once.
    fn stop_self(&mut self, sup: &mut Supervisor, sig: Signal) {
        log::debug(
            "job",
            &format!("the command stopped ({sig}); pglock stops with it"),
        );
        let continued = signals::stop_self(sig);
        if !continued {
            log::debug("job", "pglock's process group is orphaned: no shell can continue it; continuing the command");
        }
        let actions = sup.on_self_stop_over(continued, Instant::now());
        self.apply(sup, actions);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;
    use Signal::*;

    const HB: Duration = Duration::from_secs(5);
    const KILL_AFTER: Duration = Duration::from_secs(10);

    fn sup(t0: Instant, watching: bool, max_runtime: Option<Duration>) -> Supervisor {
        Supervisor {
            phase: Phase::Running,
            code: None,
            watching,
            heartbeat: HB,
            kill_after: KILL_AFTER,
            next_heartbeat: t0 + HB,
            heartbeat_sent: None,
            max_runtime_at: max_runtime.map(|d| t0 + d),
            last_forwarded: None,
            suspended: false,
            continued_early: false,
        }
    }

    fn from(sig: Signal, sender: i32) -> Received {
        Received { sig, sender }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn rows(v: &str) -> std::result::Result<Option<QueryResult>, ReadErr> {
        Ok(Some(QueryResult::Rows(vec![vec![Some(v.to_string())]])))
    }

    const STOP: [Action; 2] = [Group(SIGTERM), Group(SIGCONT)];

    #[test]
    fn a_signal_is_forwarded_to_the_child_and_sigchld_is_not() {
        let t0 = Instant::now();
        let mut s = sup(t0, true, None);
        assert_eq!(s.on_signal(from(SIGTERM, 77), t0), [Forward(SIGTERM)]);
        assert_eq!(s.on_signal(from(SIGCHLD, 0), t0), []);
    }

    #[test]
    fn one_senders_repeat_at_once_counts_once_others_do_not() {
        let t0 = Instant::now();
        let mut s = sup(t0, true, None);
        // GNU timeout: its child (pglock), then its own group (pglock again).
        assert_eq!(s.on_signal(from(SIGINT, 42), t0), [Forward(SIGINT)]);
        assert_eq!(s.on_signal(from(SIGINT, 42), t0 + ms(5)), []);
        // Another sender, another signal, or later: each its own.
        assert_eq!(s.on_signal(from(SIGINT, 43), t0 + ms(6)), [Forward(SIGINT)]);
        assert_eq!(
            s.on_signal(from(SIGTERM, 43), t0 + ms(7)),
            [Forward(SIGTERM)]
        );
        assert_eq!(
            s.on_signal(from(SIGTERM, 43), t0 + ms(500)),
            [Forward(SIGTERM)]
        );
        // The kernel (a terminal's Ctrl-C while pglock's group has it): never merged.
        assert_eq!(
            s.on_signal(from(SIGINT, 0), t0 + ms(501)),
            [Forward(SIGINT)]
        );
        assert_eq!(
            s.on_signal(from(SIGINT, 0), t0 + ms(502)),
            [Forward(SIGINT)]
        );
    }

    #[test]
    fn once_the_child_has_exited_signals_go_to_what_is_left_of_its_group() {
        let t0 = Instant::now();
        let mut s = sup(t0, true, None);
        assert_eq!(s.on_child_exit(0, true, t0), STOP);
        assert_eq!(s.on_signal(from(SIGINT, 9), t0), [Group(SIGINT)]);
    }

    #[test]
    fn ctrl_z_on_pglock_stops_the_group_and_sigcont_resumes_it_with_the_terminal() {
        let t0 = Instant::now();
        let mut s = sup(t0, true, None);
        assert_eq!(s.on_signal(from(SIGTSTP, 0), t0), [Group(SIGTSTP)]);
        let resume = [GiveTerminal, Group(SIGCONT)];
        assert_eq!(s.on_signal(from(SIGCONT, 5), t0), resume);
        // Never merged: a `fg` soon after a `bg` must resume the job.
        assert_eq!(s.on_signal(from(SIGCONT, 5), t0 + ms(1)), resume);
    }

    #[test]
    fn the_child_stopped_by_job_control_stops_pglock_with_it() {
        let t0 = Instant::now();
        let mut s = sup(t0, true, None);
        for sig in [SIGTSTP, SIGTTIN, SIGTTOU] {
            assert_eq!(
                s.on_child_stopped(sig, false),
                [TakeTerminal, StopSelf(sig)]
            );
        }
        // Stopped by someone else's SIGSTOP: theirs to continue.
        assert_eq!(s.on_child_stopped(SIGSTOP, false), []);
    }

    #[test]
    fn a_child_stopped_on_the_terminal_pglock_holds_gets_it() {
        let t0 = Instant::now();
        let mut s = sup(t0, true, None);
        let hand = [GiveTerminal, Group(SIGCONT)];
        assert_eq!(s.on_child_stopped(SIGTTIN, true), hand);
        assert_eq!(s.on_child_stopped(SIGTTOU, true), hand);
        assert_eq!(
            s.on_child_stopped(SIGTSTP, true),
            [TakeTerminal, StopSelf(SIGTSTP)]
        );
    }

    #[test]
    fn a_stopped_child_being_stopped_is_continued_to_handle_sigterm() {
        let t0 = Instant::now();
        let mut s = sup(t0, false, Some(ms(10)));
        assert_eq!(s.on_tick(t0 + ms(10)), STOP);
        assert_eq!(s.on_child_stopped(SIGTSTP, false), [Group(SIGCONT)]);
    }

    #[test]
    fn a_heartbeat_outstanding_over_a_suspension_waits_afresh() {
        let t0 = Instant::now();
        let mut s = sup(t0, true, None);
        assert_eq!(s.on_tick(t0 + HB), [Heartbeat]);
        assert_eq!(
            s.on_child_stopped(SIGTSTP, false),
            [TakeTerminal, StopSelf(SIGTSTP)]
        );
        // Continued an hour later: the answer may still be on its way.
        let later = t0 + Duration::from_secs(3600);
        let resume = [GiveTerminal, Group(SIGCONT)];
        assert_eq!(s.on_self_stop_over(true, later), resume);
        assert_eq!(s.on_tick(later + ms(1)), []);
        // The SIGCONT that continued pglock, acted on already; the next one is not.
        assert_eq!(s.on_signal(from(SIGCONT, 9), later), []);
        assert_eq!(s.on_signal(from(SIGCONT, 9), later), resume);
        assert_eq!(s.on_socket(rows("t"), later + ms(2)), []);
        assert_eq!(s.on_tick(later + HB), [Heartbeat]);
    }

    #[test]
    fn heartbeats_go_out_and_one_unanswered_by_the_next_loses_the_lock() {
        let t0 = Instant::now();
        let mut s = sup(t0, true, None);
        assert_eq!(s.on_tick(t0 + ms(1)), []);
        assert_eq!(s.on_tick(t0 + HB), [Heartbeat]);
        assert_eq!(s.on_socket(Ok(None), t0 + HB), []);
        assert_eq!(s.on_socket(rows("t"), t0 + HB + ms(3)), []);
        assert_eq!(s.on_tick(t0 + HB * 2), [Heartbeat]);
        assert_eq!(s.on_tick(t0 + HB * 3), STOP);
        assert!(
            matches!(s.phase, Phase::Stopping { end: End::LockLost(ref w), .. } if w.contains("no answer"))
        );
        assert!(!s.watches_lock());
    }

    #[test]
    fn no_heartbeat_without_a_lock_connection() {
        let t0 = Instant::now();
        let mut s = sup(t0, false, None);
        assert_eq!(s.on_tick(t0 + HB * 3), []);
        assert!(s.wake(t0) > t0 + HB * 100);
    }

    #[test]
    fn the_socket_reports_a_lost_lock_a_broken_connection_or_protocol() {
        let t0 = Instant::now();
        let cases = [
            (rows("f"), "no longer serves this connection"),
            (
                Err(ReadErr::Closed("terminated".into())),
                "connection to the server broke",
            ),
            (Err(ReadErr::Protocol("junk".into())), "broke the protocol"),
        ];
        for (read, want) in cases {
            let mut s = sup(t0, true, None);
            assert_eq!(s.on_socket(read, t0), STOP);
            assert!(
                matches!(s.phase, Phase::Stopping { end: End::LockLost(ref w), .. } if w.contains(want))
            );
            // Only the first reason counts.
            assert_eq!(s.on_socket(rows("f"), t0), []);
        }
    }

    #[test]
    fn a_heartbeat_that_cannot_be_sent_loses_the_lock() {
        let t0 = Instant::now();
        let mut s = sup(t0, true, None);
        let e = ReadErr::Closed("broken pipe".into());
        assert_eq!(s.on_heartbeat_failed(&e, t0), STOP);
    }

    #[test]
    fn max_runtime_stops_the_group_then_sigkill_after_kill_after() {
        let t0 = Instant::now();
        let mut s = sup(t0, true, Some(ms(500)));
        assert_eq!(s.wake(t0), t0 + ms(500));
        assert_eq!(s.on_tick(t0 + ms(499)), []);
        let t1 = t0 + ms(500);
        assert_eq!(s.on_tick(t1), STOP);
        assert_eq!(s.wake(t1), t1 + KILL_AFTER);
        assert_eq!(s.on_deadline(t1 + KILL_AFTER - ms(1)), []);
        assert_eq!(s.on_deadline(t1 + KILL_AFTER), [Group(SIGKILL)]);
        assert_eq!(s.on_deadline(t1 + KILL_AFTER * 2), []);
        assert_eq!(s.on_child_exit(137, true, t1 + KILL_AFTER), []);
        assert_eq!(s.end(), End::MaxRuntime);
    }

    #[test]
    fn the_run_ends_when_the_child_and_its_group_are_gone() {
        let t0 = Instant::now();
        let mut s = sup(t0, true, None);
        assert!(!s.done(false, t0));
        assert_eq!(s.on_child_exit(7, false, t0), []);
        assert!(s.done(false, t0));
        assert_eq!(s.end(), End::Exited(7));
    }

    #[test]
    fn members_left_behind_are_stopped_and_the_childs_status_kept() {
        let t0 = Instant::now();
        let mut s = sup(t0, true, None);
        assert_eq!(s.on_child_exit(3, true, t0), STOP);
        assert!(!s.done(true, t0));
        assert_eq!(s.wake(t0), t0 + GROUP_POLL);
        assert_eq!(s.on_deadline(t0 + KILL_AFTER), [Group(SIGKILL)]);
        // A member that does not vanish after SIGKILL (a zombie nobody reaps) is given up on.
        assert!(!s.done(true, t0 + KILL_AFTER));
        assert!(s.done(true, t0 + KILL_AFTER + AFTER_KILL));
        assert_eq!(s.end(), End::Exited(3));
    }

    #[test]
    fn a_lost_lock_while_members_remain_waits_for_the_group() {
        let t0 = Instant::now();
        let mut s = sup(t0, true, None);
        assert_eq!(s.on_socket(rows("f"), t0), STOP);
        assert_eq!(s.on_child_exit(143, true, t0), []);
        assert!(!s.done(true, t0));
        assert!(s.done(false, t0));
        assert!(matches!(s.end(), End::LockLost(_)));
    }
}
