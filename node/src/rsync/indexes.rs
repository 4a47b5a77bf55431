//! Parquet snapshots of the catalog for the rsync `indexes` module: what the mirror knows (repos,
//! revisions, files with size, etag and LFS sha256), what is pinned, and how complete each pin is on
//! each node. Written without Arrow (the low-level `parquet` writer), one file per table.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use hfm_cluster::catalog::EntryKind;
use parquet::basic::Compression;
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;

use super::pins::Pins;
use crate::metadata::DEFAULT_REVISION;

/// The tables of one snapshot, as `NAME.parquet`.
pub const TABLES: [&str; 5] = ["repos", "revisions", "files", "pins", "completeness"];

/// One column's values.
enum Values {
    Text(Vec<String>),
    /// A text column that may be null.
    OptionalText(Vec<Option<String>>),
    Int(Vec<i64>),
    Bool(Vec<bool>),
    /// Unix milliseconds, UTC.
    Timestamp(Vec<i64>),
}

impl Values {
    fn len(&self) -> usize {
        match self {
            Values::Text(values) => values.len(),
            Values::OptionalText(values) => values.len(),
            Values::Int(values) | Values::Timestamp(values) => values.len(),
            Values::Bool(values) => values.len(),
        }
    }

    /// The column's line in a Parquet message type.
    fn schema_line(&self, name: &str) -> String {
        match self {
            Values::Text(_) => format!("REQUIRED BYTE_ARRAY {name} (UTF8);"),
            Values::OptionalText(_) => format!("OPTIONAL BYTE_ARRAY {name} (UTF8);"),
            Values::Int(_) => format!("REQUIRED INT64 {name};"),
            Values::Bool(_) => format!("REQUIRED BOOLEAN {name};"),
            Values::Timestamp(_) => format!("REQUIRED INT64 {name} (TIMESTAMP(MILLIS,true));"),
        }
    }
}

/// A table: named columns of equal length.
struct Table {
    columns: Vec<(&'static str, Values)>,
}

impl Table {
    fn rows(&self) -> usize {
        self.columns.first().map_or(0, |(_, values)| values.len())
    }

    /// Writes the table as one Parquet file (one row group, Snappy pages).
    fn write(&self, path: &Path) -> anyhow::Result<()> {
        debug_assert!(self.columns.iter().all(|(_, values)| values.len() == self.rows()));
        let lines: Vec<String> = self.columns.iter().map(|(name, values)| values.schema_line(name)).collect();
        let message = format!("message hf_mirror {{ {} }}", lines.join(" "));
        let schema = Arc::new(parquet::schema::parser::parse_message_type(&message)?);
        let properties = Arc::new(
            WriterProperties::builder()
                .set_compression(Compression::SNAPPY)
                .set_created_by(format!("hf-mirror {}", env!("CARGO_PKG_VERSION")))
                .build(),
        );
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut writer = SerializedFileWriter::new(file, schema, properties)?;
        let mut row_group = writer.next_row_group()?;
        let mut columns = self.columns.iter();
        while let Some(mut column) = row_group.next_column()? {
            let (_, values) = columns.next().context("more Parquet columns than values")?;
            match values {
                Values::Text(texts) => {
                    let bytes: Vec<ByteArray> = texts.iter().map(|text| ByteArray::from(text.as_str())).collect();
                    column.typed::<ByteArrayType>().write_batch(&bytes, None, None)?;
                }
                Values::OptionalText(texts) => {
                    let levels: Vec<i16> = texts.iter().map(|text| i16::from(text.is_some())).collect();
                    let bytes: Vec<ByteArray> = texts.iter().flatten().map(|text| ByteArray::from(text.as_str())).collect();
                    column.typed::<ByteArrayType>().write_batch(&bytes, Some(&levels), None)?;
                }
                Values::Int(numbers) | Values::Timestamp(numbers) => {
                    column.typed::<Int64Type>().write_batch(numbers, None, None)?;
                }
                Values::Bool(flags) => {
                    column.typed::<BoolType>().write_batch(flags, None, None)?;
                }
            }
            column.close()?;
        }
        row_group.close()?;
        let file = writer.into_inner()?;
        file.sync_all()?;
        Ok(())
    }
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// What one snapshot holds, gathered from the catalog (and, for completeness, the replica records).
pub struct Snapshot {
    tables: Vec<(&'static str, Table)>,
}

impl Snapshot {
    /// Reads the catalog as this node sees it.
    pub async fn gather(pins_handle: &Pins) -> anyhow::Result<Snapshot> {
        let catalog = pins_handle.catalog();
        let pins = catalog.list_pins().await?;

        let mut policies = catalog.list_policies().await?;
        policies.sort_by(|left, right| left.0.cmp(&right.0));
        let repos = Table {
            columns: vec![
                ("type", Values::Text(policies.iter().map(|(repo, _)| repo.repo_type.as_str().to_owned()).collect())),
                ("repo", Values::Text(policies.iter().map(|(repo, _)| repo.repo_id.clone()).collect())),
                ("cacheable", Values::Bool(policies.iter().map(|(_, policy)| policy.cacheable).collect())),
                ("policy_reason", Values::Text(policies.iter().map(|(_, policy)| policy.reason.clone()).collect())),
                ("checked_at", Values::Timestamp(policies.iter().map(|(_, policy)| to_i64(policy.checked_at_ms)).collect())),
                ("pinned", Values::Bool(policies.iter().map(|(repo, _)| pins.iter().any(|(pinned, _)| pinned == repo)).collect())),
            ],
        };

        let mut refs = catalog.list_refs().await?;
        // The default-branch alias is the mirror's own bookkeeping, not a revision of the repo.
        refs.retain(|(_, revision, _)| revision != DEFAULT_REVISION);
        refs.sort_by(|left, right| (&left.0, &left.1).cmp(&(&right.0, &right.1)));
        let revisions = Table {
            columns: vec![
                ("type", Values::Text(refs.iter().map(|(repo, ..)| repo.repo_type.as_str().to_owned()).collect())),
                ("repo", Values::Text(refs.iter().map(|(repo, ..)| repo.repo_id.clone()).collect())),
                ("revision", Values::Text(refs.iter().map(|(_, revision, _)| revision.clone()).collect())),
                ("commit", Values::Text(refs.iter().map(|(.., record)| record.commit.clone()).collect())),
                ("checked_at", Values::Timestamp(refs.iter().map(|(.., record)| to_i64(record.checked_at_ms)).collect())),
            ],
        };

        let mut manifest_keys = catalog.list_manifest_keys().await?;
        manifest_keys.sort();
        let (mut kinds, mut repo_ids, mut commits, mut paths) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut sizes, mut etags, mut lfs, mut oids) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (repo, commit) in &manifest_keys {
            let Some(manifest) = catalog.get_manifest(repo, commit).await? else { continue };
            for index in 0..manifest.page_count() {
                let page = manifest.page(index).await?;
                for entry in page.entries().iter().filter(|entry| entry.kind == EntryKind::File) {
                    kinds.push(repo.repo_type.as_str().to_owned());
                    repo_ids.push(repo.repo_id.clone());
                    commits.push(commit.clone());
                    paths.push(entry.path.clone());
                    sizes.push(to_i64(entry.size));
                    etags.push(entry.etag().to_owned());
                    lfs.push(entry.lfs.as_ref().map(|pointer| pointer.sha256.clone()));
                    oids.push(entry.oid.clone());
                }
            }
        }
        let files = Table {
            columns: vec![
                ("type", Values::Text(kinds)),
                ("repo", Values::Text(repo_ids)),
                ("commit", Values::Text(commits)),
                ("path", Values::Text(paths)),
                ("size", Values::Int(sizes)),
                ("etag", Values::Text(etags)),
                ("lfs_sha256", Values::OptionalText(lfs)),
                ("git_oid", Values::Text(oids)),
            ],
        };

        let mut pins = pins;
        pins.sort_by(|left, right| left.0.cmp(&right.0));
        let mut pin_totals = Vec::new();
        let (mut c_kinds, mut c_repos, mut c_commits, mut c_nodes) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut c_files, mut c_bytes, mut c_held_files, mut c_held_bytes, mut c_complete) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (repo, pin) in &pins {
            let held = pins_handle.holdings(repo, &pin.commit).await.map_err(|error| anyhow::anyhow!("{}", error.message))?;
            pin_totals.push(held.as_ref().map_or((0, 0), |held| (held.files, held.bytes)));
            let Some(held) = held else { continue };
            for (node, (files, bytes)) in &held.per_node {
                c_kinds.push(repo.repo_type.as_str().to_owned());
                c_repos.push(repo.repo_id.clone());
                c_commits.push(pin.commit.clone());
                c_nodes.push(node.clone());
                c_files.push(to_i64(held.files));
                c_bytes.push(to_i64(held.bytes));
                c_held_files.push(to_i64(*files));
                c_held_bytes.push(to_i64(*bytes));
                c_complete.push(held.complete(node));
            }
        }
        let pins_table = Table {
            columns: vec![
                ("type", Values::Text(pins.iter().map(|(repo, _)| repo.repo_type.as_str().to_owned()).collect())),
                ("repo", Values::Text(pins.iter().map(|(repo, _)| repo.repo_id.clone()).collect())),
                ("revision", Values::Text(pins.iter().map(|(_, pin)| pin.revision.clone()).collect())),
                ("commit", Values::Text(pins.iter().map(|(_, pin)| pin.commit.clone()).collect())),
                ("next_commit", Values::OptionalText(pins.iter().map(|(_, pin)| pin.next_commit.clone()).collect())),
                ("pinned_at", Values::Timestamp(pins.iter().map(|(_, pin)| to_i64(pin.pinned_at_ms)).collect())),
                ("files", Values::Int(pin_totals.iter().map(|(files, _)| to_i64(*files)).collect())),
                ("bytes", Values::Int(pin_totals.iter().map(|(_, bytes)| to_i64(*bytes)).collect())),
            ],
        };
        let completeness = Table {
            columns: vec![
                ("type", Values::Text(c_kinds)),
                ("repo", Values::Text(c_repos)),
                ("commit", Values::Text(c_commits)),
                ("node", Values::Text(c_nodes)),
                ("files", Values::Int(c_files)),
                ("bytes", Values::Int(c_bytes)),
                ("files_held", Values::Int(c_held_files)),
                ("bytes_held", Values::Int(c_held_bytes)),
                ("complete", Values::Bool(c_complete)),
            ],
        };
        Ok(Snapshot {
            tables: vec![
                ("repos", repos),
                ("revisions", revisions),
                ("files", files),
                ("pins", pins_table),
                ("completeness", completeness),
            ],
        })
    }

    /// Writes every table as `NAME.parquet` into `directory` (which must exist).
    pub fn write(&self, directory: &Path) -> anyhow::Result<()> {
        for (name, table) in &self.tables {
            table.write(&directory.join(format!("{name}.parquet"))).with_context(|| format!("writing the {name} index"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;

    #[test]
    fn a_table_reads_back_with_nulls_and_types() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("t.parquet");
        let table = Table {
            columns: vec![
                ("name", Values::Text(vec!["a".into(), "b/ü".into()])),
                ("maybe", Values::OptionalText(vec![None, Some("x".into())])),
                ("size", Values::Int(vec![0, i64::MAX])),
                ("flag", Values::Bool(vec![true, false])),
                ("at", Values::Timestamp(vec![1_700_000_000_000, 0])),
            ],
        };
        table.write(&path).unwrap();
        let reader = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
        assert_eq!(reader.metadata().file_metadata().num_rows(), 2);
        let rows: Vec<Vec<(String, Field)>> = reader
            .get_row_iter(None)
            .unwrap()
            .map(|row| row.unwrap().get_column_iter().map(|(name, field)| (name.clone(), field.clone())).collect())
            .collect();
        assert_eq!(rows[0][0], ("name".into(), Field::Str("a".into())));
        assert_eq!(rows[0][1], ("maybe".into(), Field::Null));
        assert_eq!(rows[1][1], ("maybe".into(), Field::Str("x".into())));
        assert_eq!(rows[1][0].1, Field::Str("b/ü".into()));
        assert_eq!(rows[1][2].1, Field::Long(i64::MAX));
        assert_eq!(rows[0][3].1, Field::Bool(true));
        assert_eq!(rows[0][4].1, Field::TimestampMillis(1_700_000_000_000));
    }

    #[test]
    fn an_empty_table_is_a_valid_file() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("empty.parquet");
        Table { columns: vec![("name", Values::Text(Vec::new())), ("maybe", Values::OptionalText(Vec::new()))] }.write(&path).unwrap();
        let reader = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
        assert_eq!(reader.metadata().file_metadata().num_rows(), 0);
    }
}
