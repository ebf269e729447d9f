//! The few tests that disturb what every test in the process shares (they stop RabbitMQ,
//! restart PostgreSQL, or read process-wide counters) run alone: `alone()` waits until no
//! other test holds a TestApp or Env, and holds new ones off until it is dropped. Every
//! other test takes `shared()` without asking (`spawn_app`, `Env::new`).
//!
//! The lock is fair (a waiting `alone` holds off new `shared`), so a test must not wait on
//! it twice: the guards count per test thread (a `#[tokio::test]` body runs on the test's
//! own thread, whatever the runtime flavour), and a test's second `shared()` or a
//! `shared()` inside `alone()` takes nothing.

use std::cell::Cell;

use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

static EXCLUSIVE: RwLock<()> = RwLock::const_new(());

thread_local! {
    /// Guards this test thread holds (shared, or alone).
    static HELD: Cell<u32> = const { Cell::new(0) };
}

pub enum Shared {
    Held(#[allow(dead_code)] RwLockReadGuard<'static, ()>),
    /// The test already holds the lock (shared or alone).
    Inherited,
}

pub struct Alone(#[allow(dead_code)] RwLockWriteGuard<'static, ()>);

/// Holds off `alone()` tests while the returned guard lives.
pub async fn shared() -> Shared {
    if HELD.get() > 0 {
        return Shared::Inherited;
    }
    let guard = EXCLUSIVE.read().await;
    HELD.set(HELD.get() + 1);
    Shared::Held(guard)
}

/// Waits until no other test runs, and keeps new ones waiting until dropped. Take it first
/// (before any TestApp or Env, and after a module's own serializing mutex).
pub async fn alone() -> Alone {
    assert_eq!(HELD.get(), 0, "alone() is taken before any TestApp or Env");
    let guard = EXCLUSIVE.write().await;
    HELD.set(HELD.get() + 1);
    Alone(guard)
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Shared::Held(_) = self {
            HELD.set(HELD.get() - 1);
        }
    }
}

impl Drop for Alone {
    fn drop(&mut self) {
        HELD.set(HELD.get() - 1);
    }
}
