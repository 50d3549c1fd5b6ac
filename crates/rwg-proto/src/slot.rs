//! Storage for large, often empty parts of a peer (keypairs, a handshake in flight).
//!
//! With an allocator they are boxed, so that an idle peer — one of 100 000 — pays a pointer for
//! each instead of its full size (a keypair's replay window alone is 1 KiB). Without one they
//! are stored inline: a device without a heap talks to one peer, and there size is no concern.

#[cfg(feature = "alloc")]
pub(crate) type Slot<T> = alloc::boxed::Box<T>;

#[cfg(feature = "alloc")]
pub(crate) fn slot<T>(value: T) -> Slot<T> {
    alloc::boxed::Box::new(value)
}

#[cfg(not(feature = "alloc"))]
pub(crate) use inline::Slot;

#[cfg(not(feature = "alloc"))]
pub(crate) fn slot<T>(value: T) -> Slot<T> {
    inline::Slot(value)
}

#[cfg(not(feature = "alloc"))]
mod inline {
    /// A value stored in place, with the same `Deref` interface as a `Box`.
    #[derive(Debug)]
    pub(crate) struct Slot<T>(pub(super) T);

    impl<T> core::ops::Deref for Slot<T> {
        type Target = T;
        fn deref(&self) -> &T {
            &self.0
        }
    }

    impl<T> core::ops::DerefMut for Slot<T> {
        fn deref_mut(&mut self) -> &mut T {
            &mut self.0
        }
    }
}
