use std::time::Duration;

use arrow_array::{Array, Float64Array, Int64Array};

use super::*;

/// A file of `rows` readings of `device` in the local directory `dir`,
/// returned as a data file of the table.
fn write_file(
    dir: &std::path::Path,
    name: &str,
    device: &str,
    rows: i64,
    partition: [&str; 3],
) -> DataFile {
    let schema = file_schema();
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(StringArray::from(vec![device; rows as usize])),
            Arc::new(Int64Array::from_iter_values(0..rows)),
            Arc::new(Float64Array::from_iter_values(
                (0..rows).map(|v| v as f64 / 2.0),
            )),
        ],
    )
    .unwrap();
    let path = dir.join(name);
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), schema, None)
            .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    DataFile {
        key: object_store::path::Path::from_absolute_path(&path).unwrap(),
        bytes: std::fs::metadata(&path).unwrap().len(),
        partition: partition.iter().map(|v| (*v).to_owned()).collect(),
    }
}

fn file_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("device", DataType::Utf8, false),
        Field::new("seq", DataType::Int64, false),
        Field::new("value", DataType::Float64, false),
    ]))
}

fn table(files: Vec<DataFile>) -> Table {
    Table {
        name: "scored".into(),
        file_schema: file_schema(),
        partition_columns: vec!["date".into(), "hour".into(), "hub".into()],
        files: vec![FilesIn {
            url: url::Url::parse("file:///").unwrap(),
            store: Arc::new(object_store::local::LocalFileSystem::new()),
            files,
        }],
    }
}

/// Two good files (hubs a and b) and one damaged file (hub c).
fn archive(dir: &std::path::Path) -> Table {
    let mut files = vec![
        write_file(dir, "a.parquet", "dev-a", 100, ["2026-12-01", "03", "a"]),
        write_file(dir, "b.parquet", "dev-b", 50, ["2026-12-01", "04", "b"]),
    ];
    let damaged = dir.join("c.parquet");
    std::fs::write(&damaged, b"PAR1 this is not a parquet file PAR1").unwrap();
    files.push(DataFile {
        key: object_store::path::Path::from_absolute_path(&damaged).unwrap(),
        bytes: 36,
        partition: vec!["2026-12-01".into(), "05".into(), "c".into()],
    });
    table(files)
}

fn engine(limits: Limits) -> Engine {
    Engine::new(limits).unwrap()
}

fn single_i64(answer: &Answer) -> i64 {
    let column = answer.batches[0].column(0);
    column
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0)
}

#[tokio::test]
async fn queries_read_the_tables_with_their_partition_columns_and_skip_pruned_files() {
    let dir = tempfile::tempdir().unwrap();
    let sql = engine(Limits::default());
    let answer = sql
        .query(
            "SELECT hub, count(*) AS n, sum(value) AS total FROM scored \
             WHERE hub IN ('a', 'b') GROUP BY hub ORDER BY hub",
            vec![archive(dir.path())],
        )
        .await
        .unwrap();
    let batch = arrow_select_concat(&answer);
    assert_eq!(batch.num_rows(), 2);
    let n = batch
        .column(1)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    assert_eq!((n.value(0), n.value(1)), (100, 50));
    let total = batch
        .column(2)
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap();
    assert_eq!(
        total.value(0),
        (0..100).map(|v| v as f64 / 2.0).sum::<f64>()
    );

    // A filter on hour prunes the damaged file of hour 05 too.
    let answer = sql
        .query(
            "SELECT count(*) FROM scored WHERE hour < '05' AND device = 'dev-a' AND seq >= 90",
            vec![archive(dir.path())],
        )
        .await
        .unwrap();
    assert_eq!(single_i64(&answer), 10);

    // Without the filter the damaged file is read, and that is an error.
    let err = sql
        .query(
            "SELECT count(*) FROM scored WHERE seq >= 0",
            vec![archive(dir.path())],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, SqlError::Io(_) | SqlError::Invalid(_)),
        "{err:?}"
    );
}

fn arrow_select_concat(answer: &Answer) -> RecordBatch {
    let batches: Vec<RecordBatch> = answer
        .batches
        .iter()
        .filter(|b| b.num_rows() > 0)
        .cloned()
        .collect();
    assert_eq!(batches.len(), 1, "one batch expected");
    batches[0].clone()
}

#[tokio::test]
async fn only_queries_run() {
    let dir = tempfile::tempdir().unwrap();
    let sql = engine(Limits::default());
    let outside = dir.path().join("outside.parquet");
    for statement in [
        "CREATE TABLE t AS SELECT 1".to_owned(),
        format!(
            "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '{}'",
            dir.path().display()
        ),
        "INSERT INTO scored VALUES ('x', 1, 1.0, '2026-12-01', '03', 'a')".to_owned(),
        "DELETE FROM scored".to_owned(),
        "UPDATE scored SET value = 0".to_owned(),
        "DROP TABLE scored".to_owned(),
        "CREATE VIEW v AS SELECT 1".to_owned(),
        format!("COPY (SELECT 1) TO '{}'", outside.display()),
        "SET datafusion.execution.batch_size = 1".to_owned(),
        "SELECT 1; DROP TABLE scored".to_owned(),
    ] {
        let err = sql
            .query(&statement, vec![archive(dir.path())])
            .await
            .unwrap_err();
        assert!(
            matches!(err, SqlError::NotAQuery(_) | SqlError::Invalid(_)),
            "{statement}: {err:?}"
        );
    }
    assert!(!outside.exists(), "COPY wrote nothing");
    // Files are reachable only as the tables: no URL tables.
    let err = sql
        .query("SELECT * FROM '/etc/passwd'", vec![archive(dir.path())])
        .await
        .unwrap_err();
    assert!(matches!(err, SqlError::Invalid(_)), "{err:?}");
    // A refused statement leaves the engine answering.
    let answer = sql
        .query(
            "SELECT count(*) FROM scored WHERE hub = 'a'",
            vec![archive(dir.path())],
        )
        .await
        .unwrap();
    assert_eq!(single_i64(&answer), 100);
}

#[tokio::test]
async fn a_query_past_its_memory_time_or_rows_is_stopped_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let sql = engine(Limits {
        memory_bytes: 16 << 20,
        timeout: Duration::from_secs(60),
        max_rows: 10,
        ..Limits::default()
    });
    let err = sql
        .query(
            "SELECT count(*) FROM (SELECT (v * 7919) % 3000017 AS k FROM generate_series(1, 3000000) AS t(v) GROUP BY k)",
            vec![],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, SqlError::OutOfMemory(_)), "{err:?}");
    let err = sql
        .query("SELECT * FROM scored", vec![archive(dir.path())])
        .await
        .unwrap_err();
    assert!(matches!(err, SqlError::TooManyRows(10)), "{err:?}");
    let impatient = engine(Limits {
        timeout: Duration::from_secs(2),
        ..Limits::default()
    });
    let started = std::time::Instant::now();
    let err = impatient
        .query(
            "SELECT count(*) FROM generate_series(1, 100000000000) AS t(v) WHERE v % 7 = 3",
            vec![],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, SqlError::Timeout(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // And the engines still answer.
    let answer = impatient
        .query(
            "SELECT count(*) FROM scored WHERE hub = 'b'",
            vec![archive(dir.path())],
        )
        .await
        .unwrap();
    assert_eq!(single_i64(&answer), 50);
}

/// A file written before a column was added reads the column as nulls.
#[tokio::test]
async fn a_file_without_a_newer_column_reads_it_as_null() {
    let dir = tempfile::tempdir().unwrap();
    let mut newer = table(vec![write_file(
        dir.path(),
        "old.parquet",
        "dev-a",
        3,
        ["2026-12-01", "03", "a"],
    )]);
    let mut fields: Vec<Field> = file_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("unit", DataType::Utf8, true));
    newer.file_schema = Arc::new(Schema::new(fields));
    let answer = engine(Limits::default())
        .query(
            "SELECT count(*) FROM scored WHERE unit IS NULL",
            vec![newer],
        )
        .await
        .unwrap();
    assert_eq!(single_i64(&answer), 3);
}
