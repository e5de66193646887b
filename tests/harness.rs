//! The test harness's own guarantees: a test database is dropped even when the test
//! that made it fails, so a failing test leaks nothing into the next run.

mod common;

use common::*;

fn exists(pg: Pg, name: &str) -> bool {
    psql(
        pg,
        &pg.admin_url(),
        &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'"),
    )
    .trim()
        == "1"
}

#[test]
fn a_test_database_is_dropped_when_its_test_panics() {
    let name = unique("guard");
    let n = name.clone();
    let outcome = std::panic::catch_unwind(move || {
        let _db = TestDb::empty(Pg::V15, &n);
        assert!(exists(Pg::V15, &n), "created");
        panic!("the test fails here");
    });
    assert!(outcome.is_err(), "the closure panicked");
    assert!(!exists(Pg::V15, &name), "{name} was left behind");
}
