//! The `try`-mode window: a config applied with `--mode try` runs until
//! `confirm` arrives or the timeout runs out, when the previous config
//! comes back. Pure: the caller passes the time in, and a timer task only
//! asks [`TryWindow::expire`] whether *its* window is still the open one,
//! so a confirm racing the timer, or a second window, can never revert the
//! wrong thing.

use std::time::{Duration, Instant};

/// How long `try` waits for a confirm when the request names no timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Open<T> {
    id: u64,
    deadline: Instant,
    /// What to restore: the config before the try.
    previous: T,
}

#[derive(Debug)]
pub struct TryWindow<T> {
    next_id: u64,
    open: Option<Open<T>>,
}

impl<T> Default for TryWindow<T> {
    fn default() -> Self {
        TryWindow {
            next_id: 1,
            open: None,
        }
    }
}

/// A window is already open.
#[derive(Debug, PartialEq, Eq)]
pub struct Busy {
    pub remaining: Duration,
}

impl<T> TryWindow<T> {
    /// Open a window; its id is what the timer later passes to `expire`.
    pub fn open(&mut self, now: Instant, timeout: Duration, previous: T) -> Result<u64, Busy> {
        if let Some(remaining) = self.remaining(now) {
            return Err(Busy { remaining });
        }
        let id = self.next_id;
        self.next_id += 1;
        self.open = Some(Open {
            id,
            deadline: now + timeout,
            previous,
        });
        Ok(id)
    }

    /// Time left in the open window; None when none is open.
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        self.open
            .as_ref()
            .map(|o| o.deadline.saturating_duration_since(now))
    }

    /// Keep the tried config: the window closes and hands back the previous
    /// config (the caller persists the tried one). None: nothing to confirm.
    pub fn confirm(&mut self) -> Option<T> {
        self.open.take().map(|o| o.previous)
    }

    /// The timer of window `id` fired at `now`: the previous config to
    /// restore, if that window is still open and its time is up.
    pub fn expire(&mut self, id: u64, now: Instant) -> Option<T> {
        match &self.open {
            Some(o) if o.id == id && now >= o.deadline => self.open.take().map(|o| o.previous),
            _ => None,
        }
    }
}

/// The timeout a request asks for; zero is refused by the caller.
pub fn timeout_from(secs: Option<u64>) -> Duration {
    secs.map(Duration::from_secs).unwrap_or(DEFAULT_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unconfirmed_window_expires_and_returns_the_previous_config() {
        let t0 = Instant::now();
        let mut w = TryWindow::default();
        let id = w.open(t0, Duration::from_secs(60), "old").unwrap();
        assert_eq!(
            w.remaining(t0 + Duration::from_secs(20)),
            Some(Duration::from_secs(40))
        );
        assert_eq!(
            w.expire(id, t0 + Duration::from_secs(59)),
            None,
            "too early"
        );
        assert_eq!(w.expire(id, t0 + Duration::from_secs(60)), Some("old"));
        assert_eq!(w.remaining(t0), None);
        assert_eq!(
            w.expire(id, t0 + Duration::from_secs(61)),
            None,
            "only once"
        );
    }

    #[test]
    fn a_confirm_closes_the_window_and_the_late_timer_does_nothing() {
        let t0 = Instant::now();
        let mut w = TryWindow::default();
        let id = w.open(t0, Duration::from_secs(5), 1).unwrap();
        assert_eq!(w.confirm(), Some(1));
        assert_eq!(w.confirm(), None, "nothing left to confirm");
        assert_eq!(w.expire(id, t0 + Duration::from_secs(10)), None);
    }

    #[test]
    fn one_window_at_a_time_and_an_old_timer_never_closes_a_new_window() {
        let t0 = Instant::now();
        let mut w = TryWindow::default();
        let first = w.open(t0, Duration::from_secs(10), "a").unwrap();
        assert_eq!(
            w.open(t0 + Duration::from_secs(4), Duration::from_secs(10), "b"),
            Err(Busy {
                remaining: Duration::from_secs(6)
            })
        );
        assert_eq!(w.confirm(), Some("a"));
        let second = w
            .open(t0 + Duration::from_secs(5), Duration::from_secs(10), "b")
            .unwrap();
        assert_ne!(first, second);
        assert_eq!(w.expire(first, t0 + Duration::from_secs(30)), None);
        assert_eq!(w.expire(second, t0 + Duration::from_secs(30)), Some("b"));
    }

    #[test]
    fn the_default_timeout_is_a_minute() {
        assert_eq!(timeout_from(None), Duration::from_secs(60));
        assert_eq!(timeout_from(Some(5)), Duration::from_secs(5));
    }
}
