//! What a server has run, from `INFO commandstats`: how tests check that a
//! path costs the commands it should.

/// How many times the server has run `command` (a script's own calls
/// included) since its start or the last `CONFIG RESETSTAT`. Panics (failing
/// the test) when the server does not answer.
pub async fn command_calls(conn: &mut redis::aio::MultiplexedConnection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO commandstats");
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map_or(0, |rest| {
            rest.split(',')
                .next()
                .and_then(|n| n.parse().ok())
                .expect("a call count")
        })
}
