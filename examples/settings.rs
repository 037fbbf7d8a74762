//! Settings from `coord.toml`, then `COORD_*` variables, then code: prints
//! the settings in force, and shows how a mistyped key is refused.
//!
//! ```text
//! cargo run --example settings
//! COORD_LOCK__TTL=10s cargo run --example settings      # a double underscore per level
//! ```
//!
//! A `coord.toml` in the working directory, for example:
//!
//! ```toml
//! url = "redis://127.0.0.1:6379"
//! namespace = "billing"
//! connect_timeout = "2s"
//!
//! [lock]
//! ttl = "15s"
//! wait_timeout = "30s"
//! ```

use std::time::Duration;

use coord::{Coord, Settings};
use figment::providers::{Format, Toml};

#[tokio::main]
async fn main() -> coord::Result<()> {
    let settings = Settings::load()?;
    println!("settings in force (defaults, coord.toml, COORD_*):");
    println!("  url             = {}", settings.url);
    println!("  namespace       = {}", settings.namespace);
    println!("  connect_timeout = {:?}", settings.connect_timeout);
    println!("  request_timeout = {:?}", settings.request_timeout);
    println!("  lock.ttl        = {:?}", settings.lock.ttl);
    println!("  lock.wait_timeout = {:?}", settings.lock.wait_timeout);

    // Code overrides the rest.
    let mut tuned = settings.clone();
    tuned.lock.ttl = Duration::from_secs(5);
    let coord = Coord::builder().settings(tuned).connect().await?;
    let guard = coord.lock("examples/settings").build().acquire().await?;
    println!("a lock with the code's TTL: {:?}", guard.ttl());
    guard.release().await?;

    // Unknown keys are refused, naming the closest valid one.
    let typo = Settings::figment().merge(Toml::string("conect_timeout = \"2s\""));
    match Settings::from_figment(typo) {
        Err(e) => println!("a mistyped key is refused: {e}"),
        Ok(_) => panic!("a mistyped key must be refused"),
    }
    coord.shutdown(Duration::from_secs(5)).await
}
