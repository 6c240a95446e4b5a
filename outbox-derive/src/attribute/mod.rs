//! `#[outbox_event]`: parse the arguments, validate the function, expand the recording step.

mod args;
mod expand;

use proc_macro2::TokenStream;
use quote::ToTokens;

use crate::errors::Errors;
use crate::signature::{self, Rules};

const RULES: Rules = Rules {
    name: "#[outbox_event]",
    writes: "the outbox row",
    not_result: "`#[outbox_event]` records the entity of an `Ok` and nothing on an `Err`, so the \
                 function must return `Result<Entity, YourError>` (with \
                 `YourError: From<outbox::Error>`)",
    returns_nothing: "`#[outbox_event]` records the entity the function returns, but this one \
                      returns nothing: return `Result<Entity, YourError>` (with \
                      `YourError: From<outbox::Error>`)",
};

pub(crate) fn outbox_event(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = match args::parse(args) {
        Ok(args) => Some(args),
        Err(error) => {
            errors.push(error);
            None
        }
    };
    let function = match syn::parse2::<syn::Item>(item.clone()) {
        Ok(syn::Item::Fn(function)) => function,
        Ok(other) => {
            errors.spanned(
                item_head(&other),
                "`#[outbox_event]` goes on an `async fn` that takes the transaction and returns \
                 `Result<Entity, Error>`; on anything else it has nothing to record",
            );
            return with_errors(errors, item);
        }
        // Not an item we understand (a bodiless trait method, ...): let rustc report it as usual.
        Err(error) => {
            errors.push(error);
            return with_errors(errors, item);
        }
    };
    let checked = signature::validate(&function, &RULES);
    let (args, signature) = match (args, checked) {
        (Some(args), Ok(signature)) => (args, signature),
        (_, Err(error)) => {
            errors.push(error);
            return with_errors(errors, item);
        }
        (None, Ok(_)) => return with_errors(errors, item),
    };
    expand::expand(&function, &args, &signature)
}

/// The item unchanged, plus the errors: the rest of the user's code still compiles, so they
/// see our errors and not a cascade of "cannot find function".
pub(crate) fn with_errors(errors: Errors, item: TokenStream) -> TokenStream {
    match errors.finish(()) {
        Ok(()) => item,
        Err(error) => {
            let mut out = error.to_compile_error();
            out.extend(item);
            out
        }
    }
}

/// The tokens that introduce an item (`struct Name`, `impl Trait for T`, ...), for spans.
pub(crate) fn item_head(item: &syn::Item) -> TokenStream {
    match item {
        syn::Item::Struct(s) => {
            let (k, i) = (&s.struct_token, &s.ident);
            quote::quote!(#k #i)
        }
        syn::Item::Enum(e) => {
            let (k, i) = (&e.enum_token, &e.ident);
            quote::quote!(#k #i)
        }
        syn::Item::Impl(i) => {
            let (k, t) = (&i.impl_token, &i.self_ty);
            quote::quote!(#k #t)
        }
        syn::Item::Mod(m) => {
            let (k, i) = (&m.mod_token, &m.ident);
            quote::quote!(#k #i)
        }
        syn::Item::Trait(t) => {
            let (k, i) = (&t.trait_token, &t.ident);
            quote::quote!(#k #i)
        }
        other => other.to_token_stream(),
    }
}
