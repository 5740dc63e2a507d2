//! Newtypes for identifiers. Each validates its text once, at the edge, so the rest of the
//! code can rely on the charset (device ids end up in MQTT topics and client ids).

use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{kind} must be 1 to {length_max} characters of [A-Za-z0-9._-] starting with a letter or digit"
)]
pub struct IdError {
    pub kind: &'static str,
    pub length_max: usize,
}

fn is_valid_id(text: &str, length_max: usize) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= length_max
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !text.contains("..")
}

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident, $kind:literal, $length_max:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const LENGTH_MAX: usize = $length_max;

            pub fn parse(text: &str) -> Result<Self, IdError> {
                if is_valid_id(text, $length_max) {
                    Ok(Self(text.to_owned()))
                } else {
                    Err(IdError { kind: $kind, length_max: $length_max })
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                Self::parse(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// A device (POS terminal or wallet client). Also its MQTT client id and topic segment.
    DeviceId, "device id", 64
);
id_type!(
    /// A ledger account: a wallet, a merchant, a settlement or liability account.
    AccountId, "account id", 64
);
id_type!(
    /// Chosen by the device for one logical transaction; retries reuse it.
    IdempotencyKey, "idempotency key", 64
);
id_type!(
    /// A posted transfer, assigned by the gateway.
    TxId, "transaction id", 64
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_refuse_what_would_break_topics_or_the_broker() {
        for bad in [
            "", "a/b", "a+b", "a#", "$sys", "a b", "a\0b", "..", "a..b", "-lead", "é",
        ] {
            assert!(DeviceId::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(DeviceId::parse(&"a".repeat(65)).is_err());
        for good in ["pos-0001", "wallet_7", "A.b-c_d", &"a".repeat(64)] {
            assert_eq!(
                DeviceId::parse(good).map(|id| id.to_string()),
                Ok(good.to_string())
            );
        }
    }
}
