//! The worker table: who has been heard on the event channels, and who is alive now.
//! Pure: times are passed in, so the rules are tested without waiting.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::event::{WorkerEvent, WorkerKind};

/// The heartbeat interval assumed when a worker does not announce one (Celery's default).
const DEFAULT_FREQ: f64 = 2.0;
/// Announced intervals are taken within these bounds: a forged `freq` of hours would keep
/// a phantom worker alive, and stretch the start-up grace, for hours.
const MIN_FREQ: f64 = 0.1;
const MAX_FREQ: f64 = 60.0;

/// One worker, as its events described it.
#[derive(Debug, Clone, PartialEq)]
pub struct Worker {
    pub hostname: String,
    /// Seconds between heartbeats (clamped to 0.1 s .. 60 s).
    pub freq: f64,
    /// When its last event arrived, on our clock (workers' clocks are not trusted).
    pub last_heard: Instant,
    pub active: u64,
    pub processed: u64,
    pub pid: Option<u64>,
    pub sw_ver: Option<String>,
    /// A worker-offline event came: down at once, whatever the heartbeat age.
    pub offline: bool,
}

/// What applying an event did to the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// A known worker was updated.
    Updated,
    /// A new worker was added (`evicted`: a long-dead one made room for it).
    Added { evicted: Option<String> },
    /// The table is full of live workers: this one is counted, not tracked.
    Untracked,
    /// An offline event for a worker never heard of.
    Ignored,
}

/// Every worker heard, up to a cap.
#[derive(Debug)]
pub struct Workers {
    table: HashMap<String, Worker>,
    cap: usize,
    misses: u32,
    forget_after: Duration,
}

impl Workers {
    pub fn new(cap: usize, misses: u32, forget_after: Duration) -> Workers {
        Workers {
            table: HashMap::new(),
            cap,
            misses,
            forget_after,
        }
    }

    pub fn apply(&mut self, e: &WorkerEvent, now: Instant) -> Applied {
        let freq = e.freq.unwrap_or(DEFAULT_FREQ).clamp(MIN_FREQ, MAX_FREQ);
        if let Some(w) = self.table.get_mut(&e.hostname) {
            w.freq = freq;
            w.last_heard = now;
            w.active = e.active.unwrap_or(w.active);
            w.processed = e.processed.unwrap_or(w.processed);
            w.pid = e.pid.or(w.pid);
            w.sw_ver = e.sw_ver.clone().or(w.sw_ver.take());
            w.offline = e.kind == WorkerKind::Offline;
            if w.offline {
                w.active = 0;
            }
            return Applied::Updated;
        }
        if e.kind == WorkerKind::Offline {
            return Applied::Ignored;
        }
        let mut evicted = None;
        if self.table.len() >= self.cap {
            // Make room by dropping the worker that has been down longest, if any.
            let longest = self
                .table
                .values()
                .filter_map(|w| self.down_since(w, now).map(|t| (t, w.hostname.clone())))
                .min();
            match longest {
                Some((_, name)) => {
                    self.table.remove(&name);
                    evicted = Some(name);
                }
                None => return Applied::Untracked,
            }
        }
        self.table.insert(
            e.hostname.clone(),
            Worker {
                hostname: e.hostname.clone(),
                freq,
                last_heard: now,
                active: e.active.unwrap_or(0),
                processed: e.processed.unwrap_or(0),
                pid: e.pid,
                sw_ver: e.sw_ver.clone(),
                offline: false,
            },
        );
        Applied::Added { evicted }
    }

    /// How long a worker may stay silent: its heartbeat interval times the misses allowed.
    pub fn window(&self, w: &Worker) -> Duration {
        Duration::from_secs_f64(w.freq * f64::from(self.misses))
    }

    /// Alive: no offline event, and heard within its window.
    pub fn alive(&self, w: &Worker, now: Instant) -> bool {
        self.down_since(w, now).is_none()
    }

    /// When a worker went down (its offline event, or the end of its window), or `None`
    /// while it is alive.
    fn down_since(&self, w: &Worker, now: Instant) -> Option<Instant> {
        if w.offline {
            return Some(w.last_heard);
        }
        let end = w.last_heard + self.window(w);
        (now > end).then_some(end)
    }

    pub fn alive_count(&self, now: Instant) -> usize {
        self.table.values().filter(|w| self.alive(w, now)).count()
    }

    /// The longest heartbeat interval among the workers alive at `now`, or Celery's default.
    pub fn longest_freq(&self, now: Instant) -> f64 {
        self.table
            .values()
            .filter(|w| self.alive(w, now))
            .map(|w| w.freq)
            .fold(DEFAULT_FREQ, f64::max)
    }

    /// Removes the workers down for longer than the forget window; returns their names
    /// (their metric series go with them).
    pub fn forget(&mut self, now: Instant) -> Vec<String> {
        let gone: Vec<String> = self
            .table
            .values()
            .filter(|w| {
                self.down_since(w, now)
                    .is_some_and(|t| now.saturating_duration_since(t) > self.forget_after)
            })
            .map(|w| w.hostname.clone())
            .collect();
        for name in &gone {
            self.table.remove(name);
        }
        gone
    }

    /// Every tracked worker, by hostname.
    pub fn sorted(&self) -> Vec<&Worker> {
        let mut all: Vec<&Worker> = self.table.values().collect();
        all.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        all
    }

    pub fn get(&self, hostname: &str) -> Option<&Worker> {
        self.table.get(hostname)
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: WorkerKind, host: &str) -> WorkerEvent {
        WorkerEvent {
            kind,
            hostname: host.into(),
            freq: Some(2.0),
            active: Some(1),
            processed: Some(10),
            pid: Some(42),
            sw_ver: Some("5.7.0".into()),
        }
    }

    fn table() -> Workers {
        Workers::new(3, 2, Duration::from_secs(600))
    }

    #[test]
    fn heartbeats_keep_a_worker_alive_for_freq_times_misses() {
        let mut w = table();
        let t0 = Instant::now();
        assert_eq!(
            w.apply(&ev(WorkerKind::Online, "w1"), t0),
            Applied::Added { evicted: None }
        );
        assert_eq!(
            w.alive_count(t0 + Duration::from_secs(4)),
            1,
            "4 s = 2 x 2 s: still alive"
        );
        assert_eq!(
            w.alive_count(t0 + Duration::from_millis(4001)),
            0,
            "a SIGKILL shows after 4 s"
        );
        w.apply(
            &ev(WorkerKind::Heartbeat, "w1"),
            t0 + Duration::from_secs(5),
        );
        assert_eq!(
            w.alive_count(t0 + Duration::from_secs(6)),
            1,
            "back when heard again"
        );
        let only = w.sorted()[0].clone();
        assert_eq!((only.active, only.processed, only.pid), (1, 10, Some(42)));
    }

    #[test]
    fn offline_is_down_at_once() {
        let mut w = table();
        let t0 = Instant::now();
        w.apply(&ev(WorkerKind::Online, "w1"), t0);
        assert_eq!(
            w.apply(&ev(WorkerKind::Offline, "w1"), t0),
            Applied::Updated
        );
        assert_eq!(w.alive_count(t0), 0);
        assert_eq!(w.sorted()[0].active, 0);
        assert_eq!(
            w.apply(&ev(WorkerKind::Offline, "stranger"), t0),
            Applied::Ignored
        );
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn the_cap_evicts_the_longest_dead_then_refuses() {
        let mut w = table();
        let t0 = Instant::now();
        for (i, h) in ["a", "b", "c"].iter().enumerate() {
            w.apply(
                &ev(WorkerKind::Heartbeat, h),
                t0 + Duration::from_secs(i as u64),
            );
        }
        // At t0+5: "a" is dead since t0+4, "b" since t0+5, "c" alive.
        let at = t0 + Duration::from_millis(5500);
        assert_eq!(
            w.apply(&ev(WorkerKind::Heartbeat, "d"), at),
            Applied::Added {
                evicted: Some("a".into())
            }
        );
        w.apply(&ev(WorkerKind::Heartbeat, "b"), at);
        assert_eq!(
            w.apply(&ev(WorkerKind::Heartbeat, "e"), at),
            Applied::Untracked
        );
        assert_eq!(w.len(), 3);
    }

    #[test]
    fn dead_workers_are_forgotten_after_the_window() {
        let mut w = Workers::new(10, 2, Duration::from_secs(60));
        let t0 = Instant::now();
        w.apply(&ev(WorkerKind::Heartbeat, "dead"), t0);
        w.apply(&ev(WorkerKind::Online, "gone"), t0);
        w.apply(
            &ev(WorkerKind::Offline, "gone"),
            t0 + Duration::from_secs(1),
        );
        assert!(w.forget(t0 + Duration::from_secs(60)).is_empty());
        let mut gone = w.forget(t0 + Duration::from_secs(65));
        gone.sort();
        assert_eq!(gone, ["dead", "gone"]);
        assert!(w.is_empty());
    }

    #[test]
    fn freq_is_taken_from_the_worker_and_clamped() {
        let mut w = table();
        let t0 = Instant::now();
        let mut e = ev(WorkerKind::Heartbeat, "slow");
        e.freq = Some(10.0);
        w.apply(&e, t0);
        assert_eq!(w.alive_count(t0 + Duration::from_secs(19)), 1);
        assert_eq!(w.longest_freq(t0), 10.0);
        e.freq = Some(1e9);
        w.apply(&e, t0);
        assert_eq!(w.sorted()[0].freq, 60.0);
    }
}
