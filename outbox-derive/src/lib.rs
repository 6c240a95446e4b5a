//! Procedural macros of [outbox](https://docs.rs/outbox): `#[outbox_event]`,
//! `#[inbox_handler]` and `#[derive(OutboxEvent)]`. Depend on `outbox`, which re-exports them; the generated code
//! names everything through `::outbox`.
//!
//! Each macro is three stages, one module each: *parse* the arguments into a typed struct,
//! *validate* the item against the rules (collecting every error, each spanned on the tokens at
//! fault), *expand* into tokens.
#![deny(missing_docs)]

mod attribute;
pub(crate) mod derive;
mod errors;
mod inbox;
mod signature;

use proc_macro::TokenStream;

/// Records the entity returned by an async service function in the outbox, through the
/// function's own transaction. Documented on `outbox::outbox_event`.
#[proc_macro_attribute]
pub fn outbox_event(args: TokenStream, item: TokenStream) -> TokenStream {
    attribute::outbox_event(args.into(), item.into()).into()
}

/// Processes a message exactly once: records its id in the inbox through the handler's
/// transaction before the body runs. Documented on `outbox::inbox_handler`.
#[proc_macro_attribute]
pub fn inbox_handler(args: TokenStream, item: TokenStream) -> TokenStream {
    inbox::inbox_handler(args.into(), item.into()).into()
}

/// Implements `outbox::OutboxEvent`. Documented on `outbox::OutboxEvent`.
#[proc_macro_derive(OutboxEvent, attributes(outbox))]
pub fn derive_outbox_event(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    derive::outbox_event(input).into()
}
