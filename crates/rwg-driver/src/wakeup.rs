//! A latch for a thread that sleeps until a deadline or until woken.

use std::sync::{Arc, Condvar, Mutex, PoisonError};

/// Wakes a sleeping control thread early. A wake-up that comes while the thread is busy is
/// remembered, so the next [`wait`](Wakeup::wait) returns at once: none is ever lost.
#[derive(Debug, Default)]
pub struct Wakeup {
    woken: Mutex<bool>,
    cond: Condvar,
}

impl Wakeup {
    /// A latch, not set.
    pub fn new() -> Arc<Wakeup> {
        Arc::new(Wakeup::default())
    }

    /// Sets the latch and wakes the waiting thread, if any.
    pub fn wake(&self) {
        let mut w = self.woken.lock().unwrap_or_else(PoisonError::into_inner);
        if !*w {
            *w = true;
            self.cond.notify_one();
        }
    }

    /// Sleeps until woken or until `deadline` (`None`: until woken), then clears the latch.
    /// Returns whether it was woken (as opposed to reaching the deadline).
    pub fn wait(&self, deadline: Option<std::time::Instant>) -> bool {
        let mut w = self.woken.lock().unwrap_or_else(PoisonError::into_inner);
        while !*w {
            match deadline {
                None => w = self.cond.wait(w).unwrap_or_else(PoisonError::into_inner),
                Some(d) => {
                    let Some(left) = d.checked_duration_since(std::time::Instant::now()) else {
                        return false;
                    };
                    if left.is_zero() {
                        return false;
                    }
                    w = self
                        .cond
                        .wait_timeout(w, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        }
        *w = false;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_wake_before_the_wait_is_not_lost() {
        let w = Wakeup::new();
        w.wake();
        // Far deadline: returns at once because the latch is set.
        assert!(w.wait(Some(std::time::Instant::now() + Duration::from_secs(3600))));
        // Latch cleared: a past deadline returns without a wake-up.
        assert!(!w.wait(Some(std::time::Instant::now())));
    }

    #[test]
    fn another_thread_wakes_a_sleeper() {
        let w = Wakeup::new();
        let w2 = w.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            tx.send(()).expect("main thread listens");
            w2.wait(None)
        });
        rx.recv().expect("sleeper started");
        w.wake();
        assert!(t.join().expect("no panic"));
    }
}
