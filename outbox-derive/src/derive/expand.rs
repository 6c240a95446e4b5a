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
    // Spanned at the field's type: a type that is neither `Display` nor `Option<impl Display>`
    // is reported there.
    let aggregate_id = quote_spanned! {id_field.ty.span()=>
        (&::outbox_core::__private::IdProbe(&self.#field)).__outbox_aggregate_id()
    };
    quote! {
        impl #impl_generics ::outbox_core::OutboxEvent for #ident #ty_generics #where_clause {
            const AGGREGATE_TYPE: &'static str = #aggregate_type;
            const EVENT_TYPE: &'static str = #event_type;
            fn aggregate_id(&self) -> ::core::option::Option<::std::string::String> {
                #[allow(unused_imports)]
                use ::outbox_core::__private::{OptionalId as _, PresentId as _};
                #aggregate_id
            }
        }

        ::outbox_core::__private::inventory::submit! {
            ::outbox_core::EventDescriptor::__new(
                #aggregate_type,
                #event_type,
                ::core::module_path!(),
                ::outbox_core::Origin::Type { name: #name },
            )
        }
    }
}
