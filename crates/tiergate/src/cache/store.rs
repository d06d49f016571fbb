//! The cache on disk: one redb file, one table, values are [`CachedAnswer`]s; tenants' keyspaces
//! are apart in the keys themselves (the tenant's name is hashed into each). redb's commits are crash-safe (copy-on-write B-tree, checksummed), so a
//! node killed mid-write reopens with the last committed state.

use std::path::Path;

use redb::{Database, ReadableTableMetadata, TableDefinition};

use super::entry::CachedAnswer;
use super::key::CacheKey;

/// Anything that went wrong with the file; the cache counts it and carries on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cache database: {0}")]
    Database(#[from] redb::DatabaseError),
    /// Boxed: redb's transaction error is large, and every result here would carry its size.
    #[error("cache transaction: {0}")]
    Transaction(Box<redb::TransactionError>),
    #[error("cache table: {0}")]
    Table(#[from] redb::TableError),
    #[error("cache storage: {0}")]
    Storage(#[from] redb::StorageError),
    #[error("cache commit: {0}")]
    Commit(#[from] redb::CommitError),
    #[error("cache entry: {0}")]
    Entry(#[from] serde_json::Error),
}

impl From<redb::TransactionError> for StoreError {
    fn from(err: redb::TransactionError) -> Self {
        StoreError::Transaction(Box::new(err))
    }
}

impl StoreError {
    /// Another process (a second node on the same path) holds the file: it is not corrupt
    /// and must not be moved aside.
    pub fn is_locked(&self) -> bool {
        matches!(
            self,
            StoreError::Database(redb::DatabaseError::DatabaseAlreadyOpen)
        )
    }
}

#[derive(Debug)]
pub struct DiskStore {
    db: Database,
    /// `answers:`, the name the table has had since tenant keyspaces were planned as tables.
    table: String,
}

impl DiskStore {
    /// Opens (or creates) the file and its table; reading the entry count also checks that the
    /// table's pages are readable.
    pub fn open(path: &Path) -> Result<(DiskStore, u64), StoreError> {
        let db = Database::create(path)?;
        let store = DiskStore {
            db,
            table: "answers:".to_owned(),
        };
        let write = store.db.begin_write()?;
        {
            write.open_table(store.definition())?;
        }
        write.commit()?;
        let entries = store.len()?;
        Ok((store, entries))
    }

    fn definition(&self) -> TableDefinition<'_, &'static [u8], &'static [u8]> {
        TableDefinition::new(&self.table)
    }

    pub fn len(&self) -> Result<u64, StoreError> {
        let read = self.db.begin_read()?;
        Ok(read.open_table(self.definition())?.len()?)
    }

    pub fn get(&self, key: &CacheKey) -> Result<Option<CachedAnswer>, StoreError> {
        let read = self.db.begin_read()?;
        let table = read.open_table(self.definition())?;
        match table.get(key.0.as_slice())? {
            Some(value) => Ok(Some(CachedAnswer::decode(value.value())?)),
            None => Ok(None),
        }
    }

    /// Stores `answer`; true when the key is new.
    pub fn put(&self, key: &CacheKey, answer: &CachedAnswer) -> Result<bool, StoreError> {
        let value = answer.encode()?;
        let write = self.db.begin_write()?;
        let replaced = {
            let mut table = write.open_table(self.definition())?;
            table.insert(key.0.as_slice(), value.as_slice())?.is_some()
        };
        write.commit()?;
        Ok(!replaced)
    }

    /// Removes the entry; true when there was one.
    pub fn remove(&self, key: &CacheKey) -> Result<bool, StoreError> {
        let write = self.db.begin_write()?;
        let removed = {
            let mut table = write.open_table(self.definition())?;
            table.remove(key.0.as_slice())?.is_some()
        };
        write.commit()?;
        Ok(removed)
    }

    /// Drops every entry stored before `cutoff` (and any that cannot be read), so that the file
    /// does not grow with answers that can never be served. Returns how many remain.
    pub fn purge_stored_before(&self, cutoff: u64) -> Result<u64, StoreError> {
        let write = self.db.begin_write()?;
        {
            let mut table = write.open_table(self.definition())?;
            table.retain(|_, value| {
                CachedAnswer::decode(value).is_ok_and(|answer| answer.stored_at >= cutoff)
            })?;
        }
        write.commit()?;
        self.len()
    }
}
