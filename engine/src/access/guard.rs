//! A store that refuses every request its grant does not allow, before it reaches the backend.

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{Access, Grant};
use crate::store::{GetResult, ObjectMeta, PutMode, Store, Version};
use crate::Result;

/// Enforces a [`Grant`] in front of a store: what the cloud's policy would refuse is refused
/// here with [`crate::Error::Denied`], and nothing reaches the store.
#[derive(Debug)]
pub struct GrantStore {
    inner: Arc<dyn Store>,
    grant: Grant,
}

impl GrantStore {
    /// `inner` behind `grant`.
    pub fn new(inner: Arc<dyn Store>, grant: Grant) -> Self {
        GrantStore { inner, grant }
    }

    /// The grant enforced.
    pub fn grant(&self) -> &Grant {
        &self.grant
    }
}

#[async_trait]
impl Store for GrantStore {
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<Version> {
        let access = match mode {
            PutMode::Create => Access::Create,
            PutMode::Update(_) => Access::Replace,
        };
        self.grant.check(access, key)?;
        self.inner.put(key, data, mode).await
    }

    async fn get(&self, key: &str) -> Result<GetResult> {
        self.grant.check(Access::Read, key)?;
        self.inner.get(key).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        self.grant.check(Access::Read, key)?;
        self.inner.get_range(key, range).await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        self.grant.check(Access::Read, key)?;
        self.inner.head(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.grant.check(Access::List, prefix)?;
        self.inner.list(prefix).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.grant.check(Access::Delete, key)?;
        self.inner.delete(key).await
    }

    fn location(&self) -> String {
        self.inner.location()
    }

    fn read_size(&self) -> u64 {
        self.inner.read_size()
    }
}
