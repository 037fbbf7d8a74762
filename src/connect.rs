//! Picks the backend from a URL's scheme.

use std::sync::Arc;

use coord_core::url::redact;
use coord_core::{CacheBackend, Error, FencedStore, LockBackend, Result, Settings};

/// The schemes `Coord::connect` understands, for error messages.
const SCHEMES: &str = "memory://, redis://, rediss://, redis+cluster://, redis+sentinel://, \
                       etcd://, etcds://";

/// The error for a scheme whose cargo feature is off.
#[cfg_attr(
    all(feature = "memory", feature = "redis", feature = "etcd"),
    allow(dead_code, reason = "every backend is compiled in")
)]
pub(crate) fn feature_missing(scheme: &str, feature: &str) -> Error {
    Error::Unsupported(format!(
        "`{scheme}://` URLs need the `{feature}` feature of coord; \
         enable it in Cargo.toml: coord = {{ version = \"0.1\", features = [\"{feature}\"] }}"
    ))
}

/// Splits `scheme://rest`, with errors that say what is wrong.
pub(crate) fn split_scheme(url: &str) -> Result<(String, &str)> {
    let url = url.trim();
    if url.is_empty() {
        return Err(Error::invalid(format!(
            "the backend URL is empty; use one of {SCHEMES}"
        )));
    }
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        Error::invalid(format!(
            "backend URL {:?} has no scheme; use one of {SCHEMES} (e.g. redis://127.0.0.1:6379)",
            redact(url)
        ))
    })?;
    Ok((scheme.to_ascii_lowercase(), rest))
}

/// One backend, as each primitive uses it.
pub(crate) struct Connected {
    pub(crate) locks: Arc<dyn LockBackend>,
    pub(crate) fenced: Arc<dyn FencedStore>,
    pub(crate) cache: Arc<dyn CacheBackend>,
    pub(crate) registry: Arc<dyn coord_core::discovery::RegistryBackend>,
    pub(crate) config: Arc<dyn coord_core::config::ConfigBackend>,
}

/// Connects the backend named by `url`.
pub(crate) async fn backend(url: &str, settings: &Settings) -> Result<Connected> {
    let (scheme, rest) = split_scheme(url)?;
    let _ = (rest, settings);
    match scheme.as_str() {
        "memory" => {
            #[cfg(feature = "memory")]
            {
                let name = rest.trim_end_matches('/');
                if name.contains(['/', '?', '@', ':']) {
                    return Err(Error::invalid(format!(
                        "memory URL {:?}: give a plain store name (memory://name) or none",
                        redact(url)
                    )));
                }
                let backend = coord_core::memory::MemoryBackend::named(name);
                Ok(Connected {
                    fenced: backend.fenced_store(),
                    cache: Arc::new(backend.clone()),
                    registry: Arc::new(backend.clone()),
                    config: Arc::new(backend.clone()),
                    locks: Arc::new(backend),
                })
            }
            #[cfg(not(feature = "memory"))]
            Err(feature_missing("memory", "memory"))
        }
        "redis" | "rediss" | "redis+cluster" | "rediss+cluster" | "redis+sentinel"
        | "rediss+sentinel" => {
            #[cfg(feature = "redis")]
            {
                let backend = coord_redis::RedisBackend::connect(url, settings).await?;
                Ok(Connected {
                    fenced: Arc::new(coord_redis::RedisFencedStore::new(&backend)),
                    cache: Arc::new(backend.clone()),
                    registry: Arc::new(backend.clone()),
                    config: Arc::new(backend.clone()),
                    locks: Arc::new(backend),
                })
            }
            #[cfg(not(feature = "redis"))]
            Err(feature_missing(&scheme, "redis"))
        }
        "etcd" | "etcds" => {
            #[cfg(feature = "etcd")]
            {
                let backend = coord_etcd::EtcdBackend::connect(url, settings).await?;
                Ok(Connected {
                    fenced: Arc::new(coord_etcd::EtcdFencedStore::new(&backend)),
                    cache: Arc::new(backend.clone()),
                    registry: Arc::new(backend.clone()),
                    config: Arc::new(backend.clone()),
                    locks: Arc::new(backend),
                })
            }
            #[cfg(not(feature = "etcd"))]
            Err(feature_missing(&scheme, "etcd"))
        }
        other => Err(Error::invalid(format!(
            "unknown backend scheme `{other}://` in {:?}; use one of {SCHEMES}",
            redact(url)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_feature_names_it() {
        let e = feature_missing("redis", "redis");
        assert!(matches!(e, Error::Unsupported(_)));
        assert!(e.to_string().contains("features = [\"redis\"]"), "{e}");
    }

    #[test]
    fn scheme_is_required() {
        for bad in ["", "   ", "localhost:6379", "redis:/x"] {
            assert!(
                matches!(split_scheme(bad), Err(Error::InvalidArgument(_))),
                "{bad:?}"
            );
        }
        assert_eq!(split_scheme("ReDiS://h").unwrap().0, "redis");
    }

    #[tokio::test]
    async fn sentinel_urls_go_to_the_redis_backend() {
        assert!(SCHEMES.contains("redis+sentinel://"));
        let settings = Settings::default();
        for url in ["redis+sentinel://h1,h2", "REDIS+SENTINEL://h1:26379/"] {
            let Err(err) = backend(url, &settings).await else {
                panic!("{url}: connected without a master name");
            };
            #[cfg(feature = "redis")]
            assert!(
                matches!(&err, Error::InvalidArgument(m) if m.contains("no master name")),
                "{url}: {err}"
            );
            #[cfg(not(feature = "redis"))]
            assert!(
                matches!(&err, Error::Unsupported(m) if m.contains("features = [\"redis\"]")),
                "{url}: {err}"
            );
        }
    }

    #[test]
    fn errors_do_not_leak_passwords() {
        let e = split_scheme("u:hunter2@localhost:6379").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
}
