//! A textual description of a PostgreSQL schema, for proving that a migration changed nothing:
//! run it before and after, compare the lines. Used by the migration and gateway test suites
//! against a database whose Vizora tables were created by plain SQL.

use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};

async fn strings<C: ConnectionTrait>(db: &C, sql: &str) -> Result<Vec<String>, DbErr> {
    db.query_all_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await?
        .iter()
        .map(|r| r.try_get_by_index::<String>(0))
        .collect::<Result<_, _>>()
        .map_err(|e| DbErr::Custom(format!("{e:?}")))
}

/// Base tables of the current schema, sorted.
pub async fn postgres_tables<C: ConnectionTrait>(db: &C) -> Result<Vec<String>, DbErr> {
    strings(
        db,
        "SELECT table_name::text FROM information_schema.tables
          WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY 1",
    )
    .await
}

/// Everything that defines `tables` in the current schema, one line each: columns (position,
/// type, precision, default, nullability), constraints (name and full definition) and indexes
/// (name and full definition). Table names are compared as given (case-sensitive).
pub async fn describe_postgres<C: ConnectionTrait>(
    db: &C,
    tables: &[&str],
) -> Result<Vec<String>, DbErr> {
    // Names are quoted as SQL literals; the callers pass our own constant table names.
    let list = tables
        .iter()
        .map(|t| format!("'{}'", t.replace('\'', "''")))
        .collect::<Vec<_>>()
        .join(", ");
    let mut lines = strings(
        db,
        &format!(
            "SELECT format('column %s.%s #%s %s/%s(%s) default=%s nullable=%s',
                    table_name, column_name, ordinal_position, data_type, udt_name,
                    coalesce(datetime_precision::text, '-'),
                    coalesce(column_default, '-'), is_nullable)
               FROM information_schema.columns
              WHERE table_schema = current_schema() AND table_name IN ({list})
              ORDER BY table_name, ordinal_position"
        ),
    )
    .await?;
    lines.extend(
        strings(
            db,
            &format!(
                "SELECT format('constraint %s.%s %s', t.relname, c.conname, pg_get_constraintdef(c.oid))
                   FROM pg_constraint c
                   JOIN pg_class t ON t.oid = c.conrelid
                   JOIN pg_namespace ns ON ns.oid = t.relnamespace
                  WHERE ns.nspname = current_schema() AND t.relname IN ({list})
                  ORDER BY t.relname, c.conname"
            ),
        )
        .await?,
    );
    lines.extend(
        strings(
            db,
            &format!(
                "SELECT format('index %s.%s %s', tablename, indexname, indexdef)
                   FROM pg_indexes
                  WHERE schemaname = current_schema() AND tablename IN ({list})
                  ORDER BY tablename, indexname"
            ),
        )
        .await?,
    );
    Ok(lines)
}
