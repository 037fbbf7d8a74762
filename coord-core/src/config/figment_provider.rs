//! A `figment::Provider` over one config namespace, so remote configuration
//! layers with files and environment variables.

use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider};

use super::center::ConfigCenter;
use super::key::validate_namespace;
use crate::error::Result;

/// The latest values of one namespace as a figment layer: key `db/url`
/// becomes the nested `db.url`; a value that parses as JSON keeps its type
/// (numbers, booleans, objects), anything else is a string; templates are
/// resolved and secrets decrypted. A snapshot taken by
/// [`load`](Self::load) (figment providers are synchronous).
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::sync::Arc;
/// use coord_core::config::{ConfigCenter, ConfigProvider};
/// use coord_core::memory::MemoryBackend;
/// use figment::{Figment, providers::Serialized};
///
/// #[derive(serde::Deserialize, serde::Serialize)]
/// struct App { port: u16, db: Db }
/// #[derive(serde::Deserialize, serde::Serialize)]
/// struct Db { url: String }
///
/// let center = ConfigCenter::new(Arc::new(MemoryBackend::new()));
/// center.put("api/prod/db/url", "postgres://db/api").await?;
/// let remote = ConfigProvider::load(&center, "api/prod").await?;
/// let app: App = Figment::from(Serialized::defaults(App { port: 8080, db: Db { url: "sqlite://".into() } }))
///     .merge(remote)
///     .extract()
///     .unwrap();
/// assert_eq!((app.port, app.db.url.as_str()), (8080, "postgres://db/api"));
/// # Ok::<_, coord_core::Error>(()) }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct ConfigProvider {
    namespace: String,
    data: Dict,
}

impl ConfigProvider {
    /// Reads the latest values of `namespace` (`app/env`).
    pub async fn load(center: &ConfigCenter, namespace: &str) -> Result<ConfigProvider> {
        validate_namespace(namespace)?;
        let mut data = Dict::new();
        for value in center.list(namespace).await? {
            let text = value.as_str()?;
            let text = center.resolve(text).await?;
            let name = &value.key[namespace.len() + 1..];
            insert(&mut data, name, parse_value(&text));
        }
        Ok(ConfigProvider {
            namespace: namespace.to_owned(),
            data,
        })
    }
}

fn parse_value(text: &str) -> Value {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|json| Value::serialize(json).ok())
        .unwrap_or_else(|| Value::from(text.to_owned()))
}

/// Inserts `value` at the `/`-separated path `name`.
fn insert(dict: &mut Dict, name: &str, value: Value) {
    match name.split_once('/') {
        None => {
            dict.insert(name.to_owned(), value);
        }
        Some((head, rest)) => {
            let entry = dict
                .entry(head.to_owned())
                .or_insert_with(|| Value::from(Dict::new()));
            if entry.as_dict().is_none() {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert(inner, rest, value);
            }
        }
    }
}

impl Provider for ConfigProvider {
    fn metadata(&self) -> Metadata {
        Metadata::named(format!("coord config center {}", self.namespace))
    }

    fn data(&self) -> std::result::Result<Map<Profile, Dict>, figment::Error> {
        Ok(Map::from([(Profile::Default, self.data.clone())]))
    }
}
