//! `#[inbox_handler]`: the consumer-side mirror of `#[outbox_event]`. Before the handler's body
//! runs, the message id is recorded in the inbox through the handler's transaction; a message
//! already recorded returns `Processed::Duplicate` without running the body.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, FnArg, GenericArgument, ItemFn, LitStr, Meta, Pat, PathArguments, Token, Type};

use crate::attribute::{item_head, with_errors};
use crate::errors::{Errors, unknown_key};
use crate::signature::{self, Rules, Signature};

const RULES: Rules = Rules {
    name: "#[inbox_handler]",
    writes: "the inbox entry",
    not_result: "`#[inbox_handler]` records the message id with an `Ok` and nothing with an \
                 `Err` (so that the message is retried), so the handler must return \
                 `Result<T, YourError>` (with `YourError: From<outbox::Error>`)",
    returns_nothing: "`#[inbox_handler]` records the message id when the handler succeeds, but \
                      this one returns nothing: return `Result<(), YourError>` (with \
                      `YourError: From<outbox::Error>`)",
};

const KEYS: &[&str] = &["consumer", "inbox"];

#[derive(Default)]
struct Args {
    consumer: Option<LitStr>,
    inbox: Option<Expr>,
}

fn parse_args(tokens: TokenStream) -> syn::Result<Args> {
    let metas =
        syn::parse::Parser::parse2(Punctuated::<Meta, Token![,]>::parse_terminated, tokens)?;
    let mut args = Args::default();
    let mut errors = Errors::default();
    for meta in metas {
        let Meta::NameValue(nv) = meta else {
            errors.spanned(
                &meta,
                "expected `key = value` arguments: `consumer = \"read-model\"`, `inbox = MY_INBOX`",
            );
            continue;
        };
        let key = nv
            .path
            .get_ident()
            .map(ToString::to_string)
            .unwrap_or_default();
        match (key.as_str(), nv.value) {
            (
                "consumer",
                Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(lit),
                    ..
                }),
            ) => {
                let value = lit.value();
                if value.trim().is_empty() || value.len() > 255 {
                    errors.spanned(
                        &lit,
                        "`consumer` names the consuming service in the inbox: 1 to 255 bytes, \
                         e.g. `consumer = \"read-model\"`",
                    );
                } else if args.consumer.replace(lit).is_some() {
                    errors.spanned(&nv.path, "`consumer` is given twice: keep one");
                }
            }
            ("consumer", other) => errors.spanned(
                other,
                "`consumer` takes a string literal: write `consumer = \"read-model\"`",
            ),
            ("inbox", value @ (Expr::Path(_) | Expr::Call(_) | Expr::MethodCall(_))) => {
                if args.inbox.replace(value).is_some() {
                    errors.spanned(&nv.path, "`inbox` is given twice: keep one");
                }
            }
            ("inbox", other) => errors.spanned(
                other,
                "`inbox` takes the path of an `outbox::inbox::Inbox` constant: write \
                 `inbox = MY_INBOX`",
            ),
            (other, _) => errors.spanned(&nv.path, unknown_key("argument", other, KEYS)),
        }
    }
    errors.finish(args)
}

pub(crate) fn inbox_handler(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = match parse_args(args) {
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
                "`#[inbox_handler]` goes on an `async fn` that takes the transaction and the \
                 message and returns `Result<T, Error>`",
            );
            return with_errors(errors, item);
        }
        Err(error) => {
            errors.push(error);
            return with_errors(errors, item);
        }
    };
    let checked = signature::validate(&function, &RULES);
    let message = find_message(&function, checked.as_ref().ok());
    match (args, checked, message) {
        (Some(args), Ok(signature), Ok(message)) => expand(&function, &args, &signature, message),
        (_, checked, message) => {
            if let Err(error) = checked {
                errors.push(error);
            }
            if let Err(error) = message {
                errors.push(error);
            }
            match fallback(&function) {
                Some(fallback) => with_errors(errors, fallback),
                None => with_errors(errors, item),
            }
        }
    }
}

/// After a mistake: the function as its callers expect it once fixed — `async`, returning
/// `Result<Processed<T>, E>` — with a body that never runs, so that a caller matching on
/// `Processed::Done` reports nothing on top of the one error that says what to fix. `None`
/// when the function returns nothing: there is no `T` to wrap.
fn fallback(function: &ItemFn) -> Option<TokenStream> {
    let syn::ReturnType::Type(arrow, output) = &function.sig.output else {
        return None;
    };
    let mut sig = function.sig.clone();
    sig.asyncness = Some(Default::default());
    sig.output = syn::ReturnType::Type(*arrow, Box::new(processed_output(output)));
    let (outer, inner) = signature::split_attributes(&function.attrs);
    let vis = &function.vis;
    Some(quote! {
        #(#outer)*
        #[allow(unused_variables)]
        #vis #sig {
            #(#inner)*
            ::core::unreachable!("#[inbox_handler] failed to compile")
        }
    })
}

/// The message parameter: the one named `message`, else the only one besides the transaction.
fn find_message<'a>(
    function: &'a ItemFn,
    signature: Option<&Signature<'_>>,
) -> syn::Result<&'a syn::Ident> {
    let params: Vec<(&syn::Ident, &Type)> = function
        .sig
        .inputs
        .iter()
        .filter_map(|input| match input {
            FnArg::Typed(param) => match &*param.pat {
                Pat::Ident(pat) => Some((&pat.ident, &*param.ty)),
                _ => None,
            },
            FnArg::Receiver(_) => None,
        })
        .filter(|(ident, _)| signature.is_none_or(|s| *ident != s.transaction.ident))
        .collect();
    if let Some((ident, _)) = params.iter().find(|(ident, _)| *ident == "message") {
        return Ok(ident);
    }
    match params.as_slice() {
        [(ident, _)] => Ok(ident),
        [] => Err(syn::Error::new(
            function.sig.paren_token.span.join(),
            "`#[inbox_handler]` deduplicates on the message's id, but this function takes no \
             message: add `message: &M` where `M: outbox::inbox::InboxMessage` (the outbox's \
             `relay::Message`, a NATS or RabbitMQ message, or the id itself as `&str`)",
        )),
        [_, rest @ ..] => {
            let mut errors = Errors::default();
            for (ident, _) in rest {
                errors.spanned(
                    ident,
                    "`#[inbox_handler]` cannot tell which parameter is the message: name it \
                     `message`",
                );
            }
            errors.finish(unreachable_ident(function))
        }
    }
}

/// Never returned: `errors` is not empty. A value of the right type for `finish`.
fn unreachable_ident(function: &ItemFn) -> &syn::Ident {
    &function.sig.ident
}

/// `Result<Processed<T>, E>` for `Result<T, E>`; `Alias<Processed<T>>` for `Alias<T>`.
fn processed_output(output: &Type) -> Type {
    let mut output = output.clone();
    if let Type::Path(path) = &mut output
        && let Some(last) = path.path.segments.last_mut()
        && let PathArguments::AngleBracketed(args) = &mut last.arguments
        && let Some(GenericArgument::Type(first)) = args.args.first_mut()
    {
        let inner = first.clone();
        *first = syn::parse_quote_spanned!(inner.span()=> ::outbox::inbox::Processed<#inner>);
    }
    output
}

fn expand(
    function: &ItemFn,
    args: &Args,
    signature: &Signature<'_>,
    message: &syn::Ident,
) -> TokenStream {
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = function;
    let syn::ReturnType::Type(arrow, output) = &sig.output else {
        unreachable!("validated: the function returns a Result")
    };
    let mut new_sig = sig.clone();
    let processed = processed_output(output);
    new_sig.output = syn::ReturnType::Type(*arrow, Box::new(processed));

    let tx = signature.transaction.ident;
    let connection = signature.transaction.connection;
    let convert = match signature.error {
        Some(error) => {
            quote_spanned!(error.span()=> ::outbox::__private::into_error::<#error>)
        }
        None => quote!(::core::convert::From::from),
    };
    let assert_tx = quote_spanned! {connection.span()=>
        ::outbox::__private::assert_transaction::<#connection>();
    };
    let borrow = if signature.transaction.by_reference {
        quote!(&mut *#tx)
    } else {
        quote!(&mut #tx)
    };
    let consumer = match &args.consumer {
        Some(lit) => quote!(#lit),
        None => {
            let name = sig.ident.to_string();
            quote!(#name)
        }
    };
    let inbox = match &args.inbox {
        Some(inbox) => quote!(&#inbox),
        None => quote!(&::outbox::inbox::Inbox::DEFAULT),
    };
    let message_id = quote_spanned! {message.span()=>
        ::outbox::__private::message_id(&#message)
    };
    let recorded = quote_spanned! {connection.span()=>
        ::outbox::__private::inbox_record(#inbox, #borrow, #consumer, &__inbox_id).await
    };
    let (outer, inner) = crate::signature::split_attributes(attrs);
    quote! {
        #(#outer)*
        #vis #new_sig {
            #(#inner)*
            #assert_tx
            let (__inbox_id, __inbox_message) = match #message_id {
                ::core::result::Result::Ok(id) => id,
                ::core::result::Result::Err(error) => return ::core::result::Result::Err(#convert(error)),
            };
            ::outbox::__private::handler_scope(__inbox_message, &__inbox_id, #consumer, async {
            match #recorded {
                ::core::result::Result::Ok(::outbox::inbox::Recorded::New) => {}
                ::core::result::Result::Ok(::outbox::inbox::Recorded::Duplicate) => {
                    return ::core::result::Result::Ok(::outbox::inbox::Processed::Duplicate);
                }
                ::core::result::Result::Err(error) => return ::core::result::Result::Err(#convert(error)),
            }
            let __inbox_result = ::outbox::__private::body::<#output, _>(async #block).await;
            match __inbox_result {
                ::core::result::Result::Ok(value) => {
                    ::core::result::Result::Ok(::outbox::inbox::Processed::Done(value))
                }
                ::core::result::Result::Err(error) => ::core::result::Result::Err(error),
            }
            }).await
        }
    }
}
