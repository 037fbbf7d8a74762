//! Read-write locks: readers together, writers alone, writers not starved.

use std::time::Duration;

use crate::testkit::kinds::{client, until_waiting};
use crate::testkit::{LockHarness, unique_name, within};

/// Three readers hold at once; a writer waits for all of them; a reader
/// waits for the writer.
pub async fn readers_share_writer_excludes(h: &dyn LockHarness) {
    let name = unique_name("rw-share");
    let (a, b) = (client(h).await, client(h).await);
    let read = |c: &crate::lock::LockClient| {
        c.lock(name.clone())
            .read()
            .ttl(Duration::from_secs(30))
            .build()
    };
    let write = b
        .lock(name.clone())
        .write()
        .ttl(Duration::from_secs(30))
        .build();
    let r1 = read(&a).acquire().await.expect("reader 1");
    let r2 = read(&a)
        .try_acquire()
        .await
        .expect("try")
        .expect("reader 2 with reader 1");
    let r3 = read(&b)
        .try_acquire()
        .await
        .expect("try")
        .expect("reader 3 from another client");
    assert!(
        write.try_acquire().await.expect("try").is_none(),
        "readers hold"
    );
    for r in [r1, r2, r3] {
        r.release().await.expect("reader releases");
    }
    let w = write
        .try_acquire()
        .await
        .expect("try")
        .expect("writer once readers left");
    assert!(
        read(&a).try_acquire().await.expect("try").is_none(),
        "writer holds"
    );
    assert!(
        write.try_acquire().await.expect("try").is_none(),
        "one writer"
    );
    w.release().await.expect("writer releases");
    read(&a)
        .try_acquire()
        .await
        .expect("try")
        .expect("readers again")
        .release()
        .await
        .expect("release");
}

/// A reader holds and a writer waits: a reader arriving later queues behind
/// the writer, and the writer is granted first.
pub async fn writer_not_starved_by_readers(h: &dyn LockHarness) {
    let name = unique_name("rw-starve");
    let (a, w) = (client(h).await, client(h).await);
    let read = a
        .lock(name.clone())
        .read()
        .ttl(Duration::from_secs(30))
        .build();
    let r1 = read.acquire().await.expect("first reader");
    let writer = {
        let l = w
            .lock(name.clone())
            .write()
            .ttl(Duration::from_secs(30))
            .wait_timeout(Duration::from_secs(60))
            .build();
        tokio::spawn(async move {
            let g = l.acquire().await.expect("writer");
            (g, tokio::time::Instant::now())
        })
    };
    until_waiting(&w, 1).await;
    assert!(
        read.try_acquire().await.expect("try").is_none(),
        "a new reader must queue behind the waiting writer"
    );
    let late_reader = {
        let l = read.clone();
        tokio::spawn(async move {
            let g = l.acquire().await.expect("late reader");
            (g, tokio::time::Instant::now())
        })
    };
    until_waiting(&a, 1).await;
    r1.release().await.expect("first reader releases");
    let (wg, w_at) = within(Duration::from_secs(20), "the writer is granted", writer)
        .await
        .expect("task");
    assert!(
        !late_reader.is_finished(),
        "the late reader waits for the writer"
    );
    let writer_token = wg.fencing_token();
    wg.release().await.expect("writer releases");
    let (rg, r_at) = within(
        Duration::from_secs(20),
        "the late reader is granted",
        late_reader,
    )
    .await
    .expect("task");
    assert!(w_at < r_at, "writer first");
    assert!(rg.fencing_token() > writer_token);
    rg.release().await.expect("release");
}
