//! [`Election::lead`]: run a closure while leading, campaign again after each
//! term ends, until cancelled (Curator's `LeaderSelector` with auto-requeue).

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::lock::election::Election;
use crate::lock::types::FencingToken;

/// One term, as the closure of [`Election::lead`] receives it.
#[derive(Debug, Clone)]
pub struct LeaderTerm {
    /// The term's fencing token: pass it with every write the leader makes.
    pub token: FencingToken,
    /// How many terms this selector has had, this one included (from 1).
    pub number: u64,
    /// Cancelled when the term ends: leadership lost, or the selector
    /// cancelled. The closure's future is dropped at that moment anyway;
    /// watch this token to hand work off cleanly first.
    pub ended: CancellationToken,
}

/// How a term ended.
enum TermEnd {
    Returned(Result<()>),
    Lost(Error),
    Cancelled,
}

impl Election {
    /// Leads whenever it can, until `cancel` is cancelled: campaigns with
    /// `value`, runs `lead` for the term, and when the term ends (`lead`
    /// returned, or leadership was lost) resigns and campaigns again.
    /// Returns how many terms it led, once cancelled; an error only for
    /// a campaign that cannot succeed (a bad name or TTL, or the client was
    /// shut down: [`Error::Closed`]). Campaign errors
    /// that may pass (the backend unreachable) are retried after
    /// `retry_delay`. An error returned by `lead` is logged and ends the
    /// term.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use coord_core::{LockClient, memory::MemoryBackend};
    /// use tokio_util::sync::CancellationToken;
    ///
    /// let client = LockClient::new(Arc::new(MemoryBackend::new()));
    /// let election = client.election("scheduler").build();
    /// let cancel = CancellationToken::new();
    /// let stop = cancel.clone();
    /// let terms = election
    ///     .lead("node-1", cancel, Duration::from_millis(100), move |term| {
    ///         let stop = stop.clone();
    ///         async move {
    ///             println!("leading, term {} with token {}", term.number, term.token);
    ///             if term.number == 2 {
    ///                 stop.cancel(); // enough for this example
    ///             }
    ///             Ok(())
    ///         }
    ///     })
    ///     .await?;
    /// assert_eq!(terms, 2);
    /// # Ok::<_, coord_core::Error>(()) }).unwrap();
    /// ```
    pub async fn lead<F, Fut>(
        &self,
        value: impl Into<String>,
        cancel: CancellationToken,
        retry_delay: Duration,
        mut lead: F,
    ) -> Result<u64>
    where
        F: FnMut(LeaderTerm) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let value = value.into();
        let mut terms = 0;
        loop {
            let campaign = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(terms),
                c = self.campaign(value.clone()) => c,
            };
            let leadership = match campaign {
                Ok(l) => l,
                // Trying again cannot help: bad input, or a client shut down.
                Err(e @ (Error::InvalidArgument(_) | Error::Unsupported(_) | Error::Closed(_))) => {
                    return Err(e);
                }
                Err(e) => {
                    tracing::warn!(election = %self.lock_name(), error = %e, "campaign failed; trying again");
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(terms),
                        _ = tokio::time::sleep(retry_delay) => continue,
                    }
                }
            };
            terms += 1;
            let term = LeaderTerm {
                token: leadership.fencing_token(),
                number: terms,
                ended: cancel.child_token(),
            };
            let ended = term.ended.clone();
            let end = tokio::select! {
                biased;
                _ = cancel.cancelled() => TermEnd::Cancelled,
                e = leadership.lost() => TermEnd::Lost(e),
                r = lead(term) => TermEnd::Returned(r),
            };
            ended.cancel();
            match &end {
                TermEnd::Lost(e) => {
                    tracing::warn!(election = %self.lock_name(), error = %e, "leadership lost; campaigning again");
                }
                TermEnd::Returned(Err(e)) => {
                    tracing::warn!(election = %self.lock_name(), error = %e, "the leader's work failed; resigning and campaigning again");
                }
                TermEnd::Returned(Ok(())) | TermEnd::Cancelled => {}
            }
            if !matches!(end, TermEnd::Lost(_))
                && let Err(e) = leadership.resign().await
            {
                tracing::debug!(election = %self.lock_name(), error = %e, "resigning failed; the term ends with its lease");
            }
            if matches!(end, TermEnd::Cancelled) {
                return Ok(terms);
            }
            // Let the other candidates have their turn before campaigning again.
            tokio::select! {
                _ = cancel.cancelled() => return Ok(terms),
                _ = tokio::time::sleep(retry_delay) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use crate::error::Error;
    use crate::lock::LockClient;
    use crate::memory::MemoryBackend;

    /// A selector whose client was shut down stops with `Closed` instead of
    /// campaigning again forever.
    #[tokio::test]
    async fn lead_stops_once_its_client_is_shut_down() {
        let client = LockClient::new(Arc::new(MemoryBackend::new()));
        let election = client.election("selector-shut").build();
        client.shutdown().await.expect("shutdown");
        let led = tokio::time::timeout(
            Duration::from_secs(5),
            election.lead(
                "node",
                CancellationToken::new(),
                Duration::from_millis(10),
                |_| async { Ok(()) },
            ),
        )
        .await
        .expect("lead() returns, not campaigns forever");
        assert!(matches!(led, Err(Error::Closed(_))), "{led:?}");
    }
}
