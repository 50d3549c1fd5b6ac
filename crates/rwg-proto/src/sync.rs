//! Locks for the shared parts of the core.
//!
//! With the `std` feature the operating system's locks are used (threads sleep instead of
//! spinning); without it, spin locks keep the crate `no_std`. Both are wrapped so that callers
//! never see poisoning: a panic while holding a lock cannot happen on network input, and if a
//! caller's bug causes one the state is still structurally valid.

#[cfg(feature = "std")]
mod imp {
    extern crate std;
    use std::sync::PoisonError;
    pub(crate) use std::sync::{MutexGuard, RwLockReadGuard, RwLockWriteGuard};

    #[derive(Debug, Default)]
    pub(crate) struct Mutex<T>(std::sync::Mutex<T>);
    impl<T> Mutex<T> {
        pub(crate) const fn new(v: T) -> Self {
            Mutex(std::sync::Mutex::new(v))
        }
        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock().unwrap_or_else(PoisonError::into_inner)
        }
    }

    #[derive(Debug, Default)]
    pub(crate) struct RwLock<T>(std::sync::RwLock<T>);
    impl<T> RwLock<T> {
        pub(crate) const fn new(v: T) -> Self {
            RwLock(std::sync::RwLock::new(v))
        }
        pub(crate) fn read(&self) -> RwLockReadGuard<'_, T> {
            self.0.read().unwrap_or_else(PoisonError::into_inner)
        }
        pub(crate) fn write(&self) -> RwLockWriteGuard<'_, T> {
            self.0.write().unwrap_or_else(PoisonError::into_inner)
        }
    }
}

#[cfg(not(feature = "std"))]
mod imp {
    pub(crate) use spin::{MutexGuard, RwLockReadGuard, RwLockWriteGuard};

    #[derive(Debug, Default)]
    pub(crate) struct Mutex<T>(spin::Mutex<T>);
    impl<T> Mutex<T> {
        pub(crate) const fn new(v: T) -> Self {
            Mutex(spin::Mutex::new(v))
        }
        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock()
        }
    }

    #[derive(Debug, Default)]
    pub(crate) struct RwLock<T>(spin::RwLock<T>);
    impl<T> RwLock<T> {
        pub(crate) const fn new(v: T) -> Self {
            RwLock(spin::RwLock::new(v))
        }
        pub(crate) fn read(&self) -> RwLockReadGuard<'_, T> {
            self.0.read()
        }
        pub(crate) fn write(&self) -> RwLockWriteGuard<'_, T> {
            self.0.write()
        }
    }
}

#[allow(unused_imports)]
pub(crate) use imp::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
