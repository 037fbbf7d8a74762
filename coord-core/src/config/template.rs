//! Templates: `${app/env/key}` (another key's latest value, itself
//! resolved) and `${env:VAR}` (an environment variable), resolved on read.
//! `$${` writes a literal `${`.

use futures::future::BoxFuture;

use super::center::ConfigCenter;
use super::key::ConfigKey;
use super::value::ConfigValue;
use crate::error::{Error, Result};

/// How deep references may nest.
const MAX_DEPTH: usize = 16;

/// One piece of a template.
#[derive(Debug, PartialEq, Eq)]
enum Piece<'a> {
    Text(&'a str),
    Key(&'a str),
    Env(&'a str),
}

/// Splits `text` into literal text and references; a malformed template
/// (`${` without `}`, an empty reference) is an error saying where.
fn parse<'a>(text: &'a str, what: &str) -> Result<Vec<Piece<'a>>> {
    let mut pieces = Vec::new();
    let mut rest = text;
    let mut offset = 0;
    while let Some(at) = rest.find('$') {
        let after = &rest[at + 1..];
        if after.starts_with("${") {
            // `$${` is a literal `${`.
            pieces.push(Piece::Text(&rest[..at + 1]));
            rest = &rest[at + 2..];
            offset += at + 2;
            pieces.push(Piece::Text("{"));
            rest = &rest[1..];
            offset += 1;
            continue;
        }
        if !after.starts_with('{') {
            pieces.push(Piece::Text(&rest[..at + 1]));
            rest = after;
            offset += at + 1;
            continue;
        }
        pieces.push(Piece::Text(&rest[..at]));
        let body = &after[1..];
        let end = body.find('}').ok_or_else(|| {
            Error::invalid(format!(
                "{what}: template reference at byte {} has no closing '}}'",
                offset + at
            ))
        })?;
        let reference = body[..end].trim();
        if reference.is_empty() {
            return Err(Error::invalid(format!(
                "{what}: empty template reference at byte {}",
                offset + at
            )));
        }
        pieces.push(match reference.strip_prefix("env:") {
            Some(var) => Piece::Env(var),
            None => Piece::Key(reference),
        });
        let consumed = at + 2 + end + 1;
        rest = &rest[consumed..];
        offset += consumed;
    }
    pieces.push(Piece::Text(rest));
    Ok(pieces)
}

impl ConfigCenter {
    /// The latest value of `key` with its templates resolved (see
    /// [`resolve`](Self::resolve)); `None` if the key is absent or deleted.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use std::sync::Arc;
    /// use coord_core::config::ConfigCenter;
    /// use coord_core::memory::MemoryBackend;
    ///
    /// let center = ConfigCenter::new(Arc::new(MemoryBackend::new()));
    /// center.put("shared/prod/db-host", "db.internal").await?;
    /// center.put("billing/prod/db-url", "postgres://${shared/prod/db-host}:5432/billing").await?;
    /// let url = center.get_resolved("billing/prod/db-url").await?.unwrap();
    /// assert_eq!(url.as_str()?, "postgres://db.internal:5432/billing");
    /// # Ok::<_, coord_core::Error>(()) }).unwrap();
    /// ```
    pub async fn get_resolved(&self, key: &str) -> Result<Option<ConfigValue>> {
        let Some(mut value) = self.get(key).await? else {
            return Ok(None);
        };
        let text = value.as_str()?.to_owned();
        let resolved = self.resolve_chain(text, vec![key.to_owned()]).await?;
        value.value = bytes::Bytes::from(resolved);
        Ok(Some(value))
    }

    /// Resolves the templates of `text`: `${app/env/key}` becomes that key's
    /// latest value (its own templates resolved), `${env:VAR}` the
    /// variable. A missing key or variable is [`Error::NotFound`] and a
    /// cycle [`Error::InvalidArgument`], each naming the chain of
    /// references (`a → b → a`).
    pub async fn resolve(&self, text: &str) -> Result<String> {
        self.resolve_chain(text.to_owned(), Vec::new()).await
    }

    fn resolve_chain(&self, text: String, chain: Vec<String>) -> BoxFuture<'_, Result<String>> {
        Box::pin(async move {
            let what = chain.last().map_or("template", String::as_str).to_owned();
            let pieces = parse(&text, &what)?;
            let mut out = String::with_capacity(text.len());
            for piece in pieces {
                match piece {
                    Piece::Text(t) => out.push_str(t),
                    Piece::Env(var) => match std::env::var(var) {
                        Ok(v) => out.push_str(&v),
                        Err(_) => {
                            return Err(Error::NotFound(format!(
                                "environment variable {var} (referenced by {})",
                                show_chain(&chain)
                            )));
                        }
                    },
                    Piece::Key(reference) => {
                        let key = ConfigKey::parse(reference).map_err(|e| {
                            Error::invalid(format!(
                                "bad template reference ${{{reference}}} in {}: {e}",
                                show_chain(&chain)
                            ))
                        })?;
                        let mut next = chain.clone();
                        next.push(key.as_str().to_owned());
                        if chain.iter().any(|k| k == key.as_str()) {
                            return Err(Error::invalid(format!(
                                "template cycle: {}",
                                show_chain(&next)
                            )));
                        }
                        if next.len() > MAX_DEPTH {
                            return Err(Error::invalid(format!(
                                "templates nest deeper than {MAX_DEPTH}: {}",
                                show_chain(&next)
                            )));
                        }
                        let value = self.get_key(&key).await?.ok_or_else(|| {
                            Error::NotFound(format!(
                                "config {} (template chain {})",
                                key,
                                show_chain(&next)
                            ))
                        })?;
                        let inner = value.as_str()?.to_owned();
                        out.push_str(&self.resolve_chain(inner, next).await?);
                    }
                }
            }
            Ok(out)
        })
    }
}

fn show_chain(chain: &[String]) -> String {
    if chain.is_empty() {
        "the template".to_owned()
    } else {
        chain.join(" → ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse() {
        assert_eq!(
            parse("a ${x/y/z} b ${env:HOME} $5 $${lit}", "t").unwrap(),
            [
                Piece::Text("a "),
                Piece::Key("x/y/z"),
                Piece::Text(" b "),
                Piece::Env("HOME"),
                Piece::Text(" $"),
                Piece::Text("5 $"),
                Piece::Text("{"),
                Piece::Text("lit}"),
            ]
        );
        assert!(parse("a ${x", "t").is_err());
        assert!(parse("a ${ }", "t").is_err());
    }
}
