//! The MQTT topic scheme. A device publishes requests on its own request topic and
//! subscribes to its own reply topic; nothing else is open to it.
//!
//! ```text
//! paygate/v1/devices/{device_id}/requests   device -> gateway (signed requests)
//! paygate/v1/devices/{device_id}/replies    gateway -> device (signed receipts and notices)
//! ```

use crate::ids::DeviceId;

pub const PREFIX: &str = "paygate/v1/devices/";
pub const REQUESTS_SUFFIX: &str = "/requests";
pub const REPLIES_SUFFIX: &str = "/replies";

/// The filter the gateway's pipeline subscribes to.
pub const ALL_REQUESTS_FILTER: &str = "paygate/v1/devices/+/requests";

pub fn requests_topic(device: &DeviceId) -> String {
    format!("{PREFIX}{device}{REQUESTS_SUFFIX}")
}

pub fn replies_topic(device: &DeviceId) -> String {
    format!("{PREFIX}{device}{REPLIES_SUFFIX}")
}

/// The device whose request topic this is, if it is one.
pub fn device_of_requests_topic(topic: &str) -> Option<DeviceId> {
    let device = topic.strip_prefix(PREFIX)?.strip_suffix(REQUESTS_SUFFIX)?;
    DeviceId::parse(device).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_topics_name_exactly_one_valid_device() {
        let device = DeviceId::parse("pos-1").expect("valid");
        assert_eq!(
            device_of_requests_topic(&requests_topic(&device)),
            Some(device.clone())
        );
        for bad in [
            "paygate/v1/devices/+/requests",
            "paygate/v1/devices/a/b/requests",
            "paygate/v1/devices//requests",
            "paygate/v1/devices/pos-1/replies",
            "x/paygate/v1/devices/pos-1/requests",
        ] {
            assert_eq!(device_of_requests_topic(bad), None, "{bad}");
        }
    }
}
