//! `schema.sql` (top level) is the current schema, checked in so that a reader sees every
//! table, index, function and trigger in one file: this test keeps it equal to what the
//! migrations produce. After adding a migration, rewrite it with
//! `PIMAGE_WRITE_SCHEMA=1 cargo test --test suite schema::` and commit it.

use std::process::Command;

use crate::common::database::TestDatabase;

const SCHEMA_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/schema.sql");

/// `pg_dump --schema-only` of a fresh database migrated by `store::MIGRATOR`, normalised: the
/// harness's template clone, which the migrations made (and nothing else).
async fn migrated_schema() -> String {
    let database = TestDatabase::new().await;
    let url = database.url();
    let dump = Command::new("pg_dump")
        .args([
            "--schema-only",
            "--no-owner",
            "--no-privileges",
            "--exclude-table=_sqlx_migrations",
            &url,
        ])
        .output()
        .expect("pg_dump runs (Debian: postgresql-client)");
    drop(database);
    assert!(
        dump.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&dump.stderr)
    );
    normalise(&String::from_utf8(dump.stdout).unwrap())
}

/// Without what varies with the pg_dump version or run and says nothing of the schema:
/// comments, session settings, `\restrict` keys, runs of blank lines.
fn normalise(dump: &str) -> String {
    let mut out = String::from(
        "-- The current schema, as the migrations produce it (pg_dump --schema-only, normalised).\n\
         -- Do not edit: add a migration, then PIMAGE_WRITE_SCHEMA=1 cargo test --test suite schema::\n",
    );
    let mut blank = true;
    for line in dump.lines() {
        let line = line.trim_end();
        let noise = line.starts_with("--")
            || line.starts_with("SET ")
            || line.starts_with("SELECT pg_catalog.set_config")
            || line.starts_with("\\restrict")
            || line.starts_with("\\unrestrict");
        if noise || (line.is_empty() && blank) {
            continue;
        }
        blank = line.is_empty();
        out.push_str(line);
        out.push('\n');
    }
    out.trim_end().to_string() + "\n"
}

/// Where `want` (the file) and `got` (the migrations) differ, diff-style: the lines between
/// their common start and common end (at most 20 of each), with 3 lines of context.
fn first_difference(want: &str, got: &str) -> String {
    let (want, got): (Vec<&str>, Vec<&str>) = (want.lines().collect(), got.lines().collect());
    let start = want.iter().zip(&got).take_while(|(a, b)| a == b).count();
    let end = want[start..]
        .iter()
        .rev()
        .zip(got[start..].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let mut diff = format!("@@ schema.sql line {} @@\n", start + 1);
    for line in &want[start.saturating_sub(3)..start] {
        diff.push_str(&format!("  {line}\n"));
    }
    for line in want[start..want.len() - end].iter().take(20) {
        diff.push_str(&format!("- {line}\n"));
    }
    for line in got[start..got.len() - end].iter().take(20) {
        diff.push_str(&format!("+ {line}\n"));
    }
    for line in want[want.len() - end..].iter().take(3) {
        diff.push_str(&format!("  {line}\n"));
    }
    diff
}

#[tokio::test]
async fn schema_sql_is_what_the_migrations_produce() {
    let got = migrated_schema().await;
    if std::env::var_os("PIMAGE_WRITE_SCHEMA").is_some() {
        std::fs::write(SCHEMA_FILE, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(SCHEMA_FILE).unwrap_or_default();
    assert!(
        want == got,
        "schema.sql is not what the migrations produce (- schema.sql, + migrations):\n{}\n\
         Rewrite it with: PIMAGE_WRITE_SCHEMA=1 cargo test --test suite schema::",
        first_difference(&want, &got)
    );
}

#[test]
fn the_difference_shows_only_the_lines_that_differ() {
    let diff = first_difference("a\nb\nc\nd\n", "a\nB\nc\nd\n");
    assert_eq!(diff, "@@ schema.sql line 2 @@\n  a\n- b\n+ B\n  c\n  d\n");
}

#[test]
fn normalising_drops_comments_settings_and_restrict_keys() {
    let dump = "--\n-- PostgreSQL database dump\n--\n\\restrict abc\nSET x = 1;\n\
                SELECT pg_catalog.set_config('search_path', '', false);\n\n\n\
                CREATE TABLE t (\n    id bigint\n);\n\n\n\\unrestrict abc\n";
    assert!(normalise(dump).ends_with("\nCREATE TABLE t (\n    id bigint\n);\n"));
    assert!(!normalise(dump).contains("restrict"));
}
