//! Request batching: concurrent calls of one script share an `EVALSHA`.
//!
//! Many tasks locking different keys through one backend each need one script
//! call per operation. Sent one by one they cost the server a Lua call each
//! (about 2 µs more than a plain command) and the client a request each.
//! A [`Batcher`] queues the calls, and up to [`IN_FLIGHT`] batch tasks each
//! send everything queued so far as one script call over all the keys (the
//! scripts loop over their key groups), then hand every caller its own reply.
//! An idle backend sends a lone call at once, so a single task pays only a
//! task hop; batches form only while earlier batches are in flight.
//!
//! A batch that fails as a whole (connection lost, timeout) fails every call
//! in it with the same kind of error: each caller sees exactly what it would
//! have seen alone, an ambiguous outcome it already knows how to clean up.
//! A batch is sent from its own task, so a caller that gives up (a dropped
//! future) never cancels the requests of the others.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};

use coord_core::{Error, Result};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

/// Batches a backend sends at the same time, per script. More batches in
/// flight mean smaller batches; fewer mean callers queue behind a round trip.
pub(crate) const IN_FLIGHT: usize = 2;

/// Calls one batch carries at most (each adds its keys to one `EVALSHA`).
pub(crate) const MAX_BATCH: usize = 64;

type Waiter<I, O> = (I, oneshot::Sender<Result<O>>);

/// A queue of calls of one script and the batch tasks that send them.
pub(crate) struct Batcher<I, O> {
    queue: Mutex<VecDeque<Waiter<I, O>>>,
    in_flight: Arc<Semaphore>,
}

impl<I, O> Batcher<I, O>
where
    I: Send + 'static,
    O: Send + 'static,
{
    pub(crate) fn new() -> Self {
        Batcher {
            queue: Mutex::new(VecDeque::new()),
            in_flight: Arc::new(Semaphore::new(IN_FLIGHT)),
        }
    }

    /// Queues `item` and waits for its reply. `send` sends one batch (its
    /// items in order) and returns one reply per item, in the same order.
    pub(crate) async fn call<S, F>(self: &Arc<Self>, item: I, send: S) -> Result<O>
    where
        S: Fn(Vec<I>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Vec<Result<O>>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.lock().push_back((item, tx));
        self.kick(&send);
        rx.await.unwrap_or_else(|_| {
            Err(Error::unavailable(
                "the batch carrying this request ended without a reply (the runtime is \
                 shutting down?); it may or may not have been applied",
                None,
            ))
        })
    }

    /// Starts a batch task when fewer than [`IN_FLIGHT`] are running.
    fn kick<S, F>(self: &Arc<Self>, send: &S)
    where
        S: Fn(Vec<I>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Vec<Result<O>>> + Send + 'static,
    {
        if let Ok(permit) = self.in_flight.clone().try_acquire_owned() {
            tokio::spawn(self.clone().run(permit, send.clone()));
        }
    }

    /// Sends batches until the queue is empty, then gives the permit back.
    async fn run<S, F>(self: Arc<Self>, permit: OwnedSemaphorePermit, send: S)
    where
        S: Fn(Vec<I>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Vec<Result<O>>> + Send + 'static,
    {
        loop {
            let batch: Vec<Waiter<I, O>> = {
                let mut queue = self.lock();
                let n = queue.len().min(MAX_BATCH);
                queue.drain(..n).collect()
            };
            if batch.is_empty() {
                break;
            }
            let (items, replies): (Vec<I>, Vec<_>) = batch.into_iter().unzip();
            let results = send(items).await;
            debug_assert_eq!(results.len(), replies.len());
            for (reply, result) in replies.into_iter().zip(results) {
                // A caller that gave up dropped its receiver: nothing to do.
                let _ = reply.send(result);
            }
        }
        drop(permit);
        // A call queued after the last drain, whose kick found no permit
        // free while this task still held one, would be stranded.
        if !self.lock().is_empty() {
            self.kick(&send);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Waiter<I, O>>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A batcher whose "server" doubles each item after a short delay,
    /// recording the size of every batch it sees.
    fn doubling(
        sizes: Arc<Mutex<Vec<usize>>>,
    ) -> impl Fn(Vec<u64>) -> futures::future::BoxFuture<'static, Vec<Result<u64>>> + Clone {
        move |items: Vec<u64>| {
            let sizes = sizes.clone();
            Box::pin(async move {
                sizes.lock().unwrap().push(items.len());
                tokio::time::sleep(Duration::from_millis(2)).await;
                items.into_iter().map(|i| Ok(i * 2)).collect()
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_caller_gets_its_own_reply_and_batches_form_under_load() {
        let batcher = Arc::new(Batcher::<u64, u64>::new());
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let send = doubling(sizes.clone());
        let calls: Vec<_> = (0..500u64)
            .map(|i| {
                let (batcher, send) = (batcher.clone(), send.clone());
                tokio::spawn(async move { (i, batcher.call(i, send).await) })
            })
            .collect();
        for call in calls {
            let (i, reply) = tokio::time::timeout(Duration::from_secs(10), call)
                .await
                .expect("no call is stranded")
                .unwrap();
            assert_eq!(reply.unwrap(), i * 2);
        }
        let sizes = sizes.lock().unwrap();
        assert_eq!(sizes.iter().sum::<usize>(), 500);
        assert!(
            sizes.iter().all(|&n| (1..=MAX_BATCH).contains(&n)),
            "{sizes:?}"
        );
        assert!(sizes.len() < 500, "no batch formed: {} sends", sizes.len());
    }

    #[tokio::test]
    async fn a_lone_call_is_sent_at_once_as_a_batch_of_one() {
        let batcher = Arc::new(Batcher::<u64, u64>::new());
        let sizes = Arc::new(Mutex::new(Vec::new()));
        assert_eq!(batcher.call(21, doubling(sizes.clone())).await.unwrap(), 42);
        assert_eq!(*sizes.lock().unwrap(), vec![1]);
    }

    #[tokio::test]
    async fn a_failed_batch_fails_each_of_its_calls() {
        let batcher = Arc::new(Batcher::<u64, u64>::new());
        let send = |items: Vec<u64>| async move {
            items
                .iter()
                .map(|_| Err(Error::Timeout("injected".into())))
                .collect::<Vec<Result<u64>>>()
        };
        let replies = futures::future::join_all((0..10).map(|i| batcher.call(i, send))).await;
        assert!(replies.iter().all(|r| matches!(r, Err(Error::Timeout(_)))));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_that_gives_up_does_not_cancel_the_others() {
        let batcher = Arc::new(Batcher::<u64, u64>::new());
        let in_flight = Arc::new(tokio::sync::Notify::new());
        let send = {
            let in_flight = in_flight.clone();
            move |items: Vec<u64>| {
                let in_flight = in_flight.clone();
                async move {
                    in_flight.notify_one();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    items.into_iter().map(|i| Ok(i + 1)).collect::<Vec<_>>()
                }
            }
        };
        let calls: Vec<_> = (0..40u64)
            .map(|i| {
                let (batcher, send) = (batcher.clone(), send.clone());
                tokio::spawn(async move { batcher.call(i, send).await })
            })
            .collect();
        // Once a batch is in flight, give up on every other call.
        in_flight.notified().await;
        for call in calls.iter().step_by(2) {
            call.abort();
        }
        for (i, call) in calls.into_iter().enumerate().skip(1).step_by(2) {
            assert_eq!(call.await.unwrap().unwrap(), i as u64 + 1);
        }
    }
}
