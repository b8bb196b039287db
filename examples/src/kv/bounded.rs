//! [`Bounded`]: a list whose length is checked against a limit before any item is decoded.
//!
//! `postcard` (like serde's `Vec`) decodes every item a length prefix announces before the
//! caller can look at the length, so a frame of one-byte items turns into a much larger vector.
//! `Bounded` refuses a prefix above its limit before decoding the first item, and never
//! reserves more than the limit.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, Error as _, SeqAccess, Visitor};
use serde::{Serialize, Serializer};

/// At most `MAX` items of `T`. Encodes exactly as a `Vec<T>`; decoding checks the announced
/// length against `MAX` first.
#[derive(Clone, PartialEq, Eq)]
pub struct Bounded<T, const MAX: usize>(Vec<T>);

/// Why a [`Bounded`] could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{len} items exceed the limit of {max}")]
pub struct TooMany {
    /// The number of items offered.
    pub len: usize,
    /// The limit.
    pub max: usize,
}

impl<T, const MAX: usize> Bounded<T, MAX> {
    /// The items, if there are at most `MAX`.
    pub fn new(items: Vec<T>) -> Result<Self, TooMany> {
        if items.len() > MAX {
            return Err(TooMany { len: items.len(), max: MAX });
        }
        Ok(Self(items))
    }

    /// The first `MAX` of the items (all if there are at most `MAX`).
    pub fn truncated(mut items: Vec<T>) -> Self {
        items.truncate(MAX);
        Self(items)
    }

    /// The items.
    pub fn into_inner(self) -> Vec<T> {
        self.0
    }

    /// The number of items.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no items.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<T, const MAX: usize> std::ops::Deref for Bounded<T, MAX> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        &self.0
    }
}

impl<'a, T, const MAX: usize> IntoIterator for &'a Bounded<T, MAX> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<T: fmt::Debug, const MAX: usize> fmt::Debug for Bounded<T, MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<T: Serialize, const MAX: usize> Serialize for Bounded<T, MAX> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

struct BoundedVisitor<T, const MAX: usize>(PhantomData<T>);

impl<'de, T: Deserialize<'de>, const MAX: usize> Visitor<'de> for BoundedVisitor<T, MAX> {
    type Value = Bounded<T, MAX>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a sequence of at most {MAX} items")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        // postcard announces the exact length: refuse it before decoding anything.
        let announced = seq.size_hint().unwrap_or(0);
        if announced > MAX {
            return Err(A::Error::invalid_length(announced, &self));
        }
        let mut items = Vec::with_capacity(announced);
        while let Some(item) = seq.next_element()? {
            if items.len() == MAX {
                return Err(A::Error::invalid_length(MAX + 1, &self));
            }
            items.push(item);
        }
        Ok(Bounded(items))
    }
}

impl<'de, T: Deserialize<'de>, const MAX: usize> Deserialize<'de> for Bounded<T, MAX> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(BoundedVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Counts the items decoded, to show that none is decoded past a refused length.
    #[derive(Debug, PartialEq)]
    struct Counted;

    static DECODED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    impl<'de> Deserialize<'de> for Counted {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            DECODED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            u8::deserialize(deserializer).map(|_| Counted)
        }
    }

    #[test]
    fn encodes_like_a_vec_and_refuses_long_sequences_before_decoding_them() {
        let items = vec![1u8, 2, 3];
        let bounded = Bounded::<u8, 3>::new(items.clone()).unwrap();
        let bytes = postcard::to_allocvec(&bounded).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&items).unwrap());
        assert_eq!(postcard::from_bytes::<Bounded<u8, 3>>(&bytes).unwrap(), bounded);
        assert_eq!(Bounded::<u8, 2>::new(items).unwrap_err(), TooMany { len: 3, max: 2 });

        // Two million one-byte items: refused on the length, none decoded.
        let many = postcard::to_allocvec(&vec![0u8; 2_000_000]).unwrap();
        let refused = postcard::from_bytes::<Bounded<Counted, 1024>>(&many);
        assert!(refused.is_err());
        assert_eq!(DECODED.load(std::sync::atomic::Ordering::SeqCst), 0);
        let fine = postcard::to_allocvec(&vec![0u8; 1024]).unwrap();
        assert_eq!(postcard::from_bytes::<Bounded<Counted, 1024>>(&fine).unwrap().len(), 1024);
    }
}
