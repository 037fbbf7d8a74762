//! Watches: the change notices of a namespace's channel, filtered to a prefix.

use coord_core::Result;
use coord_core::config::{ConfigNotice, ConfigNotices, key_under};
use futures::StreamExt;

use crate::backend::RedisBackend;

impl RedisBackend {
    /// [`config_watch`](coord_core::config::ConfigBackend::config_watch):
    /// subscribes (confirmed on return) to the channel of the prefix's
    /// namespace. Missed messages (a slow reader) and unreadable ones are a
    /// [`ConfigNotice::Gap`]; the stream ends when the pub/sub connection
    /// dies. The config center's watcher fills version gaps from history
    /// and compares after a gap or an end, so no sequence check is needed
    /// here.
    pub(super) async fn watch_notices(&self, prefix: &str) -> Result<ConfigNotices> {
        let keys = self.config_keys_of(prefix)?;
        let channel = keys.channel;
        let messages = self.inner.pubsub.messages(channel.clone()).await?;
        let prefix = prefix.to_owned();
        let notices = messages.filter_map(move |message| {
            let notice = match message {
                None => Some(ConfigNotice::Gap),
                Some(payload) => match parse_notice(&payload) {
                    Some((key, version)) => key_under(&key, &prefix)
                        .then_some(ConfigNotice::Changed { key, version }),
                    None => {
                        tracing::warn!(%channel, "unreadable config change notice; comparing again");
                        Some(ConfigNotice::Gap)
                    }
                },
            };
            std::future::ready(notice)
        });
        Ok(ConfigNotices::new(notices))
    }
}

/// Parses a notice `key\0version` (keys hold no control characters).
fn parse_notice(payload: &[u8]) -> Option<(String, u64)> {
    let at = payload.iter().position(|b| *b == 0)?;
    let key = std::str::from_utf8(&payload[..at]).ok()?;
    let version = std::str::from_utf8(&payload[at + 1..]).ok()?.parse().ok()?;
    Some((key.to_owned(), version))
}

#[cfg(test)]
mod tests {
    use super::parse_notice;

    #[test]
    fn notices_parse() {
        assert_eq!(parse_notice(b"a/b/c\x0012"), Some(("a/b/c".into(), 12)));
        assert_eq!(parse_notice(b"a/b/c"), None);
        assert_eq!(parse_notice(b"a/b/c\0x"), None);
        assert_eq!(parse_notice(b"\xff\x001"), None);
    }
}
