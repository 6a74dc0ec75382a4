//! The correlator's memory: recent items in arrival order, each with an id, looked up
//! by id and by key, forgotten from the oldest end. Every operation is O(1) (lookup
//! by key: O(matches looked at)), whatever the input: a flood of echoes that all carry
//! one sequence number must not make forgetting quadratic.
use std::{
    collections::{hash_map::Entry, HashMap, VecDeque},
    hash::Hash,
};

/// Items with consecutive ids, oldest first.
pub struct Window<T> {
    items: VecDeque<T>,
    /// Id of `items[0]`.
    first: u64,
}

impl<T> Default for Window<T> {
    fn default() -> Self {
        Self {
            items: VecDeque::new(),
            first: 0,
        }
    }
}

impl<T> Window<T> {
    /// The id the next pushed item gets.
    pub fn next_id(&self) -> u64 {
        self.first + self.items.len() as u64
    }

    pub fn push(&mut self, t: T) -> u64 {
        let id = self.next_id();
        self.items.push_back(t);
        id
    }

    fn slot(&self, id: u64) -> Option<usize> {
        usize::try_from(id.checked_sub(self.first)?).ok()
    }

    pub fn get(&self, id: u64) -> Option<&T> {
        self.items.get(self.slot(id)?)
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut T> {
        let i = self.slot(id)?;
        self.items.get_mut(i)
    }

    pub fn front(&self) -> Option<&T> {
        self.items.front()
    }

    /// The oldest item and its id.
    pub fn pop_front(&mut self) -> Option<(u64, T)> {
        let t = self.items.pop_front()?;
        let id = self.first;
        self.first += 1;
        Some((id, t))
    }

    /// Oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> {
        self.items.iter()
    }

    /// Oldest first, with their ids.
    pub fn iter_ids(&self) -> impl DoubleEndedIterator<Item = (u64, &T)> {
        let first = self.first;
        self.items
            .iter()
            .enumerate()
            .map(move |(i, t)| (first + i as u64, t))
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Ids by key, each list in increasing id order. Items leave a [`Window`] oldest first,
/// so the id forgotten is always the front of its list.
pub struct Index<K> {
    ids: HashMap<K, VecDeque<u64>>,
}

impl<K> Default for Index<K> {
    fn default() -> Self {
        Self {
            ids: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq> Index<K> {
    pub fn add(&mut self, k: K, id: u64) {
        self.ids.entry(k).or_default().push_back(id);
    }

    /// Forgets `id` under `k`: the oldest id there when ids leave in order; any other
    /// (odd input) is searched for rather than left behind.
    pub fn forget(&mut self, k: K, id: u64) {
        let Entry::Occupied(mut e) = self.ids.entry(k) else {
            return;
        };
        let list = e.get_mut();
        if list.front() == Some(&id) {
            list.pop_front();
        } else if let Some(i) = list.iter().position(|&x| x == id) {
            list.remove(i);
        }
        if list.is_empty() {
            e.remove();
        }
    }

    /// Ids under `k`, oldest first.
    pub fn get(&self, k: &K) -> impl DoubleEndedIterator<Item = u64> + '_ {
        self.ids.get(k).into_iter().flat_map(|l| l.iter().copied())
    }

    /// Keys held (memory accounting).
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_stay_valid_while_the_front_moves() {
        let mut w = Window::default();
        let a = w.push("a");
        let b = w.push("b");
        assert_eq!((a, b), (0, 1));
        assert_eq!(w.pop_front(), Some((0, "a")));
        assert_eq!(w.get(a), None);
        assert_eq!(w.get(b), Some(&"b"));
        assert_eq!(w.push("c"), 2);
        assert_eq!(w.get(2), Some(&"c"));
        assert_eq!(w.get(u64::MAX), None);
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn ids_of_iteration_follow_the_front() {
        let mut w = Window::default();
        assert!(w.is_empty());
        for t in ["a", "b", "c"] {
            w.push(t);
        }
        w.pop_front();
        assert!(!w.is_empty());
        // "a" was id 0: "b" and "c" keep 1 and 2.
        assert_eq!(w.iter_ids().collect::<Vec<_>>(), vec![(1, &"b"), (2, &"c")]);
    }

    #[test]
    fn index_len_counts_keys() {
        let mut ix = Index::default();
        assert!(ix.is_empty());
        assert_eq!(ix.len(), 0);
        ix.add(1u16, 0);
        ix.add(1, 1);
        ix.add(2, 2);
        assert!(!ix.is_empty());
        // Keys 1 and 2 (three ids).
        assert_eq!(ix.len(), 2);
    }

    #[test]
    fn forgetting_in_order_is_constant_time_and_leaves_nothing() {
        let mut ix = Index::default();
        for id in 0..100_000 {
            ix.add(7u16, id);
        }
        for id in 0..100_000 {
            ix.forget(7u16, id);
        }
        assert!(ix.is_empty());
        ix.add(1, 5);
        ix.add(1, 6);
        ix.forget(1, 6);
        assert_eq!(ix.get(&1).collect::<Vec<_>>(), vec![5]);
        ix.forget(2, 1);
        assert_eq!(ix.len(), 1);
    }
}
