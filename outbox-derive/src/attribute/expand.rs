//! The expansion: the user's body runs unchanged in an inner `async` block; on `Ok(entity)` the
//! entity is recorded through the transaction parameter before it is returned.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::{ItemFn, Type};

use super::args::Args;
use crate::signature::Signature;

pub(crate) fn expand(function: &ItemFn, args: &Args, signature: &Signature<'_>) -> TokenStream {
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = function;
    let output = match &sig.output {
        syn::ReturnType::Type(_, ty) => ty,
        syn::ReturnType::Default => unreachable!("validated: the function returns a Result"),
    };
    let tx = signature.transaction.ident;
    let connection = signature.transaction.connection;
    let entity_ty = signature.entity;
    let entity = format_ident!("__outbox_entity");
    // `E::from`, checked at `E` when the signature names it; inferred from the return type when
    // an alias (`anyhow::Result<T>`) hides it.
    let convert = match signature.error {
        Some(error) => {
            quote_spanned!(error.span()=> ::outbox::__private::into_error::<#error>)
        }
        None => quote!(::core::convert::From::from),
    };

    // Every bound is checked at the user's span, the same span for the same bound, so that a
    // mistake is reported once, at the token the user wrote.
    let assert_tx = quote_spanned! {connection.span()=>
        ::outbox::__private::assert_transaction::<#connection>();
    };
    let borrow = if signature.transaction.by_reference {
        quote!(&mut *#tx)
    } else {
        quote!(&mut #tx)
    };
    let conn = quote_spanned!(connection.span()=> __outbox_conn);
    let outbox = match &args.outbox {
        Some(outbox) => quote!(&#outbox),
        None => quote!(&::outbox::Outbox::DEFAULT),
    };
    let event = if args.overrides_metadata() {
        let event = event_expr(args, entity_ty, &entity, &convert);
        quote!(&#event)
    } else {
        quote_spanned!(entity_ty.span()=> ::outbox::__private::derived_event(&#entity))
    };
    // `delay`: the event wrapped with its schedule, from a value or a closure over the entity.
    let event = match &args.delay {
        None => event,
        Some(delay) => {
            let value = match delay {
                syn::Expr::Closure(closure) => {
                    quote_spanned!(closure.span()=> ::outbox::__private::apply(&#entity, #closure))
                }
                value => quote!(#value),
            };
            quote_spanned! {delay.span()=>
                &::outbox::__private::Delayed::new(#event, ::outbox::__private::schedule(#value))
            }
        }
    };
    let recorded = quote_spanned! {connection.span()=>
        ::outbox::__private::record(#outbox, #conn, __outbox_event).await
    };
    let record = quote! {
        let __outbox_event = #event;
        let #conn = #borrow;
        if let ::core::result::Result::Err(error) = #recorded {
            return ::core::result::Result::Err(#convert(error));
        }
    };
    let register = registration(function, args, entity_ty);
    let (outer, inner) = crate::signature::split_attributes(attrs);

    quote! {
        #(#outer)*
        #vis #sig {
            #(#inner)*
            #register
            #assert_tx
            let __outbox_result = ::outbox::__private::body::<#output, _>(async #block).await;
            let #entity = match __outbox_result {
                ::core::result::Result::Ok(entity) => entity,
                ::core::result::Result::Err(error) => return ::core::result::Result::Err(error),
            };
            #record
            ::core::result::Result::Ok(#entity)
        }
    }
}

/// The `Event` built from the arguments, with the derive's metadata for what they leave out.
fn event_expr(
    args: &Args,
    entity_ty: &Type,
    entity: &syn::Ident,
    convert: &TokenStream,
) -> TokenStream {
    let aggregate_type = match &args.aggregate_type {
        Some(lit) => quote!(#lit),
        None => {
            quote_spanned!(entity_ty.span()=> ::outbox::__private::aggregate_type_of(&#entity))
        }
    };
    let event_type = match &args.event_type {
        Some(lit) => quote!(#lit),
        None => {
            quote_spanned!(entity_ty.span()=> ::outbox::__private::event_type_of(&#entity))
        }
    };
    let aggregate_id = match &args.aggregate_id {
        Some(closure) => {
            let body = &closure.body;
            quote_spanned! {body.span()=> {
                #[allow(unused_imports)]
                use ::outbox::__private::{OptionalId as _, PresentId as _};
                let __outbox_id = ::outbox::__private::apply(&#entity, #closure);
                (&::outbox::__private::IdProbe(&__outbox_id)).__outbox_aggregate_id()
            }}
        }
        None => {
            quote_spanned!(entity_ty.span()=> ::outbox::__private::aggregate_id_of(&#entity))
        }
    };
    // Serialization happens here; a type that is not `Serialize` is reported at `T`.
    let build = quote_spanned! {entity_ty.span()=>
        ::outbox::Event::with_id_string(#aggregate_type, #event_type, #aggregate_id, &#entity)
    };
    // The derive's version goes with the derive's event type, not with one the arguments name.
    let build = if args.aggregate_type.is_none() && args.event_type.is_none() {
        quote_spanned! {entity_ty.span()=>
            ::core::result::Result::map(#build, |event| {
                ::outbox::__private::with_version_of(event, &#entity)
            })
        }
    } else {
        build
    };
    quote! {
        match #build {
            ::core::result::Result::Ok(event) => event,
            ::core::result::Result::Err(error) => return ::core::result::Result::Err(#convert(error)),
        }
    }
}

/// Submits the function's descriptor to the registry. The descriptor is a `static`, which cannot
/// name `Self` or the function's generics: when the entity type mentions them and the arguments
/// do not give both names, the function is not registered (its entity type still is, by its
/// derive).
fn registration(function: &ItemFn, args: &Args, entity_ty: &Type) -> Option<TokenStream> {
    let name = function.sig.ident.to_string();
    let nameable = || is_nameable_from_static(entity_ty, &function.sig.generics);
    let aggregate_type = match &args.aggregate_type {
        Some(lit) => quote!(#lit),
        None if nameable() => {
            quote_spanned!(entity_ty.span()=> <#entity_ty as ::outbox::OutboxEvent>::AGGREGATE_TYPE)
        }
        None => return None,
    };
    let event_type = match &args.event_type {
        Some(lit) => quote!(#lit),
        None if nameable() => {
            quote_spanned!(entity_ty.span()=> <#entity_ty as ::outbox::OutboxEvent>::EVENT_TYPE)
        }
        None => return None,
    };
    let derived_type = args.aggregate_type.is_none() && args.event_type.is_none();
    let version = if derived_type {
        quote_spanned!(entity_ty.span()=> <#entity_ty as ::outbox::OutboxEvent>::VERSION)
    } else {
        quote!(::core::option::Option::None)
    };
    let schema = if nameable() {
        crate::derive::expand::with_schema(entity_ty)
    } else {
        quote!()
    };
    Some(quote! {
        ::outbox::__private::inventory::submit! {
            ::outbox::EventDescriptor::__new(
                #aggregate_type,
                #event_type,
                ::core::module_path!(),
                ::outbox::Origin::Function { name: #name },
            )
            .__with_version(#version)
            #schema
        }
    })
}

/// False when `ty` mentions `Self`, `impl Trait`, `_` or a generic parameter of the function.
fn is_nameable_from_static(ty: &Type, generics: &syn::Generics) -> bool {
    struct Finder<'a> {
        generics: &'a syn::Generics,
        found: bool,
    }
    impl<'ast> Visit<'ast> for Finder<'_> {
        fn visit_ident(&mut self, ident: &'ast syn::Ident) {
            if ident == "Self"
                || self.generics.type_params().any(|p| p.ident == *ident)
                || self.generics.const_params().any(|p| p.ident == *ident)
            {
                self.found = true;
            }
        }
        fn visit_lifetime(&mut self, lifetime: &'ast syn::Lifetime) {
            if self.generics.lifetimes().any(|l| l.lifetime == *lifetime) {
                self.found = true;
            }
        }
        fn visit_type_impl_trait(&mut self, _: &'ast syn::TypeImplTrait) {
            self.found = true;
        }
        fn visit_type_infer(&mut self, _: &'ast syn::TypeInfer) {
            self.found = true;
        }
    }
    let mut finder = Finder {
        generics,
        found: false,
    };
    finder.visit_type(ty);
    !finder.found
}
