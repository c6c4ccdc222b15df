//! Declarative description of the Vizora table subset (mirroring vizora-schema.sql, i.e. Prisma's
//! output) and its rendering to PostgreSQL and SQLite DDL.
//!
//! One description drives both backends so the two schemas cannot drift apart, and every
//! constraint/index name is derived with Prisma's rules (`<table>_pkey`, `<table>_<cols>_key`,
//! `<table>_<cols>_idx`, `<table>_<col>_fkey`) so that our objects and Prisma's are the same
//! objects: a database created by either one looks identical to the other.

use sea_orm_migration::sea_orm::DbBackend;

/// Column types used by the subset.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Ty {
    Text,
    Int,
    /// `TIMESTAMP(3)` without time zone, holding UTC.
    Timestamp,
    Date,
    Json,
    Bool,
}

/// Column defaults used by the subset.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ColDefault {
    None,
    Now,
    Int(i64),
    /// A string literal; the values used here contain no quote.
    Str(&'static str),
    False,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Col {
    pub name: &'static str,
    pub ty: Ty,
    pub not_null: bool,
    pub default: ColDefault,
}

const fn nn(name: &'static str, ty: Ty) -> Col {
    Col {
        name,
        ty,
        not_null: true,
        default: ColDefault::None,
    }
}

const fn nn_d(name: &'static str, ty: Ty, default: ColDefault) -> Col {
    Col {
        name,
        ty,
        not_null: true,
        default,
    }
}

const fn null(name: &'static str, ty: Ty) -> Col {
    Col {
        name,
        ty,
        not_null: false,
        default: ColDefault::None,
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum OnDelete {
    Cascade,
    SetNull,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Fk {
    pub column: &'static str,
    pub ref_table: &'static str,
    pub on_delete: OnDelete,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Idx {
    pub columns: &'static [&'static str],
    pub unique: bool,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Table {
    pub name: &'static str,
    pub columns: &'static [Col],
    /// Every table of the subset has a single-column primary key named "id".
    pub indexes: &'static [Idx],
    pub fks: &'static [Fk],
}

const fn fk(column: &'static str, ref_table: &'static str, on_delete: OnDelete) -> Fk {
    Fk {
        column,
        ref_table,
        on_delete,
    }
}

use ColDefault::{False, Int, Now, Str};
use OnDelete::{Cascade, SetNull};
use Ty::{Bool, Date, Json, Text, Timestamp};

/// The subset, in the order of vizora-schema.sql (column order matters: it is part of what a
/// Prisma-created table looks like).
pub(crate) const TABLES: [Table; 7] = [
    Table {
        name: "organizations",
        columns: &[
            nn("id", Text),
            nn("name", Text),
            nn_d("createdAt", Timestamp, Now),
            nn("updatedAt", Timestamp),
        ],
        indexes: &[],
        fks: &[],
    },
    Table {
        name: "Playlist",
        columns: &[
            nn("id", Text),
            nn("name", Text),
            null("description", Text),
            nn_d("isDefault", Bool, False),
            nn_d("createdAt", Timestamp, Now),
            nn("updatedAt", Timestamp),
            nn("organizationId", Text),
        ],
        indexes: &[],
        fks: &[fk("organizationId", "organizations", Cascade)],
    },
    Table {
        name: "Content",
        columns: &[
            nn("id", Text),
            nn("name", Text),
            null("description", Text),
            nn("type", Text),
            nn("url", Text),
            null("thumbnail", Text),
            nn_d("duration", Ty::Int, Int(10)),
            null("fileSize", Ty::Int),
            null("mimeType", Text),
            null("metadata", Json),
            nn_d("status", Text, Str("active")),
            nn_d("isGlobal", Bool, False),
            null("templateOrientation", Text),
            null("expiresAt", Timestamp),
            null("replacementContentId", Text),
            null("previousVersionId", Text),
            nn_d("versionNumber", Ty::Int, Int(1)),
            nn("organizationId", Text),
            null("folderId", Text),
            nn_d("createdAt", Timestamp, Now),
            nn("updatedAt", Timestamp),
        ],
        indexes: &[],
        fks: &[
            fk("organizationId", "organizations", Cascade),
            fk("replacementContentId", "Content", SetNull),
            fk("previousVersionId", "Content", SetNull),
            fk("folderId", "content_folders", SetNull),
        ],
    },
    Table {
        name: "PlaylistItem",
        columns: &[
            nn("id", Text),
            nn_d("order", Ty::Int, Int(0)),
            null("duration", Ty::Int),
            nn_d("createdAt", Timestamp, Now),
            nn("playlistId", Text),
            nn("contentId", Text),
        ],
        indexes: &[Idx {
            columns: &["playlistId", "order"],
            unique: true,
        }],
        fks: &[
            fk("playlistId", "Playlist", Cascade),
            fk("contentId", "Content", Cascade),
        ],
    },
    Table {
        name: "devices",
        columns: &[
            nn("id", Text),
            nn("organizationId", Text),
            nn("deviceIdentifier", Text),
            null("nickname", Text),
            null("description", Text),
            null("location", Text),
            null("pairingCode", Text),
            null("pairingCodeExpiresAt", Timestamp),
            null("pairedAt", Timestamp),
            null("unpairedAt", Timestamp),
            null("jwtToken", Text),
            nn_d("status", Text, Str("offline")),
            nn_d("orientation", Text, Str("landscape")),
            null("resolution", Text),
            null("lastHeartbeat", Timestamp),
            null("socketId", Text),
            null("metadata", Json),
            nn_d("timezone", Text, Str("UTC")),
            null("lastScreenshot", Text),
            null("lastScreenshotAt", Timestamp),
            null("currentPlaylistId", Text),
            nn_d("createdAt", Timestamp, Now),
            nn("updatedAt", Timestamp),
        ],
        indexes: &[Idx {
            columns: &["deviceIdentifier"],
            unique: true,
        }],
        fks: &[
            fk("organizationId", "organizations", Cascade),
            fk("currentPlaylistId", "Playlist", SetNull),
        ],
    },
    Table {
        name: "content_impressions",
        columns: &[
            nn("id", Text),
            nn("organizationId", Text),
            nn("contentId", Text),
            nn("displayId", Text),
            null("playlistId", Text),
            null("duration", Ty::Int),
            null("completionPercentage", Ty::Int),
            nn_d("timestamp", Timestamp, Now),
            nn("date", Date),
            nn("hour", Ty::Int),
        ],
        indexes: &[
            Idx {
                columns: &["organizationId", "date"],
                unique: false,
            },
            Idx {
                columns: &["contentId", "date"],
                unique: false,
            },
            Idx {
                columns: &["displayId", "date"],
                unique: false,
            },
        ],
        fks: &[
            fk("organizationId", "organizations", Cascade),
            fk("contentId", "Content", Cascade),
            fk("displayId", "devices", Cascade),
            fk("playlistId", "Playlist", SetNull),
        ],
    },
    Table {
        name: "notifications",
        columns: &[
            nn("id", Text),
            nn("type", Text),
            nn("title", Text),
            nn("message", Text),
            nn_d("severity", Text, Str("info")),
            nn_d("read", Bool, False),
            null("dismissedAt", Timestamp),
            null("metadata", Json),
            nn("organizationId", Text),
            null("userId", Text),
            nn_d("createdAt", Timestamp, Now),
            // Nullable on purpose: Vizora added it later as a nullable column.
            null("updatedAt", Timestamp),
        ],
        indexes: &[
            Idx {
                columns: &["organizationId", "read"],
                unique: false,
            },
            Idx {
                columns: &["organizationId", "createdAt"],
                unique: false,
            },
            Idx {
                columns: &["userId"],
                unique: false,
            },
        ],
        fks: &[
            fk("organizationId", "organizations", Cascade),
            fk("userId", "users", SetNull),
        ],
    },
];

/// Whether `table` belongs to the subset (FKs to other tables are conditional).
pub(crate) fn in_subset(table: &str) -> bool {
    TABLES.iter().any(|t| t.name == table)
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn quoted_list(cols: &[&str]) -> String {
    cols.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ")
}

fn column_type(ty: Ty, backend: DbBackend) -> &'static str {
    match (ty, backend) {
        (Ty::Text, _) => "TEXT",
        (Ty::Int, _) => "INTEGER",
        (Ty::Timestamp, _) => "TIMESTAMP(3)",
        (Ty::Date, _) => "DATE",
        // SQLite has no JSONB column type; a declared type of "JSONB" would get NUMERIC affinity
        // and silently turn a JSON number stored as text ("5") into an integer. TEXT keeps the
        // JSON text as written.
        (Ty::Json, DbBackend::Sqlite) => "TEXT",
        (Ty::Json, _) => "JSONB",
        (Ty::Bool, _) => "BOOLEAN",
    }
}

fn default_sql(default: ColDefault, backend: DbBackend) -> Option<String> {
    match default {
        ColDefault::None => None,
        ColDefault::Now => Some("CURRENT_TIMESTAMP".to_owned()),
        ColDefault::Int(n) => Some(n.to_string()),
        ColDefault::Str(s) => Some(format!("'{}'", s.replace('\'', "''"))),
        // SQLite stores booleans as 0/1; the literal `false` only exists since 3.23.
        ColDefault::False if backend == DbBackend::Sqlite => Some("0".to_owned()),
        ColDefault::False => Some("false".to_owned()),
    }
}

impl Table {
    pub(crate) fn pkey_name(&self) -> String {
        format!("{}_pkey", self.name)
    }

    pub(crate) fn fk_name(&self, fk: &Fk) -> String {
        format!("{}_{}_fkey", self.name, fk.column)
    }

    pub(crate) fn index_name(&self, idx: &Idx) -> String {
        let suffix = if idx.unique { "key" } else { "idx" };
        format!("{}_{}_{}", self.name, idx.columns.join("_"), suffix)
    }

    /// `CONSTRAINT "<t>_<c>_fkey" FOREIGN KEY ("c") REFERENCES "r"("id") ON DELETE … ON UPDATE
    /// CASCADE`, the clause shared by PostgreSQL's ALTER TABLE and SQLite's inline form.
    pub(crate) fn fk_clause(&self, fk: &Fk) -> String {
        let on_delete = match fk.on_delete {
            OnDelete::Cascade => "CASCADE",
            OnDelete::SetNull => "SET NULL",
        };
        format!(
            "CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {}(\"id\") ON DELETE {} ON UPDATE CASCADE",
            quote(&self.fk_name(fk)),
            quote(fk.column),
            quote(fk.ref_table),
            on_delete
        )
    }

    /// `CREATE TABLE IF NOT EXISTS` with the primary key and the given inline FK clauses
    /// (PostgreSQL passes none: it adds FKs afterwards, like Prisma does).
    pub(crate) fn create_table_sql(&self, backend: DbBackend, inline_fks: &[&Fk]) -> String {
        let mut lines: Vec<String> = self
            .columns
            .iter()
            .map(|c| {
                let mut line = format!("    {} {}", quote(c.name), column_type(c.ty, backend));
                if c.not_null {
                    line.push_str(" NOT NULL");
                }
                if let Some(d) = default_sql(c.default, backend) {
                    line.push_str(" DEFAULT ");
                    line.push_str(&d);
                }
                line
            })
            .collect();
        lines.push(format!(
            "    CONSTRAINT {} PRIMARY KEY (\"id\")",
            quote(&self.pkey_name())
        ));
        for fk in inline_fks {
            lines.push(format!("    {}", self.fk_clause(fk)));
        }
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\n{}\n)",
            quote(self.name),
            lines.join(",\n")
        )
    }

    /// One `CREATE [UNIQUE] INDEX IF NOT EXISTS` per index (same syntax on both backends).
    pub(crate) fn create_index_sqls(&self) -> Vec<String> {
        self.indexes
            .iter()
            .map(|idx| {
                format!(
                    "CREATE {}INDEX IF NOT EXISTS {} ON {}({})",
                    if idx.unique { "UNIQUE " } else { "" },
                    quote(&self.index_name(idx)),
                    quote(self.name),
                    quoted_list(idx.columns)
                )
            })
            .collect()
    }

    /// PostgreSQL `ALTER TABLE … ADD CONSTRAINT` for one FK.
    pub(crate) fn add_fk_sql(&self, fk: &Fk) -> String {
        format!(
            "ALTER TABLE {} ADD {}",
            quote(self.name),
            self.fk_clause(fk)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prisma() {
        let items = TABLES.iter().find(|t| t.name == "PlaylistItem");
        let Some(items) = items else {
            panic!("PlaylistItem missing")
        };
        assert_eq!(items.pkey_name(), "PlaylistItem_pkey");
        assert_eq!(
            items.index_name(&items.indexes[0]),
            "PlaylistItem_playlistId_order_key"
        );
        assert_eq!(items.fk_name(&items.fks[1]), "PlaylistItem_contentId_fkey");
    }

    #[test]
    fn every_subset_table_has_an_id_column_first() {
        for t in TABLES {
            assert_eq!(t.columns[0].name, "id", "{}", t.name);
            for fk in t.fks {
                assert!(
                    t.columns.iter().any(|c| c.name == fk.column),
                    "{}.{}",
                    t.name,
                    fk.column
                );
            }
        }
    }

    #[test]
    fn sqlite_rendering_uses_integer_booleans_and_text_json() {
        let Some(content) = TABLES.iter().find(|t| t.name == "Content") else {
            panic!("Content missing")
        };
        let sql = content.create_table_sql(DbBackend::Sqlite, &[]);
        assert!(
            sql.contains("\"isGlobal\" BOOLEAN NOT NULL DEFAULT 0"),
            "{sql}"
        );
        assert!(sql.contains("\"metadata\" TEXT,"), "{sql}");
        let pg = content.create_table_sql(DbBackend::Postgres, &[]);
        assert!(
            pg.contains("\"isGlobal\" BOOLEAN NOT NULL DEFAULT false"),
            "{pg}"
        );
        assert!(pg.contains("\"metadata\" JSONB,"), "{pg}");
        assert!(
            pg.contains("\"status\" TEXT NOT NULL DEFAULT 'active'"),
            "{pg}"
        );
    }
}
