//! Time as the guest sees it: the real clocks, or a virtual clock under
//! `--hermetic`; sleeping in `poll_oneoff`, which cachet implements itself;
//! and the interrupt that ends every run at its deadline or on Ctrl-C.
//!
//! The stock `poll_oneoff` slept in one uninterruptible piece (a sleep of
//! `u64::MAX` under `--timeout 2s` never ended) and panicked the process on
//! the subscription shapes wasi-libc's `poll()` sends from a thread without
//! a tokio timer (issue 7). Here a sleep waits on a condition variable until
//! the earliest of its wake time, the run's deadline and an interrupt, and
//! fd subscriptions are answered without blocking: files, stdin (empty) and
//! the output streams are always ready.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Ends runs early: set by [`crate::Runtime::interrupt`] (Ctrl-C), seen by
/// the epoch callback of every running store and by every sleeping guest.
#[derive(Default)]
pub(crate) struct Interrupt {
    set: Mutex<bool>,
    wake: Condvar,
}

/// Why a guest was stopped from the host side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    Deadline,
    Interrupted,
}

impl Interrupt {
    pub fn trigger(&self) {
        *self.set.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.wake.notify_all();
    }

    pub fn is_set(&self) -> bool {
        *self.set.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Why a run must stop now, if it must.
    pub fn check(&self, deadline: Option<Instant>) -> Option<Stop> {
        if self.is_set() {
            return Some(Stop::Interrupted);
        }
        deadline
            .is_some_and(|d| Instant::now() >= d)
            .then_some(Stop::Deadline)
    }

    /// Sleeps for `d`, or until the deadline or an interrupt ends the run.
    pub fn sleep(&self, d: Duration, deadline: Option<Instant>) -> Result<(), Stop> {
        let now = Instant::now();
        let wake = now.checked_add(d);
        let (until, stop) = match (wake, deadline) {
            (Some(w), Some(dl)) if dl < w => (Some(dl), Some(Stop::Deadline)),
            (None, Some(dl)) => (Some(dl), Some(Stop::Deadline)),
            (w, _) => (w, None),
        };
        let mut set = self.set.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if *set {
                return Err(Stop::Interrupted);
            }
            let left = match until {
                Some(u) => u.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            if left.is_zero() {
                return stop.map_or(Ok(()), Err);
            }
            set = self
                .wake
                .wait_timeout(set, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Realtime start of the virtual clock: 2025-01-01T00:00:00Z. Recent enough
/// for tests that check certificates or "now is after the build".
pub const HERMETIC_EPOCH_NS: u64 = 1_735_689_600 * 1_000_000_000;

/// How far the virtual clock advances on every read, so that time is
/// strictly increasing and a loop that waits for time to pass ends.
pub const HERMETIC_TICK_NS: u64 = 1_000;

/// The guest's clocks.
#[derive(Debug)]
pub(crate) enum GuestClock {
    Real,
    /// Virtual nanoseconds since the run started.
    Virtual(u64),
}

/// WASI clock ids.
const REALTIME: u32 = 0;
const MONOTONIC: u32 = 1;
const PROCESS_CPUTIME: u32 = 2;
const THREAD_CPUTIME: u32 = 3;

impl GuestClock {
    pub fn is_virtual(&self) -> bool {
        matches!(self, GuestClock::Virtual(_))
    }

    /// Reads a virtual clock (advancing it), `None` for an unknown id. Real
    /// clocks are read by the stock call.
    pub fn read_virtual(&mut self, id: u32) -> Option<u64> {
        let GuestClock::Virtual(elapsed) = self else {
            return None;
        };
        *elapsed += HERMETIC_TICK_NS;
        match id {
            REALTIME => Some(HERMETIC_EPOCH_NS + *elapsed),
            // Not 0 at start: some programs treat a zero instant as unset.
            MONOTONIC => Some(1_000_000_000 + *elapsed),
            PROCESS_CPUTIME | THREAD_CPUTIME => Some(*elapsed),
            _ => None,
        }
    }

    /// A virtual clock's time now, without advancing it; `None` for real
    /// clocks.
    pub fn now_virtual(&self, id: u32) -> Option<u64> {
        match self {
            GuestClock::Virtual(_) => self.now(id),
            GuestClock::Real => None,
        }
    }

    fn now(&self, id: u32) -> Option<u64> {
        match self {
            GuestClock::Virtual(elapsed) => match id {
                REALTIME => Some(HERMETIC_EPOCH_NS + elapsed),
                MONOTONIC => Some(1_000_000_000 + elapsed),
                _ => None,
            },
            GuestClock::Real => match id {
                REALTIME => std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_nanos() as u64),
                MONOTONIC => Some(monotonic_ns()),
                _ => None,
            },
        }
    }
}

/// The real monotonic clock as the stock `clock_time_get` reports it.
fn monotonic_ns() -> u64 {
    use std::sync::OnceLock;
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    start.elapsed().as_nanos() as u64
}

/// One subscription of a `poll_oneoff` call (WASI p1 layout: 48 bytes).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Subscription {
    pub userdata: u64,
    pub kind: SubKind,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum SubKind {
    Clock {
        id: u32,
        timeout: u64,
        absolute: bool,
    },
    FdRead(u32),
    FdWrite(u32),
}

pub(crate) const SUBSCRIPTION_SIZE: usize = 48;
pub(crate) const EVENT_SIZE: usize = 32;

const EVENTTYPE_CLOCK: u8 = 0;
const EVENTTYPE_FD_READ: u8 = 1;
const EVENTTYPE_FD_WRITE: u8 = 2;
const SUBCLOCK_ABSTIME: u16 = 1;

impl Subscription {
    /// Parses one subscription; `None` for an unknown tag (EINVAL).
    pub fn parse(b: &[u8]) -> Option<Self> {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let kind = match b[8] {
            EVENTTYPE_CLOCK => SubKind::Clock {
                id: u32_at(16),
                timeout: u64_at(24),
                absolute: u16::from_le_bytes([b[40], b[41]]) & SUBCLOCK_ABSTIME != 0,
            },
            EVENTTYPE_FD_READ => SubKind::FdRead(u32_at(16)),
            EVENTTYPE_FD_WRITE => SubKind::FdWrite(u32_at(16)),
            _ => return None,
        };
        Some(Subscription {
            userdata: u64_at(0),
            kind,
        })
    }
}

/// An event to report for a subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Event {
    pub userdata: u64,
    pub errno: u16,
    pub kind: u8,
}

impl Event {
    pub fn write(&self, b: &mut [u8]) {
        b.fill(0);
        b[0..8].copy_from_slice(&self.userdata.to_le_bytes());
        b[8..10].copy_from_slice(&self.errno.to_le_bytes());
        b[10] = self.kind;
        if self.kind != EVENTTYPE_CLOCK && self.errno == 0 {
            // nbytes: at least one byte can be read or written.
            b[16..24].copy_from_slice(&1u64.to_le_bytes());
        }
    }
}

/// What a `poll_oneoff` call comes to, given whether each fd subscription's
/// fd is usable (`Ok`) or its errno: the events ready at once, or the time
/// to sleep before the clock subscriptions due then are ready.
pub(crate) enum Plan {
    Ready(Vec<Event>),
    Sleep(u64, Vec<Event>),
}

/// Plans a call; `Err(errno)` for a clock the call cannot use (EINVAL).
pub(crate) fn plan(
    subs: &[Subscription],
    clock: &GuestClock,
    fd_status: impl Fn(u32) -> u16,
) -> Result<Plan, u16> {
    const EINVAL: u16 = 28;
    let mut ready = Vec::new();
    let mut clocks = Vec::new();
    for s in subs {
        match s.kind {
            SubKind::FdRead(fd) | SubKind::FdWrite(fd) => {
                let kind = if matches!(s.kind, SubKind::FdRead(_)) {
                    EVENTTYPE_FD_READ
                } else {
                    EVENTTYPE_FD_WRITE
                };
                ready.push(Event {
                    userdata: s.userdata,
                    errno: fd_status(fd),
                    kind,
                });
            }
            SubKind::Clock {
                id,
                timeout,
                absolute,
            } => {
                let wait = if absolute {
                    let now = clock.now(id).ok_or(EINVAL)?;
                    timeout.saturating_sub(now)
                } else {
                    if clock.now(id).is_none() {
                        return Err(EINVAL);
                    }
                    timeout
                };
                clocks.push((wait, s.userdata));
            }
        }
    }
    let event = |userdata| Event {
        userdata,
        errno: 0,
        kind: EVENTTYPE_CLOCK,
    };
    if !ready.is_empty() {
        ready.extend(clocks.iter().filter(|c| c.0 == 0).map(|c| event(c.1)));
        return Ok(Plan::Ready(ready));
    }
    let wait = clocks.iter().map(|c| c.0).min().unwrap_or(0);
    let due = clocks
        .iter()
        .filter(|c| c.0 <= wait)
        .map(|c| event(c.1))
        .collect();
    Ok(Plan::Sleep(wait, due))
}

impl GuestClock {
    /// Lets `ns` pass: at once on a virtual clock, really on a real one.
    pub fn sleep(
        &mut self,
        ns: u64,
        interrupt: &Interrupt,
        deadline: Option<Instant>,
    ) -> Result<(), Stop> {
        match self {
            GuestClock::Virtual(elapsed) => {
                *elapsed = elapsed.saturating_add(ns);
                interrupt.check(None).map_or(Ok(()), Err)
            }
            GuestClock::Real => interrupt.sleep(Duration::from_nanos(ns), deadline),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(timeout: u64, userdata: u64) -> Subscription {
        Subscription {
            userdata,
            kind: SubKind::Clock {
                id: MONOTONIC,
                timeout,
                absolute: false,
            },
        }
    }

    #[test]
    fn fds_are_ready_at_once_and_clocks_wait_for_the_earliest() {
        let subs = [clock(5_000, 1), SubscriptionFd::read(0, 2)];
        let Ok(Plan::Ready(ev)) = plan(&subs, &GuestClock::Real, |_| 0) else {
            panic!("an fd subscription is ready at once")
        };
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].userdata, 2);
        let subs = [clock(5_000, 1), clock(3_000, 2), clock(3_000, 3)];
        let Ok(Plan::Sleep(ns, due)) = plan(&subs, &GuestClock::Real, |_| 0) else {
            panic!("clocks sleep")
        };
        assert_eq!(ns, 3_000);
        assert_eq!(due.iter().map(|e| e.userdata).collect::<Vec<_>>(), [2, 3]);
        let bad = [Subscription {
            userdata: 0,
            kind: SubKind::Clock {
                id: 9,
                timeout: 0,
                absolute: false,
            },
        }];
        assert!(matches!(plan(&bad, &GuestClock::Real, |_| 0), Err(28)));
    }

    struct SubscriptionFd;
    impl SubscriptionFd {
        fn read(fd: u32, userdata: u64) -> Subscription {
            Subscription {
                userdata,
                kind: SubKind::FdRead(fd),
            }
        }
    }

    #[test]
    fn virtual_time_advances_by_ticks_and_sleeps() {
        let mut c = GuestClock::Virtual(0);
        let a = c.read_virtual(MONOTONIC).unwrap();
        let b = c.read_virtual(MONOTONIC).unwrap();
        assert_eq!(b - a, HERMETIC_TICK_NS);
        c.sleep(10_000_000_000, &Interrupt::default(), None)
            .unwrap();
        let after = c.read_virtual(MONOTONIC).unwrap();
        assert_eq!(after - b, 10_000_000_000 + HERMETIC_TICK_NS);
        assert!(c.read_virtual(REALTIME).unwrap() > HERMETIC_EPOCH_NS);
    }

    #[test]
    fn sleeps_end_at_the_deadline_or_an_interrupt() {
        let i = std::sync::Arc::new(Interrupt::default());
        let start = Instant::now();
        let r = i.sleep(
            Duration::from_secs(3600),
            Some(start + Duration::from_millis(50)),
        );
        assert_eq!(r, Err(Stop::Deadline));
        assert!(start.elapsed() < Duration::from_secs(5));
        let i2 = i.clone();
        let t = std::thread::spawn(move || i2.sleep(Duration::MAX, None));
        std::thread::sleep(Duration::from_millis(20));
        i.trigger();
        assert_eq!(t.join().unwrap(), Err(Stop::Interrupted));
    }
}
