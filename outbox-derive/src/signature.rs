//! The rules a function must follow to be annotated, checked on its signature: shared by
//! `#[outbox_event]` and `#[inbox_handler]`, which both write through the caller's transaction.
//!
//! A macro sees tokens, not types: these checks recognise what is visibly wrong (a pool, a
//! transaction by value, no `Result`). What only the type checker can know (an alias of a pool,
//! a generic parameter) is left to trait-bound assertions in the expansion, whose traits carry
//! `#[diagnostic::on_unimplemented]` explanations.

use syn::spanned::Spanned;
use syn::{FnArg, GenericArgument, Ident, ItemFn, Pat, PathArguments, ReturnType, Type, TypePath};

use crate::errors::Errors;

/// What the expansion needs to know about a valid function.
pub(crate) struct Signature<'a> {
    pub(crate) transaction: Transaction<'a>,
    /// `T` of `Result<T, E>`.
    pub(crate) entity: &'a Type,
    /// `E` of `Result<T, E>`, when written (an alias such as `anyhow::Result<T>` hides it).
    pub(crate) error: Option<&'a Type>,
}

/// The transaction parameter.
pub(crate) struct Transaction<'a> {
    pub(crate) ident: &'a Ident,
    /// The type to assert `OutboxConnection` on: `X` of `&mut X`, or a generic parameter.
    pub(crate) connection: &'a Type,
    /// `&mut X` (reborrow it) or a generic value (borrow it).
    pub(crate) by_reference: bool,
}

/// What differs between the attributes in their messages.
pub(crate) struct Rules {
    /// `#[outbox_event]`.
    pub(crate) name: &'static str,
    /// What is written through the transaction: `the outbox row`.
    pub(crate) writes: &'static str,
    /// Why the return must be a `Result`, when it is something else.
    pub(crate) not_result: &'static str,
    /// The same, when the function returns nothing.
    pub(crate) returns_nothing: &'static str,
}

const HOW_TO_TAKE_TX: &str = "take `tx: &mut sqlx::Transaction<'_, Postgres>` (or `&mut PgConnection`, \
     `&mut MySqlConnection`, `&mut SqliteConnection`) and let the caller commit";

pub(crate) fn validate<'a>(function: &'a ItemFn, rules: &Rules) -> syn::Result<Signature<'a>> {
    let sig = &function.sig;
    let mut errors = Errors::default();

    if sig.asyncness.is_none() {
        errors.spanned(
            sig.fn_token,
            format!(
                "`{}` needs an `async fn`: {} is written with `.await` through your \
                 transaction; write `async fn`",
                rules.name, rules.writes
            ),
        );
    }

    let result = match &sig.output {
        ReturnType::Type(_, ty) => match result_types(ty) {
            Some(types) => Some(types),
            None => {
                errors.spanned(ty, rules.not_result);
                None
            }
        },
        ReturnType::Default => {
            errors.spanned(&sig.ident, rules.returns_nothing);
            None
        }
    };

    let transaction = find_transaction(function, rules, &mut errors);

    match (transaction, result) {
        (Some(transaction), Some((entity, error))) => errors.finish(Signature {
            transaction,
            entity,
            error,
        }),
        _ => {
            errors.finish(())?;
            unreachable!("a missing part always pushed an error")
        }
    }
}

/// `(T, Some(E))` of `Result<T, E>`, `(T, None)` of an alias `Result<T>`.
fn result_types(ty: &Type) -> Option<(&Type, Option<&Type>)> {
    let Type::Path(TypePath { qself: None, path }) = ty else {
        return None;
    };
    let last = path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    let mut types = args.args.iter().filter_map(|arg| match arg {
        GenericArgument::Type(ty) => Some(ty),
        _ => None,
    });
    let entity = types.next()?;
    Some((entity, types.next()))
}

/// How a parameter's type looks, as far as tokens tell.
enum Kind<'a> {
    /// `&mut X` where `X` looks like a transaction or connection.
    Transaction(&'a Type),
    /// A pool, by value or by reference.
    Pool,
    /// `Transaction<..>` by value or `&Transaction`/`&XConnection`.
    NotMutable,
    /// `&mut X` of an unrecognised `X` (an alias, a generic): maybe a transaction.
    OtherMutable(&'a Type),
    /// A parameter typed by one of the function's own generic parameters.
    Generic(&'a Type),
    Other,
}

fn classify<'a>(ty: &'a Type, generics: &[&Ident]) -> Kind<'a> {
    match ty {
        Type::Reference(r) => {
            let looks = looks_like(&r.elem);
            match (r.mutability.is_some(), looks) {
                (_, Looks::Pool) => Kind::Pool,
                (true, Looks::Transaction) => Kind::Transaction(&r.elem),
                (false, Looks::Transaction) => Kind::NotMutable,
                (true, Looks::Other) => Kind::OtherMutable(&r.elem),
                (false, Looks::Other) => Kind::Other,
            }
        }
        Type::Paren(p) => classify(&p.elem, generics),
        Type::Group(g) => classify(&g.elem, generics),
        _ => match looks_like(ty) {
            Looks::Pool => Kind::Pool,
            Looks::Transaction if is_transaction_value(ty) => Kind::NotMutable,
            _ if is_generic(ty, generics) => Kind::Generic(ty),
            _ => Kind::Other,
        },
    }
}

enum Looks {
    Transaction,
    Pool,
    Other,
}

const POOLS: &[&str] = &["Pool", "PgPool", "MySqlPool", "SqlitePool", "AnyPool"];

fn looks_like(ty: &Type) -> Looks {
    let Type::Path(TypePath { path, .. }) = ty else {
        return Looks::Other;
    };
    let Some(last) = path.segments.last() else {
        return Looks::Other;
    };
    let name = last.ident.to_string();
    if POOLS.contains(&name.as_str()) {
        Looks::Pool
    } else if name == "Transaction" || name.ends_with("Connection") {
        Looks::Transaction
    } else {
        Looks::Other
    }
}

fn is_transaction_value(ty: &Type) -> bool {
    matches!(ty, Type::Path(TypePath { path, .. })
        if path.segments.last().is_some_and(|s| s.ident == "Transaction"))
}

fn is_generic(ty: &Type, generics: &[&Ident]) -> bool {
    matches!(ty, Type::Path(TypePath { qself: None, path })
        if path.segments.len() == 1 && generics.contains(&&path.segments[0].ident))
}

fn find_transaction<'a>(
    function: &'a ItemFn,
    rules: &Rules,
    errors: &mut Errors,
) -> Option<Transaction<'a>> {
    let sig = &function.sig;
    let generics: Vec<&Ident> = sig.generics.type_params().map(|p| &p.ident).collect();
    let mut transactions = Vec::new();
    let mut other_mutables = Vec::new();
    let mut generic_values = Vec::new();
    let mut refused = false;

    for input in &sig.inputs {
        let FnArg::Typed(param) = input else { continue };
        match classify(&param.ty, &generics) {
            Kind::Transaction(connection) => transactions.push((param, connection, true)),
            Kind::Pool => {
                refused = true;
                errors.spanned(
                    &param.ty,
                    format!(
                        "a pool is not a transaction: {} would commit on its own, apart from your \
                     data; {HOW_TO_TAKE_TX}",
                        rules.writes
                    ),
                )
            }
            Kind::NotMutable => {
                refused = true;
                errors.spanned(
                    &param.ty,
                    format!(
                        "the transaction must be borrowed mutably, not taken by value or shared: \
                         a function that owns the transaction could commit it before {} is \
                         written; {HOW_TO_TAKE_TX}",
                        rules.writes
                    ),
                )
            }
            Kind::OtherMutable(connection) => other_mutables.push((param, connection, true)),
            Kind::Generic(ty) => generic_values.push((param, ty, false)),
            Kind::Other => {}
        }
    }

    // Recognised transactions first; otherwise a lone `&mut` or generic parameter is taken as the
    // transaction, and the type checker says whether it is one.
    let candidates = if !transactions.is_empty() {
        transactions
    } else if other_mutables.len() == 1 {
        other_mutables
    } else if other_mutables.is_empty() && generic_values.len() == 1 {
        generic_values
    } else {
        if other_mutables.len() + generic_values.len() > 1 {
            for (param, _, _) in other_mutables.iter().chain(&generic_values).skip(1) {
                errors.spanned(
                    &param.ty,
                    format!(
                        "`{}` cannot tell which parameter is the transaction; {HOW_TO_TAKE_TX}",
                        rules.name
                    ),
                );
            }
        } else if !refused {
            errors.at(
                sig.paren_token.span.join(),
                format!(
                    "`{}` writes {} through the function's transaction, but this function \
                     takes none: {HOW_TO_TAKE_TX}",
                    rules.name, rules.writes
                ),
            );
        }
        return None;
    };

    if candidates.len() > 1 {
        let first = quote::ToTokens::to_token_stream(&candidates[0].0.pat).to_string();
        for (param, _, _) in &candidates[1..] {
            errors.spanned(
                param,
                format!(
                    "a second transaction parameter: `{}` records into exactly one transaction \
                     (`{first}` comes first); take one transaction and run both writes in it",
                    rules.name
                ),
            );
        }
        return None;
    }

    let (param, connection, by_reference) = candidates.into_iter().next()?;
    match &*param.pat {
        Pat::Ident(pat) if pat.subpat.is_none() => Some(Transaction {
            ident: &pat.ident,
            connection,
            by_reference,
        }),
        other => {
            errors.at(
                other.span(),
                format!(
                    "give the transaction parameter a name (`tx: &mut Transaction<'_, DB>`): {} \
                     is written through it",
                    rules.writes
                ),
            );
            None
        }
    }
}

/// The function's attributes split into the outer ones (`#[...]`, written before `fn`) and the
/// inner ones (`#![...]`, the first lines of the body), which syn parses into one list. The
/// expansion puts each back where the user wrote it: an inner attribute in front of `fn` would
/// not compile.
pub(crate) fn split_attributes(
    attrs: &[syn::Attribute],
) -> (Vec<&syn::Attribute>, Vec<&syn::Attribute>) {
    attrs
        .iter()
        .partition(|attr| matches!(attr.style, syn::AttrStyle::Outer))
}
