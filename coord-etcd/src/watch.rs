//! Opening a watch and waiting for etcd to confirm it, shared by the lock,
//! queue and cache watches.

use etcd_client::{Client, WatchOptions, WatchStream};

/// Opens a watch of `key` and waits until etcd confirms it: etcd-client
/// returns before that, and a change right after the call returned would
/// otherwise be missed. `Ok(Err(reason))` when etcd cancelled it at once (a
/// compacted start revision).
pub(crate) async fn open_watch(
    client: &Client,
    key: impl Into<Vec<u8>>,
    options: WatchOptions,
) -> Result<Result<WatchStream, String>, etcd_client::Error> {
    let mut watch = client.watch_client();
    let mut stream = watch.watch(key, Some(options)).await?;
    loop {
        match stream.message().await? {
            Some(resp) if resp.canceled() => {
                return Ok(Err(format!(
                    "{} (compact revision {})",
                    resp.cancel_reason(),
                    resp.compact_revision()
                )));
            }
            Some(resp) if resp.created() => return Ok(Ok(stream)),
            Some(_) => {}
            None => {
                return Err(etcd_client::Error::WatchError(
                    "the watch stream closed before etcd created the watch".into(),
                ));
            }
        }
    }
}

/// [`open_watch`], with a cancellation as an error.
pub(crate) async fn open_confirmed(
    client: &Client,
    key: impl Into<Vec<u8>>,
    options: WatchOptions,
) -> Result<WatchStream, etcd_client::Error> {
    open_watch(client, key, options).await?.map_err(|reason| {
        etcd_client::Error::WatchError(format!("etcd cancelled the watch: {reason}"))
    })
}
