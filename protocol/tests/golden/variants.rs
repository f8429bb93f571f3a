//! Which variants an enum has, and which variant a value is, read through serde: the golden tests
//! check that every variant has a vector without a `match` (which `#[non_exhaustive]` forbids
//! outside the defining crate), so a new variant without one fails the test by name.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use serde::de::{DeserializeOwned, Visitor};
use serde::{Deserializer, Serialize};

/// A deserializer that only records the variant list serde's derive hands to `deserialize_enum`
/// (all of them, in declaration order), then refuses.
struct VariantNames<'a>(&'a mut Option<&'static [&'static str]>);

impl<'de> Deserializer<'de> for VariantNames<'_> {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(serde::de::Error::custom("not an enum"))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = Some(variants);
        Err(serde::de::Error::custom("only the names were asked for"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct identifier
        ignored_any
    }
}

/// Every variant name of the enum `T`, as it travels (serde's externally tagged name).
pub fn of<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut names = None;
    let _ = T::deserialize(VariantNames(&mut names));
    names.expect("the type is an enum deriving Deserialize")
}

/// The variant name `value` travels under: a unit variant is its name, any other a one-entry map
/// from its name.
pub fn name_of<T: Serialize>(value: &T) -> String {
    match ciborium::Value::serialized(value).expect("serializable") {
        ciborium::Value::Text(name) => name,
        ciborium::Value::Map(entries) => match entries.first() {
            Some((ciborium::Value::Text(name), _)) if entries.len() == 1 => name.clone(),
            _ => panic!("not an externally tagged enum value"),
        },
        _ => panic!("not an externally tagged enum value"),
    }
}
