//! The agent's own log lines, kept in memory for `logs agent`.
//!
//! The console logger pushes every line here as well as to the console
//! (see [`crate::logging`]). The last [`CAPACITY`] lines are kept; new lines
//! also go out on a broadcast channel to `--follow` clients. Each client has
//! its own forwarding task and bounded queue: a client that reads slowly
//! falls behind on the broadcast channel, loses the lines it missed and is
//! told how many, and nothing else waits for it. The agent never blocks on
//! a client.

use std::collections::VecDeque;
use std::sync::{Arc, LazyLock, Mutex};

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc};

/// Lines of history kept (about 100 bytes each).
pub const CAPACITY: usize = 2000;
/// New lines a follower may lag behind before it loses some.
pub const FOLLOW_LAG: usize = 256;
/// Lines queued for one client's connection.
pub const CLIENT_QUEUE: usize = 64;

pub struct LogRing {
    lines: Mutex<VecDeque<Arc<str>>>,
    capacity: usize,
    new_lines: broadcast::Sender<Arc<str>>,
}

static AGENT_LOG: LazyLock<LogRing> = LazyLock::new(|| LogRing::new(CAPACITY, FOLLOW_LAG));

/// The agent's log; the logger writes to it from the first line on.
pub fn agent_log() -> &'static LogRing {
    &AGENT_LOG
}

/// What a follower reads in place of the lines it was too slow for.
pub fn dropped_line(n: u64) -> String {
    format!(
        "-- node-agent: {n} lines dropped: this client reads more slowly than the agent logs --"
    )
}

impl LogRing {
    pub fn new(capacity: usize, follow_lag: usize) -> LogRing {
        let (new_lines, _) = broadcast::channel(follow_lag.max(1));
        LogRing {
            lines: Mutex::new(VecDeque::with_capacity(capacity.min(256))),
            capacity: capacity.max(1),
            new_lines,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<str>>> {
        // A panic while holding the lock leaves a valid deque: use it.
        self.lines.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Add the lines of `text` (one console write: one or more lines).
    /// Must not log: it runs inside the logger.
    pub fn push(&self, text: &str) {
        let mut lines = self.lock();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let line: Arc<str> = Arc::from(line);
            if lines.len() == self.capacity {
                lines.pop_front();
            }
            lines.push_back(line.clone());
            // Sent under the lock, so a follower's history and its live
            // lines neither overlap nor leave a gap. No receivers is fine.
            let _ = self.new_lines.send(line);
        }
    }

    /// The last `n` lines.
    pub fn tail(&self, n: usize) -> Vec<Arc<str>> {
        let lines = self.lock();
        lines
            .iter()
            .skip(lines.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    /// The last `n` lines, then the stream ends.
    pub fn history(&self, n: usize) -> mpsc::Receiver<String> {
        let lines = self.tail(n);
        let (tx, rx) = mpsc::channel(lines.len().max(1));
        for line in lines {
            // The channel has room for every line.
            let _ = tx.try_send(line.to_string());
        }
        rx
    }

    /// The last `n` lines, then every new line until the client goes away.
    /// Spawns the client's forwarding task on the current runtime.
    pub fn follow(&self, n: usize) -> mpsc::Receiver<String> {
        let (history, live) = {
            let lines = self.lock();
            let history: Vec<Arc<str>> = lines
                .iter()
                .skip(lines.len().saturating_sub(n))
                .cloned()
                .collect();
            (history, self.new_lines.subscribe())
        };
        let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
        tokio::spawn(forward(history, live, tx));
        rx
    }
}

async fn forward(
    history: Vec<Arc<str>>,
    mut live: broadcast::Receiver<Arc<str>>,
    tx: mpsc::Sender<String>,
) {
    for line in history {
        if tx.send(line.to_string()).await.is_err() {
            return;
        }
    }
    loop {
        let next = tokio::select! {
            next = live.recv() => next,
            // The client went away while the agent was quiet.
            () = tx.closed() => return,
        };
        let line = match next {
            Ok(line) => line.to_string(),
            Err(RecvError::Lagged(n)) => dropped_line(n),
            Err(RecvError::Closed) => return,
        };
        if tx.send(line).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_lines_and_splits_writes_into_lines() {
        let ring = LogRing::new(3, 8);
        ring.push("[   1.000] one\n");
        ring.push("[   1.001] two\n[   1.002] three\n\n");
        ring.push("[   1.003] four\n");
        let all: Vec<String> = ring.tail(10).iter().map(|l| l.to_string()).collect();
        assert_eq!(
            all,
            ["[   1.001] two", "[   1.002] three", "[   1.003] four"]
        );
        assert_eq!(ring.tail(1).len(), 1);
        assert_eq!(ring.tail(0).len(), 0);
    }

    #[test]
    fn history_ends_after_the_tail() {
        let ring = LogRing::new(10, 8);
        for i in 0..5 {
            ring.push(&format!("line {i}\n"));
        }
        let mut rx = ring.history(2);
        assert_eq!(rx.try_recv().unwrap(), "line 3");
        assert_eq!(rx.try_recv().unwrap(), "line 4");
        assert!(rx.try_recv().is_err());
        assert!(rx.is_closed() || rx.try_recv().is_err());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn followers_get_history_then_new_lines_without_gaps() {
        let ring: &'static LogRing = Box::leak(Box::new(LogRing::new(10, 8)));
        ring.push("old\n");
        let mut rx = ring.follow(5);
        ring.push("new\n");
        assert_eq!(rx.recv().await.unwrap(), "old");
        assert_eq!(rx.recv().await.unwrap(), "new");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_slow_follower_loses_lines_and_is_told_while_the_agent_never_waits() {
        let ring: &'static LogRing = Box::leak(Box::new(LogRing::new(1000, 4)));
        let mut rx = ring.follow(0);
        tokio::task::yield_now().await;
        // The client reads nothing while 500 lines are logged: pushing
        // never blocks (this test would hang if it did).
        for i in 0..500 {
            ring.push(&format!("line {i}\n"));
        }
        let mut got = Vec::new();
        while got.len() < 200 {
            match tokio::time::timeout(std::time::Duration::from_millis(200), rx.recv()).await {
                Ok(Some(line)) => got.push(line),
                _ => break,
            }
        }
        assert!(got.iter().any(|l| l.contains("lines dropped")), "{got:?}");
        assert_eq!(got.last().map(String::as_str), Some("line 499"));
        assert!(got.len() < 500);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_follower_that_goes_away_ends_its_task() {
        let ring: &'static LogRing = Box::leak(Box::new(LogRing::new(10, 4)));
        let rx = ring.follow(0);
        tokio::task::yield_now().await;
        assert_eq!(ring.new_lines.receiver_count(), 1);
        drop(rx);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(ring.new_lines.receiver_count(), 0);
    }
}
