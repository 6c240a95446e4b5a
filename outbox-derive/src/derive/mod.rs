//! `#[derive(OutboxEvent)]`: parse and validate the `#[outbox(...)]` attributes, then expand.

pub(crate) mod expand;
mod input;

use proc_macro2::TokenStream;

pub(crate) fn outbox_event(input: syn::DeriveInput) -> TokenStream {
    match input::Event::parse(&input) {
        Ok(event) => expand::expand(&input, &event),
        Err(error) => {
            let mut out = error.to_compile_error();
            out.extend(expand::fallback(&input));
            out
        }
    }
}
