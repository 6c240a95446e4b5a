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
    quote! {
        impl #impl_generics ::outbox::OutboxEvent for #ident #ty_generics #where_clause {
            const AGGREGATE_TYPE: &'static str = #aggregate_type;
            const EVENT_TYPE: &'static str = #event_type;
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
