//! The harness itself: what every other test relies on.

use crate::common;

use common::database::TestDatabase;
use sqlx::{Connection, PgConnection};

async fn database_exists(name: &str) -> bool {
    let mut admin = PgConnection::connect(&format!("{}/postgres", common::database::server_url()))
        .await
        .unwrap();
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&mut admin)
        .await
        .unwrap()
}

/// A test's database is migrated (cloned from the template) and dropped when the test
/// panics, not only when it reaches `stop()`.
#[tokio::test]
async fn a_test_database_is_migrated_and_dropped_even_when_the_test_panics() {
    let (tx, rx) = std::sync::mpsc::channel();
    let panicked = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let db = TestDatabase::new().await;
                let mut conn = PgConnection::connect(&db.url()).await.unwrap();
                let migrated: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
                tx.send((db.name.clone(), migrated)).unwrap();
                panic!("a failing test");
            })
    })
    .join();
    assert!(panicked.is_err());
    let (name, migrated) = rx.recv().unwrap();
    assert_eq!(migrated, pimage::store::MIGRATOR.iter().count() as i64);
    assert!(!database_exists(&name).await, "{name} was dropped");
}
