//! `vizora-gateway seed`: organisations and devices for load tests (`loadtest/`), idempotent.
//!
//! Organisations are `{prefix}-org-{k}` and devices `{prefix}-dev-{i}`, device `i` belonging to
//! organisation `i % orgs`, so a k6 script can derive every id and token from two numbers.

use sea_orm::ConnectionTrait;

use crate::db::Db;

/// Rows per INSERT: large enough to seed 100k devices in seconds, small enough for SQLite's
/// bound-variable-free statement size.
const CHUNK: usize = 1000;

pub fn org_id(prefix: &str, k: usize) -> String {
    format!("{prefix}-org-{k}")
}

pub fn device_id(prefix: &str, i: usize) -> String {
    format!("{prefix}-dev-{i}")
}

/// Ids are built from a prefix the operator passes on the command line: keep it to characters
/// that need no quoting in SQL or URLs.
pub fn valid_prefix(p: &str) -> bool {
    !p.is_empty() && p.len() <= 32 && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

pub async fn run(db: &Db, prefix: &str, orgs: usize, devices: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        valid_prefix(prefix),
        "--prefix: 1-32 characters of [A-Za-z0-9-]"
    );
    anyhow::ensure!(orgs > 0, "--orgs: at least 1");
    let conn = db.connection();
    for chunk in (0..orgs).collect::<Vec<_>>().chunks(CHUNK) {
        let rows: Vec<String> = chunk
            .iter()
            .map(|&k| {
                let id = org_id(prefix, k);
                format!("('{id}','Load test {id}',CURRENT_TIMESTAMP)")
            })
            .collect();
        conn.execute_unprepared(&format!(
            r#"INSERT INTO organizations ("id","name","updatedAt") VALUES {} ON CONFLICT DO NOTHING"#,
            rows.join(",")
        ))
        .await?;
    }
    for chunk in (0..devices).collect::<Vec<_>>().chunks(CHUNK) {
        let rows: Vec<String> = chunk
            .iter()
            .map(|&i| {
                let id = device_id(prefix, i);
                let org = org_id(prefix, i % orgs);
                format!("('{id}','{org}','{id}','Load screen {i}',CURRENT_TIMESTAMP)")
            })
            .collect();
        conn.execute_unprepared(&format!(
            r#"INSERT INTO devices ("id","organizationId","deviceIdentifier","nickname","updatedAt") VALUES {} ON CONFLICT DO NOTHING"#,
            rows.join(",")
        ))
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_sql_and_url_safe() {
        assert!(valid_prefix("load"));
        assert!(valid_prefix("k6-run-2"));
        assert!(!valid_prefix(""));
        assert!(!valid_prefix("a'b"));
        assert!(!valid_prefix("a b"));
        assert!(!valid_prefix(&"x".repeat(33)));
    }

    #[test]
    fn devices_spread_over_organisations() {
        assert_eq!(device_id("load", 7), "load-dev-7");
        assert_eq!(org_id("load", 7 % 3), "load-org-1");
    }
}
