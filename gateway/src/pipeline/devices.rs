//! Enrolled devices, cached: verification looks a device up once per
//! `pipeline.device_cache_ttl_ms` instead of once per request. A change made by another process
//! (the CLI writing the database) takes effect within the
//! time to live, whether it suspends, re-activates or re-keys the device (a suspended device
//! is cached too, so its refusal is as quick as an approval). A change through the operator
//! API calls [`DeviceCache::forget`] after its commit and takes effect from the next lookup: a
//! lookup that read the database before the change does not put what it read in the cache.
//! Bounded by `pipeline.device_cache_entries_max`.

use crate::store::{Device, Store};
use paygate_core::DeviceId;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct DeviceCache {
    ttl: Duration,
    entries_max: usize,
    entries: Mutex<HashMap<DeviceId, (Instant, Device)>>,
    /// Counts [`DeviceCache::forget`]s: a lookup keeps what it read only if none came between.
    forgotten: std::sync::atomic::AtomicU64,
}

impl DeviceCache {
    pub fn new(ttl_ms: u64, entries_max: usize) -> DeviceCache {
        DeviceCache {
            ttl: Duration::from_millis(ttl_ms),
            entries_max,
            entries: Mutex::new(HashMap::new()),
            forgotten: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The device as enrolled (`None`: not enrolled; never cached, so an enrolment counts at
    /// once). A database failure is its message.
    pub async fn get(&self, store: &Store, id: &DeviceId) -> Result<Option<Device>, String> {
        if let Some(device) = self.cached(id) {
            return Ok(Some(device));
        }
        let before = self.forgotten.load(std::sync::atomic::Ordering::SeqCst);
        let found = store.device(id).await.map_err(|e| e.to_string())?;
        if let Some(device) = &found {
            // a forget while the database was read may have been for this very device
            let entries = self.lock();
            if self.forgotten.load(std::sync::atomic::Ordering::SeqCst) == before {
                self.keep_locked(entries, device.clone());
            }
        }
        Ok(found)
    }

    /// Drops one device (after its enrolment, key or status changed).
    pub fn forget(&self, id: &DeviceId) {
        let mut entries = self.lock();
        self.forgotten
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        entries.remove(id);
    }

    fn cached(&self, id: &DeviceId) -> Option<Device> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.lock();
        let (at, device) = entries.get(id)?;
        (at.elapsed() < self.ttl).then(|| device.clone())
    }

    fn keep_locked(
        &self,
        mut entries: std::sync::MutexGuard<'_, HashMap<DeviceId, (Instant, Device)>>,
        device: Device,
    ) {
        if self.ttl.is_zero() {
            return;
        }
        if entries.len() >= self.entries_max {
            let ttl = self.ttl;
            entries.retain(|_, (at, _)| at.elapsed() < ttl);
            if entries.len() >= self.entries_max {
                entries.clear();
            }
        }
        entries.insert(device.device_id.clone(), (Instant::now(), device));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceId, (Instant, Device)>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
