//! The derive's expansion: the `OutboxEvent` impl and the registry entry.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::DeriveInput;
use syn::spanned::Spanned;

use super::input::Event;

pub(crate) fn expand(input: &DeriveInput, event: &Event<'_>) -> TokenStream {
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let Event {
        aggregate_type,
        event_type,
        version,
        id_field,
    } = event;
    let field = id_field.ident.as_ref();
    let name = ident.to_string();
    // Spanned at the field's type: a type that is not `Display` is reported there, once.
    let aggregate_id = match option_inner(&id_field.ty) {
        Some(inner) => quote_spanned! {inner.span()=>
            ::core::option::Option::map(
                ::core::option::Option::as_ref(&self.#field),
                ::outbox::__private::id_to_string::<#inner>,
            )
        },
        None => {
            let ty = &id_field.ty;
            quote_spanned! {ty.span()=>
                ::core::option::Option::Some(::outbox::__private::id_to_string::<#ty>(&self.#field))
            }
        }
    };
    let version = match version {
        Some(lit) => quote!(::core::option::Option::Some(#lit)),
        None => quote!(::core::option::Option::None),
    };
    // A generic type has no one schema: only a plain type's is probed for the catalog.
    let schema = if input.generics.params.is_empty() {
        with_schema(ident)
    } else {
        quote!()
    };
    quote! {
        impl #impl_generics ::outbox::OutboxEvent for #ident #ty_generics #where_clause {
            const AGGREGATE_TYPE: &'static str = #aggregate_type;
            const EVENT_TYPE: &'static str = #event_type;
            const VERSION: ::core::option::Option<u32> = #version;
            fn aggregate_id(&self) -> ::core::option::Option<::std::string::String> {
                #aggregate_id
            }
        }

        ::outbox::__private::inventory::submit! {
            ::outbox::EventDescriptor::__new(
                #aggregate_type,
                #event_type,
                ::core::module_path!(),
                ::outbox::Origin::Type { name: #name },
            )
            .__with_version(#version)
            #schema
        }
    }
}

/// After a mistake in the attributes: an `OutboxEvent` impl that is never called, so that the
/// struct's uses (`record(&mut tx, &entity)`, `#[outbox_event]` functions returning it) do not
/// each report the missing impl on top of the one error that says what to fix (as thiserror
/// does). It applies only if the type is `Serialize`, so it adds no error of its own; the bound
/// is higher-ranked so that the compiler defers it instead of rejecting a non-generic type that
/// is not `Serialize` at the impl.
pub(crate) fn fallback(input: &DeriveInput) -> TokenStream {
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let predicates = where_clause
        .into_iter()
        .flat_map(|clause| clause.predicates.iter());
    quote! {
        impl #impl_generics ::outbox::OutboxEvent for #ident #ty_generics
        where
            #(#predicates,)*
            for<'__outbox> Self: ::outbox::__private::Serialize,
        {
            const AGGREGATE_TYPE: &'static str = "";
            const EVENT_TYPE: &'static str = "";
            fn aggregate_id(&self) -> ::core::option::Option<::std::string::String> {
                ::core::unreachable!("the OutboxEvent derive failed to compile")
            }
        }
    }
}

/// `T` of a field type written `Option<T>` (or `std::option::Option<T>`): `None` means "not
/// persisted yet". An alias of `Option` is not recognised, and is reported as not `Display`.
fn option_inner(ty: &syn::Type) -> Option<&syn::Type> {
    let syn::Type::Path(syn::TypePath { qself: None, path }) = ty else {
        return None;
    };
    let last = path.segments.last()?;
    if last.ident != "Option" {
        return None;
    }
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.iter().collect::<Vec<_>>().as_slice() {
        [syn::GenericArgument::Type(inner)] => Some(inner),
        _ => None,
    }
}

/// The registry entry's `.__with_schema(...)`: the payload schema of `ty` when it derives
/// `schemars::JsonSchema` (found by auto-ref at expansion, `None` otherwise).
pub(crate) fn with_schema(ty: impl quote::ToTokens) -> TokenStream {
    quote! {
        .__with_schema({
            fn __outbox_schema() -> ::core::option::Option<::outbox::__private::PayloadSchema> {
                #[allow(unused_imports)]
                use ::outbox::__private::{HasSchema as _, NoSchema as _};
                (&::outbox::__private::SchemaProbe::<#ty>::new()).__outbox_schema()
            }
            __outbox_schema
        })
    }
}
