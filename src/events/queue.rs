//! The durable queue that holds events until the API has accepted them.

use super::Event;
use crate::store;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// What the queue file holds.
#[derive(Serialize)]
struct FileRef<'a> {
    dropped: u64,
    events: &'a VecDeque<Event>,
}

#[derive(Deserialize)]
struct FileOwned {
    dropped: u64,
    events: VecDeque<Event>,
}

/// Events waiting to be accepted by the API, oldest first, at most `capacity` of them.
///
/// Every change rewrites the whole file atomically (`store::write_private`: temporary file,
/// fsync, rename) before it returns. With a capacity around 1000 events the file is a few hundred
/// KiB at most and events come minutes apart, so rewriting it is cheap and far simpler than an
/// append-only log with compaction.
///
/// When a write fails (a full or read-only disk) the change is kept in memory all the same and
/// the error returned: the events are still sent, and every later change, or [`EventQueue::save_pending`],
/// tries the write again. A full disk must not silence the load balancer's reports; only an
/// agent restart before the disk takes writes again loses what never reached it.
///
/// When full, a push drops the *oldest* event: the newest says most about the state the load
/// balancer is in now. Drops are counted, and the count is kept in the file.
#[derive(Debug)]
pub struct EventQueue {
    path: PathBuf,
    capacity: usize,
    events: VecDeque<Event>,
    dropped: u64,
    /// Set while the file is behind the queue in memory (the last write failed).
    unsaved: bool,
}

impl EventQueue {
    /// Opens the queue kept at `path`, loading the events a previous run left there. A missing
    /// file is an empty queue. A file that cannot be parsed is moved aside to
    /// `<path>.corrupt-<unix time>` with a warning and the queue starts empty: losing old events
    /// is better than an agent that cannot start. If the file holds more events than `capacity`
    /// (the capacity was lowered), the oldest are dropped and counted.
    pub fn open(path: &Path, capacity: usize) -> anyhow::Result<EventQueue> {
        anyhow::ensure!(
            capacity > 0,
            "the event queue capacity must be at least 1 (got 0)"
        );
        let mut queue = EventQueue {
            path: path.to_path_buf(),
            capacity,
            events: VecDeque::new(),
            dropped: 0,
            unsaved: false,
        };
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(queue),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot read the event queue {}", path.display()))
            }
        };
        match serde_json::from_slice::<FileOwned>(&bytes) {
            Ok(file) => {
                queue.events = file.events;
                queue.dropped = file.dropped;
                // Events queued by an agent before ids existed get theirs now, and on disk at
                // once, so a resend after another restart still carries the same id.
                let mut named = false;
                for e in queue.events.iter_mut().filter(|e| e.id.is_empty()) {
                    e.id = uuid::Uuid::new_v4().to_string();
                    named = true;
                }
                if named {
                    queue.save()?;
                }
                if queue.events.len() > capacity {
                    let excess = queue.events.len() - capacity;
                    queue.events.drain(..excess);
                    queue.dropped = queue.dropped.saturating_add(excess as u64);
                    tracing::warn!(
                        path = %path.display(),
                        dropped = excess,
                        capacity,
                        "the event queue held more events than its capacity; dropped the oldest"
                    );
                    queue.save()?;
                }
            }
            Err(parse_error) => {
                let aside = corrupt_path(path);
                std::fs::rename(path, &aside).with_context(|| {
                    format!(
                        "the event queue {} is corrupt ({parse_error}) and cannot be moved aside \
                         to {}",
                        path.display(),
                        aside.display()
                    )
                })?;
                tracing::warn!(
                    path = %path.display(),
                    moved_to = %aside.display(),
                    "the event queue file is corrupt ({parse_error}); moved it aside and started \
                     an empty queue"
                );
            }
        }
        Ok(queue)
    }

    /// Appends an event, dropping the oldest one first when the queue is full. Returns once the
    /// queue is on disk.
    pub fn push(&mut self, event: Event) -> anyhow::Result<()> {
        let evicted = if self.events.len() >= self.capacity {
            self.events.pop_front()
        } else {
            None
        };
        if evicted.is_some() {
            self.dropped = self.dropped.saturating_add(1);
        }
        self.events.push_back(event);
        let saved = self.save();
        if evicted.is_some() {
            tracing::warn!(
                capacity = self.capacity,
                dropped_total = self.dropped,
                "the event queue is full; dropped the oldest event"
            );
        }
        saved
    }

    /// The oldest event: the next one to send.
    pub fn peek(&self) -> Option<&Event> {
        self.events.front()
    }

    /// Removes the oldest event, once the API has accepted it. Returns once the queue is on disk;
    /// when it cannot be written, the event is gone from memory all the same (it was delivered:
    /// keeping it would send it again and again) and the error is returned.
    pub fn pop(&mut self) -> anyhow::Result<Option<Event>> {
        let Some(event) = self.events.pop_front() else {
            return Ok(None);
        };
        self.save()?;
        Ok(Some(event))
    }

    /// Whether the file is behind the queue in memory (a write failed and none has worked since).
    pub fn unsaved(&self) -> bool {
        self.unsaved
    }

    /// Writes the queue again if an earlier write failed. The agent calls it every cycle, so the
    /// file catches up by itself once the disk takes writes again.
    pub fn save_pending(&mut self) -> anyhow::Result<()> {
        if self.unsaved {
            self.save()?;
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Events dropped because the queue was full, since the queue file was created.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn save(&mut self) -> anyhow::Result<()> {
        let file = FileRef {
            dropped: self.dropped,
            events: &self.events,
        };
        let result = serde_json::to_vec(&file)
            .context("cannot serialize the event queue")
            .and_then(|bytes| {
                store::write_private(&self.path, &bytes).with_context(|| {
                    format!(
                        "cannot save the event queue {}; the events are kept in memory and sent, \
                         and the file is written again once the disk takes it",
                        self.path.display()
                    )
                })
            });
        self.unsaved = result.is_err();
        result
    }
}

/// `<path>.corrupt-<unix time>`, with a counter added if that name is taken (two corrupt files
/// in the same second must not overwrite each other's evidence).
fn corrupt_path(path: &Path) -> PathBuf {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let base = format!("{}.corrupt-{unix}", path.display());
    let mut candidate = PathBuf::from(&base);
    let mut n = 1;
    while candidate.exists() {
        candidate = PathBuf::from(format!("{base}-{n}"));
        n += 1;
    }
    candidate
}

#[cfg(test)]
mod tests {
    use super::super::tests::{body, now, numbered};
    use super::*;
    use serde_json::{json, Value};
    use std::os::unix::fs::PermissionsExt;

    fn epochs(q: &EventQueue) -> Vec<Value> {
        q.events
            .iter()
            .map(|e| e.metadata["epoch"].clone())
            .collect()
    }

    #[test]
    fn every_event_has_its_own_uuid_and_keeps_it_through_the_queue() {
        let (a, b) = (
            Event::agent_started("0.1.0", "1.40.0", now()),
            Event::agent_started("0.1.0", "1.40.0", now()),
        );
        assert_ne!(a.id, b.id, "two events, two ids, even when alike");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.json");
        let mut q = EventQueue::open(&path, 10).unwrap();
        q.push(a.clone()).unwrap();
        drop(q);
        // A restart (the agent killed before it popped) resends the same id.
        let q = EventQueue::open(&path, 10).unwrap();
        assert_eq!(q.peek().map(|e| e.id.as_str()), Some(a.id.as_str()));
        assert_eq!(body(q.peek().unwrap()), body(&a));
    }

    #[test]
    fn events_queued_before_ids_existed_get_one_that_lasts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.json");
        let mut old = serde_json::to_value(numbered(0)).unwrap();
        old.as_object_mut().unwrap().remove("id");
        std::fs::write(&path, json!({"dropped": 0, "events": [old]}).to_string()).unwrap();
        let first = EventQueue::open(&path, 10)
            .unwrap()
            .peek()
            .unwrap()
            .id
            .clone();
        assert!(uuid::Uuid::try_parse(&first).is_ok(), "{first}");
        let again = EventQueue::open(&path, 10)
            .unwrap()
            .peek()
            .unwrap()
            .id
            .clone();
        assert_eq!(first, again, "the id given on open is on disk");
    }

    #[test]
    fn fifo_order_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.json");
        let mut q = EventQueue::open(&path, 10).unwrap();
        for i in 0..4 {
            q.push(numbered(i)).unwrap();
        }
        drop(q);
        let mut q = EventQueue::open(&path, 10).unwrap();
        assert_eq!(q.len(), 4);
        for i in 0..4 {
            assert_eq!(q.peek(), Some(&numbered(i)));
            assert_eq!(q.pop().unwrap(), Some(numbered(i)));
        }
        assert!(q.is_empty());
        assert_eq!(q.peek(), None);
        assert_eq!(q.pop().unwrap(), None);
    }

    #[test]
    fn pushed_events_are_durable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/events.json");
        let started = Event::agent_started("0.1.0", "1.40.0", now());
        let mut q = EventQueue::open(&path, 10).unwrap();
        assert!(!path.exists(), "opening an absent queue writes nothing");
        q.push(started.clone()).unwrap();
        // No explicit flush or close: what push returned from is already on disk.
        drop(q);
        let q = EventQueue::open(&path, 10).unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!(q.peek(), Some(&started));
        assert_eq!(q.dropped(), 0);
    }

    #[test]
    fn full_queue_drops_the_oldest_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.json");
        let mut q = EventQueue::open(&path, 3).unwrap();
        for i in 0..5 {
            q.push(numbered(i)).unwrap();
        }
        assert_eq!(q.len(), 3);
        assert_eq!(q.dropped(), 2);
        assert_eq!(epochs(&q), [json!(2), json!(3), json!(4)]);
        drop(q);
        let q = EventQueue::open(&path, 3).unwrap();
        assert_eq!(q.dropped(), 2);
        assert_eq!(epochs(&q), [json!(2), json!(3), json!(4)]);
    }

    #[test]
    fn lowered_capacity_drops_the_oldest_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.json");
        let mut q = EventQueue::open(&path, 10).unwrap();
        for i in 0..5 {
            q.push(numbered(i)).unwrap();
        }
        drop(q);
        let q = EventQueue::open(&path, 2).unwrap();
        assert_eq!(epochs(&q), [json!(3), json!(4)]);
        assert_eq!(q.dropped(), 3);
        drop(q);
        assert_eq!(
            EventQueue::open(&path, 10).unwrap().len(),
            2,
            "trim persisted"
        );
        assert!(EventQueue::open(&path, 0).is_err());
    }

    #[test]
    fn pop_is_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.json");
        let mut q = EventQueue::open(&path, 10).unwrap();
        for i in 0..3 {
            q.push(numbered(i)).unwrap();
        }
        assert_eq!(q.pop().unwrap(), Some(numbered(0)));
        drop(q);
        let q = EventQueue::open(&path, 10).unwrap();
        assert_eq!(epochs(&q), [json!(1), json!(2)]);
    }

    #[test]
    fn file_format_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.json");
        let mut q = EventQueue::open(&path, 1).unwrap();
        q.push(numbered(0)).unwrap();
        q.push(numbered(1)).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let on_disk: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            on_disk,
            json!({ "dropped": 1, "events": [serde_json::to_value(numbered(1)).unwrap()] })
        );
    }

    #[test]
    fn corrupt_file_is_moved_aside_and_the_queue_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.json");
        // Truncated JSON, then valid JSON of the wrong shape: both are corrupt.
        for garbage in [&b"{\"dropped\": 1, \"ev"[..], &b"[1, 2, 3]"[..]] {
            std::fs::write(&path, garbage).unwrap();
            let mut q = EventQueue::open(&path, 10).unwrap();
            assert!(q.is_empty());
            assert_eq!(q.dropped(), 0);
            assert!(!path.exists());
            q.push(numbered(7)).unwrap();
            assert_eq!(EventQueue::open(&path, 10).unwrap().len(), 1);
            std::fs::remove_file(&path).unwrap();
        }
        let mut aside: Vec<Vec<u8>> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("events.json.corrupt-")
            })
            .map(|e| std::fs::read(e.path()).unwrap())
            .collect();
        aside.sort();
        // Both kept, even when moved aside within the same second.
        assert_eq!(
            aside,
            [b"[1, 2, 3]".to_vec(), b"{\"dropped\": 1, \"ev".to_vec()]
        );
    }

    /// A write that fails keeps the change in memory (the event is still sent) and says so; the
    /// next write that works brings the file up to date, with nothing lost.
    #[test]
    fn a_failed_save_keeps_the_change_in_memory_and_catches_up_later() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.json");
        let mut q = EventQueue::open(&path, 3).unwrap();
        q.push(numbered(0)).unwrap();
        q.push(numbered(1)).unwrap();
        // A directory where the file should be: the rename fails, even for root.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        let e = q.push(numbered(2)).unwrap_err();
        assert!(format!("{e:#}").contains("kept in memory"), "{e:#}");
        assert!(q.unsaved());
        assert_eq!(epochs(&q), [json!(0), json!(1), json!(2)]);
        // Delivered while the disk refuses: gone from memory, the file still behind.
        assert!(q.pop().is_err());
        assert_eq!(epochs(&q), [json!(1), json!(2)]);
        assert!(q.save_pending().is_err());
        assert!(q.unsaved());
        // The disk takes writes again: the file catches up.
        std::fs::remove_dir(&path).unwrap();
        q.save_pending().unwrap();
        assert!(!q.unsaved());
        let again = EventQueue::open(&path, 3).unwrap();
        assert_eq!(epochs(&again), [json!(1), json!(2)]);
    }
}
