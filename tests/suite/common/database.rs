//! Each test's database, cloned from a migrated template (crates.io's `TestDatabase`) and
//! dropped when its guard is dropped, even when the test panics.
//!
//! One template per migrations version (`pimage_template_<hash of the migrations>`), made
//! once under a PostgreSQL advisory lock: safe across the suite's threads and across
//! processes (other checkouts' runs share the server). Cloning takes the lock shared,
//! making or dropping a template takes it exclusive: a clone never meets a half-made
//! template, and a template is never dropped under a clone.

use sha2::{Digest, Sha256};
use sqlx::{Connection, Executor, PgConnection};
use tokio::sync::OnceCell;
use uuid::Uuid;

/// The advisory lock's key: any constant the product does not use.
const TEMPLATE_LOCK: i64 = 0x7069_6d61_6765_7400; // "pimaget\0"
const TEMPLATE_PREFIX: &str = "pimage_template_";

/// The server, without a database: `PIMAGE_TEST_DATABASE_URL` or this machine's default.
pub fn server_url() -> String {
    std::env::var("PIMAGE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// The template of this build's migrations: their versions and checksums, hashed.
fn template_name() -> String {
    let mut hash = Sha256::new();
    for m in pimage::store::MIGRATOR.iter() {
        hash.update(m.version.to_le_bytes());
        hash.update(&m.checksum);
    }
    format!("{TEMPLATE_PREFIX}{}", &hex::encode(hash.finalize())[..16])
}

async fn admin() -> PgConnection {
    PgConnection::connect(&format!("{}/postgres", server_url()))
        .await
        .expect("Postgres on 127.0.0.1:5432")
}

/// Makes this version's template if it is missing, and drops the other versions' ones.
async fn make_template(name: &str) {
    let mut admin = admin().await;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(TEMPLATE_LOCK)
        .execute(&mut admin)
        .await
        .unwrap();
    let templates: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE $1")
            .bind(format!("{TEMPLATE_PREFIX}%"))
            .fetch_all(&mut admin)
            .await
            .unwrap();
    for old in templates.iter().filter(|t| *t != name) {
        drop_database(&mut admin, old).await;
    }
    if !templates.iter().any(|t| t == name) {
        // Made under another name and renamed: a template that exists is whole.
        let making = format!("{name}_making");
        drop_database(&mut admin, &making).await;
        admin
            .execute(format!(r#"CREATE DATABASE "{making}""#).as_str())
            .await
            .unwrap();
        let mut conn = PgConnection::connect(&format!("{}/{making}", server_url()))
            .await
            .unwrap();
        pimage::store::MIGRATOR.run(&mut conn).await.unwrap();
        conn.close().await.unwrap();
        admin
            .execute(format!(r#"ALTER DATABASE "{making}" RENAME TO "{name}""#).as_str())
            .await
            .unwrap();
    }
    // Closing the session releases the lock.
    admin.close().await.unwrap();
}

async fn drop_database(admin: &mut PgConnection, name: &str) {
    admin
        .execute(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str())
        .await
        .unwrap();
}

/// A fresh, migrated database; dropped with this guard.
pub struct TestDatabase {
    pub name: String,
}

impl TestDatabase {
    pub async fn new() -> TestDatabase {
        static TEMPLATE: OnceCell<String> = OnceCell::const_new();
        let template = TEMPLATE
            .get_or_init(|| async {
                let name = template_name();
                make_template(&name).await;
                name
            })
            .await;
        let name = format!("pimage_test_{}", Uuid::new_v4().simple());
        loop {
            let mut admin = admin().await;
            sqlx::query("SELECT pg_advisory_lock_shared($1)")
                .bind(TEMPLATE_LOCK)
                .execute(&mut admin)
                .await
                .unwrap();
            let made = admin
                .execute(format!(r#"CREATE DATABASE "{name}" TEMPLATE "{template}""#).as_str())
                .await;
            admin.close().await.unwrap();
            match made {
                Ok(_) => return TestDatabase { name },
                // A run of another migrations version dropped ours: make it again.
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("3D000") => {
                    make_template(template).await
                }
                Err(e) => panic!("cloning {template}: {e}"),
            }
        }
    }

    pub fn url(&self) -> String {
        format!("{}/{}", server_url(), self.name)
    }
}

impl Drop for TestDatabase {
    /// `Drop` cannot await: the drop runs on a thread of its own with its own runtime.
    fn drop(&mut self) {
        let name = std::mem::take(&mut self.name);
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async { drop_database(&mut admin().await, &name).await })
        })
        .join();
        // Panicking in a drop while the test already panics would abort the whole run.
        if dropped.is_err() && !std::thread::panicking() {
            panic!("the test database could not be dropped");
        }
    }
}
