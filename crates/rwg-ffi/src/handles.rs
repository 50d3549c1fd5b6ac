//! The handle tables: what turns a `rwg_core` / `rwg_tunnel` id from C into the object.
//!
//! Ids come from one counter for the whole process and are never reused, so a handle that
//! was freed (or never issued, or belongs to the other table) is simply not found: use after
//! free is an error code, not undefined behaviour. Objects are reference-counted: a call in
//! progress on one thread keeps its object alive while another thread frees the handle.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use crate::error::RwgError;

/// Ids handed out so far; 0 is never one.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Live objects of one kind by id.
#[derive(Debug)]
pub(crate) struct HandleTable<T> {
    entries: RwLock<BTreeMap<u64, Arc<T>>>,
}

impl<T> HandleTable<T> {
    pub(crate) const fn new() -> Self {
        HandleTable {
            entries: RwLock::new(BTreeMap::new()),
        }
    }

    /// Stores `value` under a new id.
    pub(crate) fn insert(&self, value: T) -> u64 {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        self.entries
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, Arc::new(value));
        id
    }

    /// The object of a live id.
    pub(crate) fn get(&self, id: u64) -> Result<Arc<T>, RwgError> {
        self.entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned()
            .ok_or(RwgError::InvalidHandle)
    }

    /// Forgets an id; the object goes once no call holds it any more.
    pub(crate) fn remove(&self, id: u64) -> Result<Arc<T>, RwgError> {
        self.entries
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id)
            .ok_or(RwgError::InvalidHandle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_never_reused_and_freed_ones_are_not_found() {
        let table = HandleTable::new();
        let a = table.insert("a");
        assert_eq!(*table.get(a).expect("live"), "a");
        let held = table.get(a).expect("live");
        assert_eq!(*table.remove(a).expect("removed"), "a");
        assert_eq!(table.get(a).err(), Some(RwgError::InvalidHandle));
        assert_eq!(table.remove(a).err(), Some(RwgError::InvalidHandle));
        assert_eq!(*held, "a", "a call in progress keeps its object");
        let b = table.insert("b");
        assert!(b > a, "a new object gets a new id");
        assert_eq!(table.get(0).err(), Some(RwgError::InvalidHandle));
        let other: HandleTable<u8> = HandleTable::new();
        assert_eq!(other.get(b).err(), Some(RwgError::InvalidHandle));
    }
}
