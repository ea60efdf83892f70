//! Reading rows on the raw handle of a connection sqlx opened.
//!
//! A query runs on a blocking thread (`spawn_blocking`) that owns a pooled connection for its
//! duration. There it locks sqlx's handle and steps the statement with rusqlite, reading each
//! value in place. The async runtime never runs the loop, and the connection goes back to
//! the pool when the closure returns.
#![allow(unsafe_code)]

use rusqlite::types::Value as Bind;
use sqlx::SqlitePool;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::Sqlite;

/// Why a raw read stopped.
#[derive(Debug)]
pub enum RawError<E> {
    /// SQLite or sqlx failed.
    Sql(String),
    /// The row callback stopped the read.
    Row(E),
}

/// Runs `sql` with `binds` on a blocking thread, calling `on_row(&mut state, row)` for every
/// row, and returns the state.
pub async fn for_each_row<S, E, F>(
    pool: &SqlitePool,
    sql: String,
    binds: Vec<Bind>,
    mut state: S,
    on_row: F,
) -> Result<S, RawError<E>>
where
    S: Send + 'static,
    E: Send + 'static,
    F: Fn(&mut S, &rusqlite::Row<'_>) -> Result<(), E> + Send + 'static,
{
    let conn = pool.acquire().await.map_err(|e| RawError::Sql(e.to_string()))?;
    let runtime = tokio::runtime::Handle::current();
    let task = tokio::task::spawn_blocking(move || {
        step_all(&runtime, conn, &sql, binds, &mut |row| on_row(&mut state, row)).map(|()| state)
    });
    task.await
        .map_err(|e| RawError::Sql(format!("read task failed: {e}")))?
}

fn step_all<E>(
    runtime: &tokio::runtime::Handle,
    conn: PoolConnection<Sqlite>,
    sql: &str,
    binds: Vec<Bind>,
    on_row: &mut impl FnMut(&rusqlite::Row<'_>) -> Result<(), E>,
) -> Result<(), RawError<E>> {
    on_raw(runtime, conn, |db| {
        let mut statement = db.prepare(sql).map_err(sql_err)?;
        let mut rows = statement.query(rusqlite::params_from_iter(binds)).map_err(sql_err)?;
        while let Some(row) = rows.next().map_err(sql_err)? {
            on_row(row).map_err(RawError::Row)?;
        }
        Ok(())
    })
}

/// A rusqlite error as a raw error.
pub fn sql_err<E>(e: rusqlite::Error) -> RawError<E> {
    RawError::Sql(e.to_string())
}

/// Runs `f` on a blocking thread with a rusqlite connection over the raw handle of a pooled
/// sqlx connection: for work that needs several statements on one connection, such as a
/// transaction of conditional writes.
pub async fn with_connection<T, E, F>(pool: &SqlitePool, f: F) -> Result<T, RawError<E>>
where
    T: Send + 'static,
    E: Send + 'static,
    F: FnOnce(&rusqlite::Connection) -> Result<T, RawError<E>> + Send + 'static,
{
    let conn = pool.acquire().await.map_err(|e| RawError::Sql(e.to_string()))?;
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || on_raw(&runtime, conn, f))
        .await
        .map_err(|e| RawError::Sql(format!("task failed: {e}")))?
}

fn on_raw<T, E>(
    runtime: &tokio::runtime::Handle,
    mut conn: PoolConnection<Sqlite>,
    f: impl FnOnce(&rusqlite::Connection) -> Result<T, RawError<E>>,
) -> Result<T, RawError<E>> {
    let mut locked = runtime
        .block_on(conn.lock_handle())
        .map_err(|e| RawError::Sql(e.to_string()))?;
    let handle = locked.as_raw_handle();
    // SAFETY: `locked` holds sqlx's lock on this connection until the end of this function,
    // so nothing else uses the handle meanwhile, and the handle outlives `db`, which is
    // dropped first (declared later). A connection made with `from_handle` does not close
    // the handle when dropped; sqlx keeps owning it. rusqlite links the same libsqlite3-sys
    // as sqlx (pinned in the workspace), so the handle's type is the same C type.
    let db = unsafe { rusqlite::Connection::from_handle(handle.as_ptr()) }.map_err(sql_err)?;
    f(&db)
}
