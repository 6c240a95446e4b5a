//! Helpers for the code the macros generate. Not public API: no stability promises.

use std::fmt::Display;
use std::future::Future;

use crate::{OutboxConnection, OutboxEvent};

pub use inventory;

/// Pins the output type of the wrapped function body, so that `?` inside it knows which error
/// type to convert into.
#[inline(always)]
pub fn body<R, F: Future<Output = R>>(future: F) -> F {
    future
}

/// Asserts at compile time that `C` is a transaction; errors carry the trait's explanation.
#[inline(always)]
pub fn assert_transaction<C: OutboxConnection + ?Sized>() {}

/// Asserts at compile time that the returned entity can be serialized.
#[inline(always)]
pub fn assert_serialize<T: serde::Serialize + ?Sized>(_: &T) {}

/// Asserts at compile time that the error type converts from the outbox error.
#[inline(always)]
pub fn assert_error_converts<E: From<crate::Error>>() {}

/// The derive's metadata of the entity, for arguments the attribute leaves out.
#[inline(always)]
pub fn aggregate_type_of<T: OutboxEvent + ?Sized>(_: &T) -> &'static str {
    T::AGGREGATE_TYPE
}

/// See [`aggregate_type_of`].
#[inline(always)]
pub fn event_type_of<T: OutboxEvent + ?Sized>(_: &T) -> &'static str {
    T::EVENT_TYPE
}

/// See [`aggregate_type_of`].
#[inline(always)]
pub fn aggregate_id_of<T: OutboxEvent + ?Sized>(entity: &T) -> Option<String> {
    entity.aggregate_id()
}

/// Calls the `aggregate_id = |entity| ...` closure with its parameter type known.
#[inline(always)]
pub fn apply<'a, T: ?Sized, R, F: FnOnce(&'a T) -> R>(entity: &'a T, f: F) -> R {
    f(entity)
}

/// Turns an aggregate id value into `Option<String>`: `Option<impl Display>` maps, any other
/// `Display` value is `Some`. Called as `(&IdProbe(&value)).__outbox_aggregate_id()` with both
/// traits in scope; method resolution picks the `Option` impl first when it applies.
#[derive(Debug)]
pub struct IdProbe<'a, T: ?Sized>(pub &'a T);

/// `Option<impl Display>` ids; `None` means "not persisted yet".
pub trait OptionalId {
    /// The id, or `None`.
    fn __outbox_aggregate_id(&self) -> Option<String>;
}

impl<T: Display> OptionalId for IdProbe<'_, Option<T>> {
    fn __outbox_aggregate_id(&self) -> Option<String> {
        self.0.as_ref().map(ToString::to_string)
    }
}

/// Plain `Display` ids.
pub trait PresentId {
    /// The id.
    fn __outbox_aggregate_id(&self) -> Option<String>;
}

impl<T: Display + ?Sized> PresentId for &IdProbe<'_, T> {
    fn __outbox_aggregate_id(&self) -> Option<String> {
        Some(self.0.to_string())
    }
}
