//! What the daemon runs next, decided without touching anything: asks wait here while a run is
//! under way, and the next batch takes the first of them together with every other ask that
//! follows the branch tip (a tick, a push, a pull's run), so that after a run the newest tip
//! runs once, not once per ask. A person's ask (`troops deploy`, `troops rollback`) is its own
//! batch, in the order it came. Generic over who listens, so the rules are tested as a table.

use std::collections::VecDeque;

use troops_core::model::ask::Ask;

/// One ask waiting to run, and who hears how it goes.
#[derive(Debug)]
pub struct Pending<L> {
    pub ask: Ask,
    /// It follows a pull cycle that could fetch no remote.
    pub no_remote: bool,
    pub listeners: Vec<L>,
}

/// What one run of the worker does: the ask, and everyone who hears it.
#[derive(Debug, PartialEq, Eq)]
pub struct Batch<L> {
    pub ask: Ask,
    /// Every pull cycle merged into the batch could fetch no remote (there was one at least).
    pub no_remote: bool,
    pub listeners: Vec<L>,
}

#[derive(Debug)]
pub struct Queue<L> {
    pending: VecDeque<Pending<L>>,
}

impl<L> Default for Queue<L> {
    fn default() -> Self {
        Queue { pending: VecDeque::new() }
    }
}

impl<L> Queue<L> {
    pub fn push(&mut self, pending: Pending<L>) {
        self.pending.push_back(pending);
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Takes every listener of every waiting ask (the daemon is stopping: they hear so).
    pub fn drain_listeners(&mut self) -> Vec<L> {
        self.pending.drain(..).flat_map(|p| p.listeners).collect()
    }

    /// The next batch: the first waiting ask, and if it follows the tip, every other waiting ask
    /// that does too, merged. A merged batch is a push's when a push is in it (a person pushed:
    /// no rollout holds it), else a tick; it found no remote only when every pull in it did.
    pub fn next(&mut self) -> Option<Batch<L>> {
        let first = self.pending.pop_front()?;
        if !first.ask.follows_tip() {
            return Some(Batch { ask: first.ask, no_remote: first.no_remote, listeners: first.listeners });
        }
        let (tips, rest): (VecDeque<_>, VecDeque<_>) =
            self.pending.drain(..).partition(|p: &Pending<L>| p.ask.follows_tip());
        self.pending = rest;
        let mut batch = Batch { ask: first.ask, no_remote: first.no_remote, listeners: first.listeners };
        for pending in tips {
            if pending.ask == Ask::Push {
                batch.ask = Ask::Push;
            }
            batch.no_remote &= pending.no_remote;
            batch.listeners.extend(pending.listeners);
        }
        Some(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(ask: Ask, no_remote: bool, listener: &'static str) -> Pending<&'static str> {
        Pending { ask, no_remote, listeners: vec![listener] }
    }

    fn deploy() -> Ask {
        Ask::Deploy { rev: None, all_steps: false }
    }

    /// One row: the case, what waits, the batches it makes.
    type Row = (&'static str, Vec<Pending<&'static str>>, Vec<Batch<&'static str>>);

    fn batch(ask: Ask, no_remote: bool, listeners: Vec<&'static str>) -> Batch<&'static str> {
        Batch { ask, no_remote, listeners }
    }

    #[test]
    fn asks_that_follow_the_tip_merge_and_a_persons_asks_stay_apart_in_order() {
        #[rustfmt::skip]
        let table: Vec<Row> = vec![
            ("nothing waits", vec![], vec![]),
            ("one tick", vec![pending(Ask::Tick, false, "t")], vec![batch(Ask::Tick, false, vec!["t"])]),
            ("ticks merge", vec![pending(Ask::Tick, false, "a"), pending(Ask::Tick, false, "b")],
                vec![batch(Ask::Tick, false, vec!["a", "b"])]),
            ("a push makes the batch a push's, wherever it waits",
                vec![pending(Ask::Tick, false, "t"), pending(Ask::Push, false, "p"), pending(Ask::Tick, false, "u")],
                vec![batch(Ask::Push, false, vec!["t", "p", "u"])]),
            ("a person's deploy is its own batch, in its place",
                vec![pending(deploy(), false, "d"), pending(Ask::Tick, false, "t"), pending(deploy(), false, "e")],
                vec![batch(deploy(), false, vec!["d"]), batch(Ask::Tick, false, vec!["t"]), batch(deploy(), false, vec!["e"])]),
            ("tips behind a person's ask merge past it",
                vec![pending(Ask::Tick, false, "t"), pending(deploy(), false, "d"), pending(Ask::Push, false, "p")],
                vec![batch(Ask::Push, false, vec!["t", "p"]), batch(deploy(), false, vec!["d"])]),
            ("a rollback is a person's too",
                vec![pending(Ask::Rollback { to: None }, false, "r"), pending(Ask::Tick, false, "t")],
                vec![batch(Ask::Rollback { to: None }, false, vec!["r"]), batch(Ask::Tick, false, vec!["t"])]),
            ("no remote only when every pull found none",
                vec![pending(Ask::Tick, true, "a"), pending(Ask::Tick, false, "b")],
                vec![batch(Ask::Tick, false, vec!["a", "b"])]),
            ("no remote, twice",
                vec![pending(Ask::Tick, true, "a"), pending(Ask::Tick, true, "b")],
                vec![batch(Ask::Tick, true, vec!["a", "b"])]),
        ];
        for (case, asks, want) in table {
            let mut queue = Queue::default();
            asks.into_iter().for_each(|p| queue.push(p));
            let got: Vec<_> = std::iter::from_fn(|| queue.next()).collect();
            assert_eq!(got, want, "{case}");
            assert!(queue.is_empty(), "{case}");
        }
    }

    #[test]
    fn a_stopping_daemon_tells_everyone_who_waits() {
        let mut queue = Queue::default();
        queue.push(pending(Ask::Tick, false, "a"));
        queue.push(Pending { ask: deploy(), no_remote: false, listeners: vec!["b", "c"] });
        assert_eq!(queue.drain_listeners(), ["a", "b", "c"]);
        assert!(queue.next().is_none());
    }
}
