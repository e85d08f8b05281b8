//! Read-only SQL over the archive's tables, with DataFusion.
//!
//! The caller hands over each table as the newest version of its Delta log
//! describes it: the files' schema, the partition columns and the data files
//! with their partition values, in one or more object stores (the bucket,
//! and the local disk for files still waiting for upload). Nothing else is
//! reachable from a query: no catalog of files, no URL tables, no DDL, DML
//! or `SET`-style statements.
//!
//! Every query runs on the engine's own threads (a query cannot take the
//! threads that serve the API and take in data), with a shared memory pool
//! (operators that need more than it, a large sort or join, fail rather
//! than spill to disk), a timeout, at most a few queries at once, and a cap
//! on the rows of an answer.
//!
//! Files are pruned before they are opened by the filters on partition
//! columns (`date`, `hour`, `hub`), and within a file by the row groups' and
//! pages' statistics (DataFusion's Parquet pruning), so a query on a recent
//! hour or one device reads little of a large table.

use std::sync::Arc;
use std::time::Duration;

use arrow_array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, FieldRef, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::union::UnionExec;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use futures_util::StreamExt;
use object_store::ObjectStore;

/// A data file of a table.
#[derive(Debug, Clone)]
pub struct DataFile {
    /// Its key in the store.
    pub key: object_store::path::Path,
    pub bytes: u64,
    /// Its partition values, in the order of [`Table::partition_columns`].
    pub partition: Vec<String>,
}

/// Files of a table in one object store.
#[derive(Debug, Clone)]
pub struct FilesIn {
    /// The store's URL: `file:///` for the local disk, `s3://<bucket>` for a
    /// bucket.
    pub url: url::Url,
    pub store: Arc<dyn ObjectStore>,
    pub files: Vec<DataFile>,
}

/// A table as its log's newest version describes it.
#[derive(Debug, Clone)]
pub struct Table {
    pub name: String,
    /// The columns stored in the files.
    pub file_schema: SchemaRef,
    /// Columns whose values are the files' partition values (strings).
    pub partition_columns: Vec<String>,
    pub files: Vec<FilesIn>,
}

/// What one query may use.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Memory all running queries share (sorts, joins, aggregations).
    pub memory_bytes: usize,
    pub timeout: Duration,
    /// Most rows an answer may hold.
    pub max_rows: usize,
    /// Queries running at once; more wait their turn (within the timeout).
    pub concurrent: usize,
    /// Threads the engine runs queries on.
    pub threads: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 256 << 20,
            timeout: Duration::from_secs(30),
            max_rows: 1_000_000,
            concurrent: 2,
            threads: 2,
        }
    }
}

/// Why a query gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// A statement other than a query (DDL, DML, `SET`, `COPY`, ...).
    #[error("only queries are allowed: {0}")]
    NotAQuery(String),
    /// Not valid SQL, or names a table or column that does not exist.
    #[error("{0}")]
    Invalid(String),
    #[error("the query needs more memory than the limit: {0}")]
    OutOfMemory(String),
    #[error("the query ran longer than the limit of {0:?}")]
    Timeout(Duration),
    #[error("the answer holds more than {0} rows: add a LIMIT or narrow the query")]
    TooManyRows(usize),
    /// The tables could not be read.
    #[error("the archive cannot be read: {0}")]
    Io(String),
}

fn classify(e: datafusion::error::DataFusionError) -> SqlError {
    use datafusion::error::DataFusionError as E;
    match e.find_root() {
        E::ResourcesExhausted(m) => SqlError::OutOfMemory(m.clone()),
        E::ObjectStore(e) => SqlError::Io(e.to_string()),
        E::IoError(e) => SqlError::Io(e.to_string()),
        E::ParquetError(e) => SqlError::Io(e.to_string()),
        E::SQL(..) | E::Plan(_) | E::SchemaError(..) | E::NotImplemented(_) => {
            SqlError::Invalid(e.to_string())
        }
        other => SqlError::Invalid(other.to_string()),
    }
}

/// A query's answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

/// Runs read-only queries over tables, within [`Limits`].
pub struct Engine {
    limits: Limits,
    runtime: Option<tokio::runtime::Runtime>,
    env: Arc<RuntimeEnv>,
    running: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("limits", &self.limits)
            .finish()
    }
}

/// The engine may be dropped on an async task (a hub shutting down).
impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Engine {
    pub fn new(limits: Limits) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(limits.threads.max(1))
            .thread_name("hub-sql")
            .enable_all()
            .build()?;
        let env = RuntimeEnvBuilder::new()
            .with_memory_limit(limits.memory_bytes, 1.0)
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .build_arc()
            .map_err(std::io::Error::other)?;
        Ok(Self {
            running: Arc::new(tokio::sync::Semaphore::new(limits.concurrent.max(1))),
            limits,
            runtime: Some(runtime),
            env,
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Runs `sql` over `tables` on the engine's threads.
    pub async fn query(&self, sql: &str, tables: Vec<Table>) -> Result<Answer, SqlError> {
        let limits = self.limits.clone();
        let env = Arc::clone(&self.env);
        let running = Arc::clone(&self.running);
        let sql = sql.to_owned();
        let task = self
            .runtime
            .as_ref()
            .expect("until dropped")
            .spawn(async move {
                let _turn = running.acquire_owned().await;
                run(&sql, tables, &limits, env).await
            });
        let abort = task.abort_handle();
        match tokio::time::timeout(self.limits.timeout, task).await {
            Ok(Ok(answer)) => answer,
            // A task that panicked (a damaged file can make a decoder
            // panic): the hub stays up, the query has no answer.
            Ok(Err(e)) => Err(SqlError::Io(format!("the query failed: {e}"))),
            Err(_) => {
                // Dropping the plan's streams stops its work.
                abort.abort();
                Err(SqlError::Timeout(self.limits.timeout))
            }
        }
    }
}

async fn run(
    sql: &str,
    tables: Vec<Table>,
    limits: &Limits,
    env: Arc<RuntimeEnv>,
) -> Result<Answer, SqlError> {
    let config = SessionConfig::new()
        .with_target_partitions(limits.threads.max(1))
        .with_information_schema(false);
    let ctx = SessionContext::new_with_config_rt(config, env);
    for table in tables {
        for set in &table.files {
            let url = ObjectStoreUrl::parse(store_root(&set.url)).map_err(classify)?;
            ctx.register_object_store(url.as_ref(), Arc::clone(&set.store));
        }
        let name = table.name.clone();
        ctx.register_table(name.as_str(), Arc::new(Provider::new(table)))
            .map_err(classify)?;
    }
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let frame = ctx
        .sql_with_options(sql, options)
        .await
        .map_err(|e| match e.find_root() {
            datafusion::error::DataFusionError::Plan(m)
                if m.contains("not supported") || m.contains("are not supported") =>
            {
                SqlError::NotAQuery(m.clone())
            }
            _ => classify(e),
        })?;
    let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
    let mut stream = frame.execute_stream().await.map_err(classify)?;
    let mut batches = Vec::new();
    let mut rows = 0usize;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(classify)?;
        rows += batch.num_rows();
        if rows > limits.max_rows {
            return Err(SqlError::TooManyRows(limits.max_rows));
        }
        batches.push(batch);
    }
    Ok(Answer { schema, batches })
}

/// `scheme://authority/` of a store URL (what DataFusion registers stores
/// under).
fn store_root(url: &url::Url) -> String {
    format!("{}://{}", url.scheme(), url.authority())
}

/// A table: its files, pruned by partition filters, scanned as Parquet.
#[derive(Debug)]
struct Provider {
    table: Table,
    schema: SchemaRef,
    partition_fields: Vec<FieldRef>,
}

impl Provider {
    fn new(table: Table) -> Self {
        let partition_fields: Vec<FieldRef> = table
            .partition_columns
            .iter()
            .map(|c| Arc::new(Field::new(c, DataType::Utf8, true)))
            .collect();
        let mut fields: Vec<FieldRef> = table.file_schema.fields().iter().cloned().collect();
        fields.extend(partition_fields.iter().cloned());
        Self {
            schema: Arc::new(Schema::new(fields)),
            table,
            partition_fields,
        }
    }

    /// Which of `files` the filters on partition columns keep.
    fn keep(
        &self,
        state: &dyn Session,
        filters: &[Expr],
        files: &[DataFile],
    ) -> datafusion::error::Result<Vec<bool>> {
        let partition_schema = Arc::new(Schema::new(
            self.partition_fields
                .iter()
                .map(|f| f.as_ref().clone())
                .collect::<Vec<_>>(),
        ));
        let names: Vec<&str> = self
            .table
            .partition_columns
            .iter()
            .map(String::as_str)
            .collect();
        let on_partitions: Vec<Expr> = filters
            .iter()
            .filter(|f| {
                f.column_refs()
                    .iter()
                    .all(|c| names.contains(&c.name.as_str()))
            })
            .cloned()
            .collect();
        let Some(predicate) = conjunction(on_partitions) else {
            return Ok(vec![true; files.len()]);
        };
        let columns: Vec<ArrayRef> = (0..names.len())
            .map(|i| {
                Arc::new(StringArray::from_iter(
                    files.iter().map(|f| f.partition.get(i).map(String::as_str)),
                )) as ArrayRef
            })
            .collect();
        let values = RecordBatch::try_new(Arc::clone(&partition_schema), columns)?;
        let df_schema = DFSchema::try_from(Arc::clone(&partition_schema))?;
        let expr = state.create_physical_expr(predicate, &df_schema)?;
        let result = expr.evaluate(&values)?.into_array(files.len())?;
        let mask = result
            .as_any()
            .downcast_ref::<arrow_array::BooleanArray>()
            .ok_or_else(|| {
                datafusion::error::DataFusionError::Internal("a filter that is not boolean".into())
            })?;
        Ok((0..files.len())
            .map(|i| mask.is_valid(i) && mask.value(i))
            .collect())
    }
}

#[async_trait::async_trait]
impl TableProvider for Provider {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        // Pruning only: DataFusion still filters every row.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let format = ParquetFormat::default().with_options(state.table_options().parquet.clone());
        let table_schema = TableSchema::builder(Arc::clone(&self.table.file_schema))
            .with_table_partition_cols(self.partition_fields.clone())
            .build();
        let predicate = match conjunction(filters.iter().cloned()) {
            Some(expr) => {
                let df_schema = DFSchema::try_from(Arc::clone(&self.schema))?;
                Some(state.create_physical_expr(expr, &df_schema)?)
            }
            None => None,
        };
        let mut scans: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        for set in &self.table.files {
            let keep = self.keep(state, filters, &set.files)?;
            let files: Vec<PartitionedFile> = set
                .files
                .iter()
                .zip(keep)
                .filter(|(_, keep)| *keep)
                .map(|(f, _)| {
                    PartitionedFile::new(f.key.to_string(), f.bytes).with_partition_values(
                        f.partition
                            .iter()
                            .map(|v| ScalarValue::Utf8(Some(v.clone())))
                            .collect(),
                    )
                })
                .collect();
            if files.is_empty() {
                continue;
            }
            let mut source =
                datafusion::datasource::physical_plan::ParquetSource::new(table_schema.clone())
                    .with_table_parquet_options(state.table_options().parquet.clone())
                    .with_enable_page_index(true);
            if let Some(predicate) = &predicate {
                source = source.with_predicate(Arc::clone(predicate));
            }
            // Files spread over the engine's threads.
            let groups = state.config().target_partitions().max(1);
            let mut file_groups: Vec<Vec<PartitionedFile>> = vec![Vec::new(); groups];
            for (i, f) in files.into_iter().enumerate() {
                file_groups[i % groups].push(f);
            }
            let config = FileScanConfigBuilder::new(
                ObjectStoreUrl::parse(store_root(&set.url))?,
                Arc::new(source),
            )
            .with_file_groups(
                file_groups
                    .into_iter()
                    .filter(|g| !g.is_empty())
                    .map(FileGroup::new)
                    .collect(),
            )
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
            scans.push(format.create_physical_plan(state, config).await?);
        }
        if scans.is_empty() {
            let projected = match projection {
                Some(p) => Arc::new(self.schema.project(p)?),
                None => Arc::clone(&self.schema),
            };
            return Ok(Arc::new(EmptyExec::new(projected)));
        }
        UnionExec::try_new(scans)
    }
}

#[cfg(test)]
mod tests;
