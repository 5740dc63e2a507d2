//! Enrolled devices, cached: verification looks a device up once per
//! `pipeline.device_cache_ttl_ms` instead of once per request. A change made by another process
//! (the CLI writing the database) takes effect within the
//! time to live, whether it suspends, re-activates or re-keys the device (a suspended device
//! is cached too, so its refusal is as quick as an approval). Today every change of a device
//! is made by another process (the CLI); the operator API will call [`DeviceCache::forget`].
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
}

impl DeviceCache {
    pub fn new(ttl_ms: u64, entries_max: usize) -> DeviceCache {
        DeviceCache {
            ttl: Duration::from_millis(ttl_ms),
            entries_max,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The device as enrolled (`None`: not enrolled; never cached, so an enrolment counts at
    /// once). A database failure is its message.
    pub async fn get(&self, store: &Store, id: &DeviceId) -> Result<Option<Device>, String> {
        if let Some(device) = self.cached(id) {
            return Ok(Some(device));
        }
        let found = store.device(id).await.map_err(|e| e.to_string())?;
        if let Some(device) = &found {
            self.keep(device.clone());
        }
        Ok(found)
    }

    /// Drops one device (after its enrolment, key or status changed).
    pub fn forget(&self, id: &DeviceId) {
        self.lock().remove(id);
    }

    fn cached(&self, id: &DeviceId) -> Option<Device> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.lock();
        let (at, device) = entries.get(id)?;
        (at.elapsed() < self.ttl).then(|| device.clone())
    }

    fn keep(&self, device: Device) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.lock();
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
