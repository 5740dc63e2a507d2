//! Strict JSON decoding: serde_json keeps the last of duplicate object keys when it fills a
//! map, and a signed payload with two `amount` keys must never mean whatever one parser
//! picks. [`reject_duplicate_keys`] walks the document once and refuses any object with a
//! repeated key, at any depth, before the typed decode runs.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::collections::HashSet;
use std::fmt;

/// Nesting deeper than this is refused (requests are shallow; this bounds recursion).
pub const DEPTH_MAX: usize = 16;

struct Walk {
    depth: usize,
}

impl<'de> de::DeserializeSeed<'de> for Walk {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let depth = self.depth + 1;
        if depth > DEPTH_MAX {
            return Err(de::Error::custom("nesting too deep"));
        }
        while seq.next_element_seed(Walk { depth })?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let depth = self.depth + 1;
        if depth > DEPTH_MAX {
            return Err(de::Error::custom("nesting too deep"));
        }
        let mut keys = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !keys.insert(key.clone()) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
            map.next_value_seed(Walk { depth })?;
        }
        Ok(())
    }
}

struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(Walk { depth: 0 })?;
        Ok(Checked)
    }
}

/// Refuses a document that is not JSON or holds an object with a repeated key.
pub fn reject_duplicate_keys(bytes: &[u8]) -> Result<(), serde_json::Error> {
    serde_json::from_slice::<Checked>(bytes).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_duplicates_at_any_depth() {
        assert!(reject_duplicate_keys(br#"{"a":1,"b":{"c":2,"d":[{"e":1}]}}"#).is_ok());
        assert!(reject_duplicate_keys(br#"{"a":1,"a":2}"#).is_err());
        assert!(reject_duplicate_keys(br#"{"a":{"b":1,"b":1}}"#).is_err());
        assert!(reject_duplicate_keys(br#"[{"x":1},{"x":1,"x":2}]"#).is_err());
        assert!(reject_duplicate_keys(br#"{"a":1"#).is_err());
        let deep = "[".repeat(DEPTH_MAX + 1) + &"]".repeat(DEPTH_MAX + 1);
        assert!(reject_duplicate_keys(deep.as_bytes()).is_err());
    }
}
