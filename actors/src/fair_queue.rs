//! A bounded queue served round robin by key (a tenant), so a key with
//! many jobs waiting delays another key's job by at most one job of its
//! own, not by its whole backlog. Plain logic: no threads, no locks; the
//! blocking pool wraps it in a mutex and a condition variable.
//!
//! Design points:
//! * bounded: at most `capacity` jobs in all; a push past it hands the
//!   job back (the caller refuses it), it never waits;
//! * each key has its own FIFO; keys with jobs are served in turn (one
//!   job per key per round), so a job waits behind at most one job of
//!   each other key with work, whatever their backlogs;
//! * a key's queue is dropped when it empties: the table holds only keys
//!   with jobs waiting, so it is bounded by `capacity` too.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Jobs by key, served round robin.
pub struct FairQueue<J> {
    /// Each key's jobs, oldest first; only keys with jobs.
    queues: HashMap<Arc<str>, VecDeque<J>>,
    /// Keys with jobs, in the order they are served next.
    turn: VecDeque<Arc<str>>,
    len: usize,
    capacity: usize,
}

impl<J> FairQueue<J> {
    /// An empty queue holding at most `capacity` jobs (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            queues: HashMap::new(),
            turn: VecDeque::new(),
            len: 0,
            capacity: capacity.max(1),
        }
    }

    /// Queues `job` behind `key`'s earlier jobs; a full queue hands it back.
    pub fn push(&mut self, key: &Arc<str>, job: J) -> Result<(), J> {
        if self.len >= self.capacity {
            return Err(job);
        }
        match self.queues.get_mut(key) {
            Some(jobs) => jobs.push_back(job),
            None => {
                self.queues.insert(key.clone(), VecDeque::from([job]));
                self.turn.push_back(key.clone());
            }
        }
        self.len += 1;
        Ok(())
    }

    /// The oldest job of the key whose turn it is; that key goes to the
    /// back of the turn if it has more.
    pub fn pop(&mut self) -> Option<J> {
        let key = self.turn.pop_front()?;
        let jobs = self.queues.get_mut(&key)?;
        let job = jobs.pop_front();
        if jobs.is_empty() {
            self.queues.remove(&key);
        } else {
            self.turn.push_back(key);
        }
        if job.is_some() {
            self.len -= 1;
        }
        job
    }

    /// Jobs waiting, all keys.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keys with jobs waiting.
    pub fn keys(&self) -> usize {
        self.queues.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Arc<str> {
        Arc::from(k)
    }

    fn drain(q: &mut FairQueue<(char, u32)>) -> Vec<(char, u32)> {
        std::iter::from_fn(|| q.pop()).collect()
    }

    #[test]
    fn a_key_with_a_backlog_delays_another_keys_job_by_one_job() {
        let mut q = FairQueue::new(100);
        for i in 0..50 {
            q.push(&key("flood"), ('f', i)).unwrap();
        }
        q.push(&key("victim"), ('v', 0)).unwrap();
        // FIFO would run the victim's job 51st; round robin runs it second.
        assert_eq!(q.pop(), Some(('f', 0)));
        assert_eq!(q.pop(), Some(('v', 0)));
        assert_eq!(q.pop(), Some(('f', 1)));
        assert_eq!(q.len(), 48);
        assert_eq!(q.keys(), 1);
    }

    #[test]
    fn keys_take_turns_and_each_keeps_its_own_order() {
        let mut q = FairQueue::new(100);
        for (k, n) in [('a', 3), ('b', 1), ('c', 2)] {
            for i in 0..n {
                q.push(&key(&k.to_string()), (k, i)).unwrap();
            }
        }
        assert_eq!(
            drain(&mut q),
            vec![('a', 0), ('b', 0), ('c', 0), ('a', 1), ('c', 1), ('a', 2)]
        );
        assert!(q.is_empty());
        assert_eq!(q.keys(), 0);
    }

    #[test]
    fn a_full_queue_hands_the_job_back_and_takes_jobs_again_once_served() {
        let mut q = FairQueue::new(2);
        q.push(&key("a"), ('a', 0)).unwrap();
        q.push(&key("b"), ('b', 0)).unwrap();
        assert_eq!(q.push(&key("c"), ('c', 0)), Err(('c', 0)));
        assert_eq!(q.len(), 2);
        assert_eq!(q.pop(), Some(('a', 0)));
        q.push(&key("c"), ('c', 0)).unwrap();
        assert_eq!(drain(&mut q), vec![('b', 0), ('c', 0)]);
    }

    #[test]
    fn a_key_that_empties_rejoins_at_the_back() {
        let mut q = FairQueue::new(10);
        q.push(&key("a"), ('a', 0)).unwrap();
        q.push(&key("b"), ('b', 0)).unwrap();
        q.push(&key("b"), ('b', 1)).unwrap();
        assert_eq!(q.pop(), Some(('a', 0)));
        // "a" comes back after "b" took its turn.
        q.push(&key("a"), ('a', 1)).unwrap();
        assert_eq!(drain(&mut q), vec![('b', 0), ('a', 1), ('b', 1)]);
    }
}
