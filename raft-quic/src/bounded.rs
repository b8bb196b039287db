//! Decoding with a budget: postcard under a serde adapter that counts the elements of every
//! variable-length sequence and map and the nesting depth, and fails as soon as either exceeds
//! its limit, before the element is decoded.
//!
//! postcard alone bounds neither: a few input bytes per element can become a large structure in
//! memory (a 16 MiB AppendEntries of blank entries is ~5.6 million `Entry` values, about half a
//! gigabyte), and a self-nesting type can be nested until the decoder overflows its stack. With
//! the budget, a decoded message holds at most [`Limits::max_items`] sequence elements next to
//! its byte strings (bounded by the input), and recursion stops at [`Limits::max_depth`].
//!
//! Fixed-size parts (struct fields, tuples, enum variants) cost nothing; only variable-length
//! collections do. serde preallocates a sequence from its announced length, which is clamped to
//! the remaining budget here.

use std::cell::Cell;
use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};

/// The budget of one decoded message (per frame, whatever its group).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The most elements of variable-length sequences and maps, all of them together.
    pub max_items: u64,
    /// The deepest nesting of sequences, maps, options, newtypes and enums.
    pub max_depth: u32,
}

/// Why a bounded decode failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BoundedError {
    /// The input is not a valid encoding.
    #[error("{0}")]
    Decode(String),
    /// The message holds more sequence elements than [`Limits::max_items`].
    #[error("the message holds more than {0} sequence elements")]
    TooManyItems(u64),
    /// The message nests deeper than [`Limits::max_depth`].
    #[error("the message nests deeper than {0} levels")]
    TooDeep(u32),
    /// The metering callback refused an element (a shared memory budget is exhausted).
    #[error("the receiver's memory budget is exhausted")]
    OverBudget,
    /// Bytes remain after the message.
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
}

/// Decodes one postcard-encoded `T` that must span all of `input`, within `limits`.
pub fn from_slice<T: DeserializeOwned>(input: &[u8], limits: Limits) -> Result<T, BoundedError> {
    from_slice_metered(input, limits, &|| true)
}

/// Like [`from_slice`], and calls `on_item` before each sequence element is decoded: it returns
/// false to stop the decode (for example when the element would not fit a memory budget shared
/// with other messages).
pub fn from_slice_metered<T: DeserializeOwned>(
    input: &[u8],
    limits: Limits,
    on_item: &dyn Fn() -> bool,
) -> Result<T, BoundedError> {
    let mut postcard = postcard::Deserializer::from_bytes(input);
    let budget = Budget {
        items: Cell::new(limits.max_items),
        depth: Cell::new(limits.max_depth),
        on_item,
        exceeded: Cell::new(None),
    };
    let decoded = T::deserialize(Bounded { inner: &mut postcard, budget: &budget });
    // postcard does not keep the message of custom errors: the budget says which it was.
    let value = match (decoded, budget.exceeded.get()) {
        (Ok(value), _) => value,
        (Err(_), Some(Exceeded::Items)) => {
            return Err(BoundedError::TooManyItems(limits.max_items))
        }
        (Err(_), Some(Exceeded::Depth)) => return Err(BoundedError::TooDeep(limits.max_depth)),
        (Err(_), Some(Exceeded::Meter)) => return Err(BoundedError::OverBudget),
        (Err(e), None) => return Err(BoundedError::Decode(e.to_string())),
    };
    let rest = postcard.finalize().map_err(|e| BoundedError::Decode(e.to_string()))?;
    if !rest.is_empty() {
        return Err(BoundedError::Trailing(rest.len()));
    }
    Ok(value)
}

/// Which limit stopped a decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exceeded {
    Items,
    Depth,
    Meter,
}

struct Budget<'m> {
    items: Cell<u64>,
    depth: Cell<u32>,
    on_item: &'m dyn Fn() -> bool,
    exceeded: Cell<Option<Exceeded>>,
}

impl Budget<'_> {
    fn exceed<E: de::Error>(&self, which: Exceeded) -> E {
        self.exceeded.set(Some(which));
        E::custom("decoding budget exceeded")
    }

    fn take_item<E: de::Error>(&self) -> Result<(), E> {
        let Some(left) = self.items.get().checked_sub(1) else {
            return Err(self.exceed(Exceeded::Items));
        };
        if !(self.on_item)() {
            return Err(self.exceed(Exceeded::Meter));
        }
        self.items.set(left);
        Ok(())
    }

    fn enter<E: de::Error>(&self) -> Result<(), E> {
        match self.depth.get().checked_sub(1) {
            Some(left) => {
                self.depth.set(left);
                Ok(())
            }
            None => Err(self.exceed(Exceeded::Depth)),
        }
    }

    fn leave(&self) {
        self.depth.set(self.depth.get().saturating_add(1));
    }

    fn clamp(&self, hint: Option<usize>) -> Option<usize> {
        let left = usize::try_from(self.items.get()).unwrap_or(usize::MAX);
        hint.map(|h| h.min(left))
    }
}

/// A deserializer under the budget.
struct Bounded<'b, D> {
    inner: D,
    budget: &'b Budget<'b>,
}

/// A visitor under the budget; `counted` says whether the collection it visits is of variable
/// length (its elements cost items).
struct Wrap<'b, V> {
    inner: V,
    budget: &'b Budget<'b>,
    counted: bool,
}

impl<'b, V> Wrap<'b, V> {
    fn new(inner: V, budget: &'b Budget<'b>, counted: bool) -> Self {
        Self { inner, budget, counted }
    }
}

macro_rules! forward_counted {
    ($($method:ident),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            self.inner.$method(Wrap::new(visitor, self.budget, true))
        }
    )*};
}

macro_rules! forward_fixed {
    ($($method:ident),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            self.inner.$method(Wrap::new(visitor, self.budget, false))
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Bounded<'_, D> {
    type Error = D::Error;

    forward_counted!(deserialize_any, deserialize_seq, deserialize_map);
    forward_fixed!(
        deserialize_bool,
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_i128,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_u128,
        deserialize_f32,
        deserialize_f64,
        deserialize_char,
        deserialize_str,
        deserialize_string,
        deserialize_bytes,
        deserialize_byte_buf,
        deserialize_option,
        deserialize_unit,
        deserialize_identifier,
        deserialize_ignored_any,
    );

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner.deserialize_unit_struct(name, Wrap::new(visitor, self.budget, false))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner.deserialize_newtype_struct(name, Wrap::new(visitor, self.budget, false))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner.deserialize_tuple(len, Wrap::new(visitor, self.budget, false))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner.deserialize_tuple_struct(name, len, Wrap::new(visitor, self.budget, false))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner.deserialize_struct(name, fields, Wrap::new(visitor, self.budget, false))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner.deserialize_enum(name, variants, Wrap::new(visitor, self.budget, false))
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

macro_rules! visit_plain {
    ($($method:ident: $ty:ty),* $(,)?) => {$(
        fn $method<E: de::Error>(self, value: $ty) -> Result<Self::Value, E> {
            self.inner.$method(value)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    visit_plain!(
        visit_bool: bool,
        visit_i8: i8,
        visit_i16: i16,
        visit_i32: i32,
        visit_i64: i64,
        visit_i128: i128,
        visit_u8: u8,
        visit_u16: u16,
        visit_u32: u32,
        visit_u64: u64,
        visit_u128: u128,
        visit_f32: f32,
        visit_f64: f64,
        visit_char: char,
        visit_str: &str,
        visit_borrowed_str: &'de str,
        visit_string: String,
        visit_bytes: &[u8],
        visit_borrowed_bytes: &'de [u8],
        visit_byte_buf: Vec<u8>,
    );

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        self.budget.enter()?;
        let value = self.inner.visit_some(Bounded { inner: deserializer, budget: self.budget });
        self.budget.leave();
        value
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        self.budget.enter()?;
        let value =
            self.inner.visit_newtype_struct(Bounded { inner: deserializer, budget: self.budget });
        self.budget.leave();
        value
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        self.budget.enter()?;
        let value =
            self.inner.visit_seq(Seq { inner: seq, budget: self.budget, counted: self.counted });
        self.budget.leave();
        value
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.budget.enter()?;
        let value =
            self.inner.visit_map(Map { inner: map, budget: self.budget, counted: self.counted });
        self.budget.leave();
        value
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        self.budget.enter()?;
        let value = self.inner.visit_enum(Enum { inner: data, budget: self.budget });
        self.budget.leave();
        value
    }
}

/// A seed under the budget.
struct Seed<'b, S> {
    inner: S,
    budget: &'b Budget<'b>,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<'_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<S::Value, D::Error> {
        self.inner.deserialize(Bounded { inner: deserializer, budget: self.budget })
    }
}

struct Seq<'b, A> {
    inner: A,
    budget: &'b Budget<'b>,
    counted: bool,
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Seq<'_, A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        if self.counted && self.inner.size_hint() != Some(0) {
            self.budget.take_item()?;
        }
        self.inner.next_element_seed(Seed { inner: seed, budget: self.budget })
    }

    fn size_hint(&self) -> Option<usize> {
        self.budget.clamp(self.inner.size_hint())
    }
}

struct Map<'b, A> {
    inner: A,
    budget: &'b Budget<'b>,
    counted: bool,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Map<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        if self.counted && self.inner.size_hint() != Some(0) {
            self.budget.take_item()?;
        }
        self.inner.next_key_seed(Seed { inner: seed, budget: self.budget })
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.inner.next_value_seed(Seed { inner: seed, budget: self.budget })
    }

    fn size_hint(&self) -> Option<usize> {
        self.budget.clamp(self.inner.size_hint())
    }
}

struct Enum<'b, A> {
    inner: A,
    budget: &'b Budget<'b>,
}

impl<'de, 'b, A: EnumAccess<'de>> EnumAccess<'de> for Enum<'b, A> {
    type Error = A::Error;
    type Variant = Variant<'b, A::Variant>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self::Variant), A::Error> {
        let (value, variant) =
            self.inner.variant_seed(Seed { inner: seed, budget: self.budget })?;
        Ok((value, Variant { inner: variant, budget: self.budget }))
    }
}

struct Variant<'b, A> {
    inner: A,
    budget: &'b Budget<'b>,
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Variant<'_, A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, A::Error> {
        self.inner.newtype_variant_seed(Seed { inner: seed, budget: self.budget })
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.inner.tuple_variant(len, Wrap::new(visitor, self.budget, false))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.inner.struct_variant(fields, Wrap::new(visitor, self.budget, false))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Nest {
        Leaf(u8),
        Inner(Box<Nest>),
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Message {
        id: u64,
        items: Vec<(u32, Option<String>)>,
        map: BTreeMap<u8, Vec<u8>>,
        bytes: bytes::Bytes,
    }

    const ROOMY: Limits = Limits { max_items: 1000, max_depth: 16 };

    #[test]
    fn decodes_what_postcard_decodes_within_the_budget() {
        let message = Message {
            id: 7,
            items: vec![(1, None), (2, Some("two".into()))],
            map: [(1, vec![1, 2, 3]), (2, vec![])].into_iter().collect(),
            bytes: bytes::Bytes::from_static(b"payload"),
        };
        let encoded = postcard::to_stdvec(&message).unwrap();
        assert_eq!(from_slice::<Message>(&encoded, ROOMY).unwrap(), message);
        // 2 items + 2 map entries + 3 elements of the first vector = 7.
        let exact = Limits { max_items: 7, ..ROOMY };
        assert_eq!(from_slice::<Message>(&encoded, exact).unwrap(), message);
        let short = Limits { max_items: 6, ..ROOMY };
        assert!(from_slice::<Message>(&encoded, short).is_err());
        let mut trailing = encoded.clone();
        trailing.push(0);
        assert_eq!(from_slice::<Message>(&trailing, ROOMY), Err(BoundedError::Trailing(1)));
    }

    #[test]
    fn announced_lengths_do_not_allocate_and_long_sequences_stop_early() {
        // A vector announcing u32::MAX elements with a handful of bytes behind it.
        let mut input = vec![0xff, 0xff, 0xff, 0xff, 0x0f];
        input.extend([0u8; 16]);
        assert!(from_slice::<Vec<u64>>(&input, ROOMY).is_err());
        // 100,000 one-byte elements stop after the budget.
        let many =
            postcard::to_stdvec(&vec![0u8; 100_000].into_iter().map(u64::from).collect::<Vec<_>>())
                .unwrap();
        assert_eq!(from_slice::<Vec<u64>>(&many, ROOMY), Err(BoundedError::TooManyItems(1000)));
    }

    #[test]
    fn deep_nesting_is_refused_before_the_stack_runs_out() {
        let mut nest = Nest::Leaf(1);
        for _ in 0..10 {
            nest = Nest::Inner(Box::new(nest));
        }
        let encoded = postcard::to_stdvec(&nest).unwrap();
        assert_eq!(from_slice::<Nest>(&encoded, ROOMY).unwrap(), nest);
        assert!(from_slice::<Nest>(&encoded, Limits { max_depth: 8, ..ROOMY }).is_err());
        // A million levels of `Inner` (one byte each): refused at once, no stack overflow.
        let mut deep = vec![1u8; 1_000_000];
        deep.extend([0, 1]);
        assert_eq!(from_slice::<Nest>(&deep, ROOMY), Err(BoundedError::TooDeep(16)));
        // A metering callback that refuses stops the decode too.
        let two = postcard::to_stdvec(&vec![1u64, 2]).unwrap();
        let metered = from_slice_metered::<Vec<u64>>(&two, ROOMY, &|| false);
        assert_eq!(metered, Err(BoundedError::OverBudget));
    }
}
