//! Request batching: concurrent calls of one script share an `EVALSHA`.
//!
//! Many tasks locking different keys through one backend each need one script
//! call per operation. Sent one by one they cost the server a Lua call each
//! (about 2 µs more than a plain command) and the client a request each.
//! A [`Batcher`] queues the calls, and up to [`IN_FLIGHT`] batch tasks each
//! send everything queued so far as one script call over all the keys (the
//! scripts loop over their key groups), then hand every caller its own reply.
//! A call that finds a batch slot free and nobody queued is sent at once
//! from the caller's own task, as a batch of one: a single task pays no
//! task hop (a thread wake-up that cost it about a tenth of a loopback
//! round trip). Batches form only while earlier calls are in flight.
//!
//! A batch that fails as a whole (connection lost, timeout) fails every call
//! in it with the same kind of error: each caller sees exactly what it would
//! have seen alone, an ambiguous outcome it already knows how to clean up.
//! A batch of several calls is sent from its own task, so a caller that
//! gives up (a dropped future) never cancels the requests of the others; a
//! call sent alone from its caller's task that the caller gives up on is
//! finished in the background when abandoned calls are sent anyway
//! ([`Abandoned::Send`]).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use coord_core::{Error, Result};
use futures::FutureExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

/// Batches a backend sends at the same time, per script. More batches in
/// flight mean smaller batches; fewer mean callers queue behind a round trip.
pub(crate) const IN_FLIGHT: usize = 2;

/// Calls one batch carries at most (each adds its keys to one `EVALSHA`).
pub(crate) const MAX_BATCH: usize = 64;

type Waiter<I, O> = (I, oneshot::Sender<Result<O>>);

/// What to do with a queued call whose caller has given up (dropped its
/// future) before the call was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Abandoned {
    /// Drop it: sending it late would, for an acquisition, take a lock
    /// nobody renews or releases.
    Skip,
    /// Send it anyway (a release should happen whether or not anyone waits).
    Send,
}

/// A queue of calls of one script and the batch tasks that send them.
pub(crate) struct Batcher<I, O> {
    queue: Mutex<VecDeque<Waiter<I, O>>>,
    in_flight: Arc<Semaphore>,
    abandoned: Abandoned,
}

impl<I, O> Batcher<I, O>
where
    I: Send + 'static,
    O: Send + 'static,
{
    pub(crate) fn new(abandoned: Abandoned) -> Self {
        Self::with_in_flight(abandoned, IN_FLIGHT)
    }

    fn with_in_flight(abandoned: Abandoned, in_flight: usize) -> Self {
        Batcher {
            queue: Mutex::new(VecDeque::new()),
            in_flight: Arc::new(Semaphore::new(in_flight)),
            abandoned,
        }
    }

    /// Queues `item` and waits for its reply. `send` sends one batch (its
    /// items in order) and returns one reply per item, in the same order.
    pub(crate) async fn call<S, F>(self: &Arc<Self>, item: I, send: S) -> Result<O>
    where
        S: Fn(Vec<I>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Vec<Result<O>>> + Send + 'static,
    {
        let permit = self.in_flight.clone().try_acquire_owned().ok();
        let permit = match permit {
            Some(permit) if self.lock().is_empty() => {
                return self.call_inline(permit, item, send).await;
            }
            other => other,
        };
        let (tx, rx) = oneshot::channel();
        self.lock().push_back((item, tx));
        match permit {
            Some(permit) => self.spawn_runner(permit, &send),
            None => self.kick(&send),
        }
        rx.await.unwrap_or_else(|_| {
            Err(Error::unavailable(
                "the batch carrying this request ended without a reply (it failed, or the \
                 runtime is shutting down); it may or may not have been applied",
                None,
            ))
        })
    }

    /// Sends `item` alone from the caller's task, holding `permit` (one of
    /// the [`IN_FLIGHT`] slots) meanwhile. A panic in `send` is the
    /// caller's `Unavailable` error, as in a batch task.
    async fn call_inline<S, F>(
        self: &Arc<Self>,
        permit: OwnedSemaphorePermit,
        item: I,
        send: S,
    ) -> Result<O>
    where
        S: Fn(Vec<I>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Vec<Result<O>>> + Send + 'static,
    {
        let mut inline = Inline {
            batcher: self.clone(),
            permit: Some(permit),
            send: send.clone(),
            flight: None,
        };
        let flight: Pin<Box<F>> = Box::pin(send(vec![item]));
        let flight = inline.flight.insert(flight);
        let result = std::panic::AssertUnwindSafe(flight.as_mut())
            .catch_unwind()
            .await;
        inline.flight = None;
        drop(inline);
        match result {
            Ok(mut replies) => replies.pop().unwrap_or_else(|| {
                Err(Error::unavailable(
                    "a request sent alone came back without a reply; it may or may not \
                     have been applied",
                    None,
                ))
            }),
            Err(_) => Err(Error::unavailable(
                "the request panicked while it was sent; it may or may not have been applied",
                None,
            )),
        }
    }

    /// Starts a batch task when fewer than [`IN_FLIGHT`] are running.
    fn kick<S, F>(self: &Arc<Self>, send: &S)
    where
        S: Fn(Vec<I>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Vec<Result<O>>> + Send + 'static,
    {
        if let Ok(permit) = self.in_flight.clone().try_acquire_owned() {
            self.spawn_runner(permit, send);
        }
    }

    /// Starts a batch task holding `permit`.
    fn spawn_runner<S, F>(self: &Arc<Self>, permit: OwnedSemaphorePermit, send: &S)
    where
        S: Fn(Vec<I>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Vec<Result<O>>> + Send + 'static,
    {
        let runner = Runner {
            batcher: self.clone(),
            permit: Some(permit),
            send: send.clone(),
        };
        tokio::spawn(runner.run());
    }

    /// After a slot came back: a batch task for the calls queued meanwhile
    /// (whose own kick may have found every slot taken), if a runtime is
    /// there to run it.
    fn kick_if_queued<S, F>(self: &Arc<Self>, send: &S)
    where
        S: Fn(Vec<I>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Vec<Result<O>>> + Send + 'static,
    {
        if !self.lock().is_empty() && tokio::runtime::Handle::try_current().is_ok() {
            self.kick(send);
        }
    }

    /// Up to [`MAX_BATCH`] queued calls, without the abandoned ones when
    /// those are skipped (their callers see nothing: they are gone).
    fn next_batch(&self) -> Vec<Waiter<I, O>> {
        let mut queue = self.lock();
        let mut batch = Vec::with_capacity(queue.len().min(MAX_BATCH));
        while batch.len() < MAX_BATCH {
            let Some(waiter) = queue.pop_front() else {
                break;
            };
            if self.abandoned == Abandoned::Skip && waiter.1.is_closed() {
                continue;
            }
            batch.push(waiter);
        }
        batch
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Waiter<I, O>>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A call sent alone from its caller's task (see [`Batcher::call_inline`]):
/// holds its slot while in flight. Dropped in flight (the caller gave up),
/// it finishes the call in the background when abandoned calls are sent
/// anyway, and drops it otherwise; either way the slot comes back and the
/// calls queued meanwhile get a batch task.
struct Inline<I, O, S, F>
where
    I: Send + 'static,
    O: Send + 'static,
    S: Fn(Vec<I>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Vec<Result<O>>> + Send + 'static,
{
    batcher: Arc<Batcher<I, O>>,
    permit: Option<OwnedSemaphorePermit>,
    send: S,
    flight: Option<Pin<Box<F>>>,
}

impl<I, O, S, F> Drop for Inline<I, O, S, F>
where
    I: Send + 'static,
    O: Send + 'static,
    S: Fn(Vec<I>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Vec<Result<O>>> + Send + 'static,
{
    fn drop(&mut self) {
        let permit = self.permit.take();
        let flight = self.flight.take();
        let runtime = tokio::runtime::Handle::try_current();
        match (flight, runtime) {
            (Some(flight), Ok(runtime)) if self.batcher.abandoned == Abandoned::Send => {
                let (batcher, send) = (self.batcher.clone(), self.send.clone());
                runtime.spawn(async move {
                    let _ = std::panic::AssertUnwindSafe(flight).catch_unwind().await;
                    drop(permit);
                    batcher.kick_if_queued(&send);
                });
            }
            _ => {
                drop(permit);
                self.batcher.kick_if_queued(&self.send);
            }
        }
    }
}

/// One batch task: holds an in-flight permit while it sends batches.
struct Runner<I, O, S>
where
    I: Send + 'static,
    O: Send + 'static,
{
    batcher: Arc<Batcher<I, O>>,
    permit: Option<OwnedSemaphorePermit>,
    send: S,
}

impl<I, O, S, F> Runner<I, O, S>
where
    I: Send + 'static,
    O: Send + 'static,
    S: Fn(Vec<I>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Vec<Result<O>>> + Send + 'static,
{
    /// Sends batches until the queue is empty, then gives the permit back.
    async fn run(mut self) {
        loop {
            let batch = self.batcher.next_batch();
            if batch.is_empty() {
                break;
            }
            let (items, replies): (Vec<I>, Vec<_>) = batch.into_iter().unzip();
            let results = (self.send)(items).await;
            for (reply, result) in replies.into_iter().zip(results) {
                // A caller that gave up dropped its receiver: nothing to do.
                let _ = reply.send(result);
            }
        }
        drop(self.permit.take());
        // A call queued after the last drain, whose kick found no permit
        // free while this task still held one, would be stranded.
        if !self.batcher.lock().is_empty() {
            self.batcher.kick(&self.send);
        }
    }
}

impl<I, O, S> Drop for Runner<I, O, S>
where
    I: Send + 'static,
    O: Send + 'static,
{
    /// A task that ends abnormally (a panic while sending, or dropped with
    /// its runtime) still holds its permit: give it back, and fail the
    /// queued calls rather than leave them waiting for a task that may never
    /// come (their callers see an ambiguous error and clean up).
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            drop(permit);
            let stranded: Vec<_> = self.batcher.lock().drain(..).collect();
            drop(stranded);
        }
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
        let batcher = Arc::new(Batcher::<u64, u64>::new(Abandoned::Skip));
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
        let batcher = Arc::new(Batcher::<u64, u64>::new(Abandoned::Skip));
        let sizes = Arc::new(Mutex::new(Vec::new()));
        assert_eq!(batcher.call(21, doubling(sizes.clone())).await.unwrap(), 42);
        assert_eq!(*sizes.lock().unwrap(), vec![1]);
    }

    #[tokio::test]
    async fn a_failed_batch_fails_each_of_its_calls() {
        let batcher = Arc::new(Batcher::<u64, u64>::new(Abandoned::Skip));
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
        let batcher = Arc::new(Batcher::<u64, u64>::new(Abandoned::Skip));
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

    /// A batcher with one batch in flight whose first batch waits for
    /// `gate`; every batch's items are recorded in `seen`.
    #[allow(clippy::type_complexity)]
    fn gated(
        abandoned: Abandoned,
        gate: Arc<tokio::sync::Semaphore>,
        seen: Arc<Mutex<Vec<Vec<u64>>>>,
    ) -> (
        Arc<Batcher<u64, u64>>,
        impl Fn(Vec<u64>) -> futures::future::BoxFuture<'static, Vec<Result<u64>>> + Clone,
    ) {
        let send = move |items: Vec<u64>| {
            let (gate, seen) = (gate.clone(), seen.clone());
            Box::pin(async move {
                seen.lock().unwrap().push(items.clone());
                let _pass = gate.acquire().await.unwrap();
                items.into_iter().map(Ok).collect::<Vec<_>>()
            }) as futures::future::BoxFuture<'static, _>
        };
        (Arc::new(Batcher::with_in_flight(abandoned, 1)), send)
    }

    /// Calls `item` in a task of its own and waits until it is queued
    /// behind the batch in flight (bounded).
    async fn queue_behind(
        batcher: &Arc<Batcher<u64, u64>>,
        send: impl Fn(Vec<u64>) -> futures::future::BoxFuture<'static, Vec<Result<u64>>>
        + Clone
        + Send
        + Sync
        + 'static,
        item: u64,
    ) -> tokio::task::JoinHandle<Result<u64>> {
        let queued = batcher.lock().len();
        let call = {
            let batcher = batcher.clone();
            tokio::spawn(async move { batcher.call(item, send).await })
        };
        tokio::time::timeout(Duration::from_secs(5), async {
            while batcher.lock().len() == queued {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the call is queued");
        call
    }

    #[tokio::test]
    async fn an_abandoned_acquisition_is_not_sent_late_a_release_is() {
        for (abandoned, second_batch) in [
            (Abandoned::Skip, vec![1, 3]),
            (Abandoned::Send, vec![1, 2, 3]),
        ] {
            let gate = Arc::new(tokio::sync::Semaphore::new(0));
            let seen = Arc::new(Mutex::new(Vec::new()));
            let (batcher, send) = gated(abandoned, gate.clone(), seen.clone());
            let first = {
                let (batcher, send) = (batcher.clone(), send.clone());
                tokio::spawn(async move { batcher.call(0, send).await })
            };
            tokio::time::timeout(Duration::from_secs(5), async {
                while seen.lock().unwrap().is_empty() {
                    tokio::task::yield_now().await;
                }
            })
            .await
            .expect("the first batch is in flight");
            let one = queue_behind(&batcher, send.clone(), 1).await;
            let two = queue_behind(&batcher, send.clone(), 2).await;
            let three = queue_behind(&batcher, send.clone(), 3).await;
            // The caller of 2 gives up while its call waits in the queue.
            two.abort();
            assert!(two.await.unwrap_err().is_cancelled());
            gate.add_permits(2);
            assert_eq!(first.await.unwrap().unwrap(), 0);
            assert_eq!(one.await.unwrap().unwrap(), 1);
            assert_eq!(three.await.unwrap().unwrap(), 3);
            assert_eq!(
                *seen.lock().unwrap(),
                vec![vec![0], second_batch],
                "{abandoned:?}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_call_given_up_in_flight_gives_its_slot_back_and_a_release_still_completes() {
        use std::sync::atomic::{AtomicBool, Ordering};
        for abandoned in [Abandoned::Send, Abandoned::Skip] {
            let gate = Arc::new(tokio::sync::Semaphore::new(0));
            let completed = Arc::new(AtomicBool::new(false));
            let batcher = Arc::new(Batcher::<u64, u64>::with_in_flight(abandoned, 1));
            let send = {
                let (gate, completed) = (gate.clone(), completed.clone());
                move |items: Vec<u64>| {
                    let (gate, completed) = (gate.clone(), completed.clone());
                    async move {
                        gate.acquire().await.unwrap().forget();
                        completed.store(true, Ordering::SeqCst);
                        items.into_iter().map(Ok).collect::<Vec<_>>()
                    }
                }
            };
            let call = {
                let (batcher, send) = (batcher.clone(), send.clone());
                tokio::spawn(async move { batcher.call(1, send).await })
            };
            tokio::time::timeout(Duration::from_secs(5), async {
                while batcher.in_flight.available_permits() > 0 {
                    tokio::task::yield_now().await;
                }
            })
            .await
            .expect("the lone call is in flight");
            call.abort();
            assert!(call.await.unwrap_err().is_cancelled());
            gate.add_permits(1);
            if abandoned == Abandoned::Send {
                tokio::time::timeout(Duration::from_secs(5), async {
                    while !completed.load(Ordering::SeqCst) {
                        tokio::task::yield_now().await;
                    }
                })
                .await
                .expect("a release given up in flight is finished in the background");
            } else {
                assert!(!completed.load(Ordering::SeqCst), "{abandoned:?}");
            }
            // The slot came back: the next call is sent.
            gate.add_permits(1);
            let next = tokio::time::timeout(Duration::from_secs(5), batcher.call(2, send))
                .await
                .expect("the slot was given back");
            assert_eq!(next.unwrap(), 2, "{abandoned:?}");
        }
    }

    #[tokio::test]
    async fn a_batch_task_that_panics_fails_its_calls_and_frees_its_slot() {
        let batcher = Arc::new(Batcher::<u64, u64>::with_in_flight(Abandoned::Skip, 1));
        let send = |items: Vec<u64>| async move {
            assert!(!items.contains(&99), "injected panic in send");
            items.into_iter().map(Ok).collect::<Vec<_>>()
        };
        let err = batcher.call(99, send).await.unwrap_err();
        assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
        // The only in-flight slot came back: the next call is sent.
        let next = tokio::time::timeout(Duration::from_secs(5), batcher.call(7, send))
            .await
            .expect("the slot was given back");
        assert_eq!(next.unwrap(), 7);
    }
}
