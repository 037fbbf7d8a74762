//! Delivery of transitions to `on_change` hooks: in order, one at a time,
//! outside the breaker's lock, without a thread ever waiting for another.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use super::state::BreakerTransition;

pub(super) type Hook = Arc<dyn Fn(BreakerTransition) + Send + Sync>;

/// The hooks and the transitions not yet delivered to them.
#[derive(Default)]
pub(super) struct Hooks {
    hooks: Mutex<Vec<Hook>>,
    /// Pushed under the breaker's lock, so in transition order.
    pending: Mutex<VecDeque<BreakerTransition>>,
    /// Held by the one thread delivering.
    delivering: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hooks {
    pub(super) fn add(&self, hook: Hook) {
        lock(&self.hooks).push(hook);
    }

    /// Queues a transition; call [`deliver`](Self::deliver) once the
    /// breaker's lock is released.
    pub(super) fn push(&self, transition: BreakerTransition) {
        lock(&self.pending).push_back(transition);
    }

    /// Delivers the queued transitions, unless another thread (or a hook
    /// further up this thread's stack) is delivering: that one delivers
    /// them too, as it checks the queue again after letting go.
    pub(super) fn deliver(&self) {
        loop {
            let turn = match self.delivering.try_lock() {
                Ok(turn) => turn,
                Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                Err(TryLockError::WouldBlock) => return,
            };
            loop {
                let batch: Vec<_> = lock(&self.pending).drain(..).collect();
                if batch.is_empty() {
                    break;
                }
                let hooks = lock(&self.hooks).clone();
                for transition in batch {
                    for hook in &hooks {
                        hook(transition);
                    }
                }
            }
            drop(turn);
            // A transition queued after the last drain, whose thread found
            // `delivering` taken, is ours to deliver.
            if lock(&self.pending).is_empty() {
                return;
            }
        }
    }
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooks")
            .field("hooks", &lock(&self.hooks).len())
            .finish_non_exhaustive()
    }
}
