//! `ConfigHandle<T>`: a typed value of one key, hot-reloaded from a watch,
//! checked by a validation hook; reads are a lock-free `arc-swap` load.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::center::ConfigCenter;
use super::key::ConfigKey;
use super::value::ConfigValue;
use crate::error::{Error, Result};

type Validator<T> = Arc<dyn Fn(&T) -> std::result::Result<(), String> + Send + Sync>;

/// What happened to a handle's value, as [`ConfigHandle::events`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandleEvent {
    /// A new version was decoded, validated and is now the current value.
    Reloaded {
        /// Its version.
        version: u64,
    },
    /// A new version was refused (it did not decode, failed validation, or
    /// deleted the key); the last good value is kept.
    Refused {
        /// The refused version.
        version: u64,
        /// Why.
        reason: String,
    },
}

/// Builds a [`ConfigHandle`]: `center.handle::<T>("app/env/key")`.
#[must_use = "call .build().await to get the handle"]
pub struct ConfigHandleBuilder<T> {
    center: ConfigCenter,
    key: String,
    validator: Option<Validator<T>>,
    templates: bool,
    metrics: Option<crate::Metrics>,
    _t: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for ConfigHandleBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigHandleBuilder")
            .field("key", &self.key)
            .field("templates", &self.templates)
            .finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned + Send + Sync + 'static> ConfigHandleBuilder<T> {
    /// Refuse a version for which `check` returns an error (the message is
    /// reported); the last good value is kept. The first value must pass
    /// too, or `build` fails.
    pub fn validate(
        mut self,
        check: impl Fn(&T) -> std::result::Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.validator = Some(Arc::new(check));
        self
    }

    /// Resolve `${…}` templates before decoding (on by default).
    pub fn templates(mut self, on: bool) -> Self {
        self.templates = on;
        self
    }

    /// Count reloads and refusals on `metrics` (`coord_config_reloads_total`).
    pub fn metrics(mut self, metrics: crate::Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Reads, decodes and validates the current value, then follows the key.
    /// Fails if the key has no value or the value is refused.
    pub async fn build(self) -> Result<ConfigHandle<T>> {
        let key = ConfigKey::parse(&self.key)?;
        // Watch first so that nothing written after the first read is missed.
        let mut watch = self.center.watch(key.as_str()).await?;
        let first = self.center.get(key.as_str()).await?.ok_or_else(|| {
            Error::NotFound(format!("config {key} has no value; write one first"))
        })?;
        let loader = Loader {
            center: self.center.clone(),
            validator: self.validator.clone(),
            templates: self.templates,
        };
        let value = loader.load(&first).await.map_err(Error::invalid)?;
        let shared = Arc::new(HandleShared {
            current: ArcSwap::new(Arc::new(value)),
            version: std::sync::atomic::AtomicU64::new(first.version),
            events: broadcast::channel(64).0,
        });
        let stop = CancellationToken::new();
        let (s, st, metrics, name) = (
            shared.clone(),
            stop.clone(),
            self.metrics.clone(),
            key.as_str().to_owned(),
        );
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = st.cancelled() => return,
                    n = watch.next() => n,
                };
                let Some(next) = next else { return };
                let (version, outcome) = match next {
                    Ok(v) if v.version <= s.version.load(std::sync::atomic::Ordering::Acquire) => {
                        continue;
                    }
                    Ok(v) => (v.version, loader.load(&v).await),
                    Err(e) => (0, Err(e.to_string())),
                };
                match outcome {
                    Ok(value) => {
                        s.current.store(Arc::new(value));
                        s.version
                            .store(version, std::sync::atomic::Ordering::Release);
                        if let Some(m) = &metrics {
                            m.config_reload(&name, "reloaded");
                        }
                        let _ = s.events.send(HandleEvent::Reloaded { version });
                    }
                    Err(reason) => {
                        tracing::warn!(key = %name, version, reason = %reason, "config version refused; keeping the last good value");
                        if let Some(m) = &metrics {
                            m.config_reload(&name, "refused");
                        }
                        let _ = s.events.send(HandleEvent::Refused { version, reason });
                    }
                }
            }
        });
        Ok(ConfigHandle {
            shared,
            _stop: Arc::new(StopOnDrop(stop)),
            key: key.as_str().to_owned(),
        })
    }
}

struct Loader<T> {
    center: ConfigCenter,
    validator: Option<Validator<T>>,
    templates: bool,
}

impl<T: DeserializeOwned> Loader<T> {
    /// Decodes and validates one version; the reason when refused.
    async fn load(&self, v: &ConfigValue) -> std::result::Result<T, String> {
        if v.is_deleted() {
            return Err(format!("version {} deletes {}", v.version, v.key));
        }
        let text = v.as_str().map_err(|e| e.to_string())?;
        let text = if self.templates {
            self.center.resolve(text).await.map_err(|e| e.to_string())?
        } else {
            text.to_owned()
        };
        let value: T = match serde_json::from_str(&text) {
            Ok(t) => t,
            // Plain text (not JSON) for string-like types.
            Err(json) => {
                serde_json::from_value(serde_json::Value::String(text.clone())).map_err(|_| {
                    format!("version {} of {} does not decode: {json}", v.version, v.key)
                })?
            }
        };
        if let Some(check) = &self.validator {
            check(&value)
                .map_err(|why| format!("version {} of {} is invalid: {why}", v.version, v.key))?;
        }
        Ok(value)
    }
}

/// A typed, hot-reloaded config value. Reading it is a lock-free load; a
/// background task follows the key and swaps in each new version that
/// decodes and passes validation, keeping the last good value otherwise
/// (and reporting the refusal as an event, a metric and a log line).
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::sync::Arc;
/// use coord_core::config::ConfigCenter;
/// use coord_core::memory::MemoryBackend;
///
/// #[derive(serde::Deserialize)]
/// struct Limits { max_connections: u32 }
///
/// let center = ConfigCenter::new(Arc::new(MemoryBackend::new()));
/// center.put("api/prod/limits", r#"{"max_connections": 100}"#).await?;
/// let limits = center
///     .handle::<Limits>("api/prod/limits")
///     .validate(|l| if l.max_connections > 0 { Ok(()) } else { Err("must be positive".into()) })
///     .build()
///     .await?;
/// assert_eq!(limits.get().max_connections, 100);
/// # Ok::<_, coord_core::Error>(()) }).unwrap();
/// ```
pub struct ConfigHandle<T> {
    shared: Arc<HandleShared<T>>,
    _stop: Arc<StopOnDrop>,
    key: String,
}

impl<T> Clone for ConfigHandle<T> {
    fn clone(&self) -> Self {
        ConfigHandle {
            shared: self.shared.clone(),
            _stop: self._stop.clone(),
            key: self.key.clone(),
        }
    }
}

impl<T> fmt::Debug for ConfigHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigHandle")
            .field("key", &self.key)
            .field("version", &self.version())
            .finish()
    }
}

struct HandleShared<T> {
    current: ArcSwap<T>,
    version: std::sync::atomic::AtomicU64,
    events: broadcast::Sender<HandleEvent>,
}

struct StopOnDrop(CancellationToken);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl<T> ConfigHandle<T> {
    /// The current value (an `Arc` clone; lock-free).
    #[inline]
    pub fn get(&self) -> Arc<T> {
        self.shared.current.load_full()
    }

    /// A guard on the current value, cheaper than [`get`](Self::get) for a
    /// short read (no reference count change).
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<T>> {
        self.shared.current.load()
    }

    /// The version of the current value.
    pub fn version(&self) -> u64 {
        self.shared
            .version
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// The key it follows.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Reloads and refusals from now on.
    pub fn events(&self) -> broadcast::Receiver<HandleEvent> {
        self.shared.events.subscribe()
    }
}

impl ConfigCenter {
    /// A typed, hot-reloaded handle on `key` (JSON values, or plain text for
    /// string-like types); finish with `.build().await`.
    pub fn handle<T: DeserializeOwned + Send + Sync + 'static>(
        &self,
        key: &str,
    ) -> ConfigHandleBuilder<T> {
        ConfigHandleBuilder {
            center: self.clone(),
            key: key.to_owned(),
            validator: None,
            templates: true,
            metrics: None,
            _t: PhantomData,
        }
    }
}
