//! Parsing `#[outbox_event(aggregate_type = "...", event_type = "...", aggregate_id = |e| ..., outbox = PATH, delay = ...)]`.

use proc_macro2::TokenStream;
use syn::punctuated::Punctuated;
use syn::{Expr, ExprClosure, LitStr, Meta, Token};

use crate::errors::{Errors, check_metadata, example, unknown_key};

const KEYS: &[&str] = &[
    "aggregate_type",
    "event_type",
    "aggregate_id",
    "outbox",
    "delay",
];

/// The attribute's arguments; every one optional.
#[derive(Default)]
pub(crate) struct Args {
    pub(crate) aggregate_type: Option<LitStr>,
    pub(crate) event_type: Option<LitStr>,
    pub(crate) aggregate_id: Option<ExprClosure>,
    pub(crate) outbox: Option<Expr>,
    /// A `Duration` (or `SystemTime`, or an `Option` of either), or a closure over the entity
    /// returning one.
    pub(crate) delay: Option<Expr>,
}

impl Args {
    /// True when any argument replaces what the derive says.
    pub(crate) fn overrides_metadata(&self) -> bool {
        self.aggregate_type.is_some() || self.event_type.is_some() || self.aggregate_id.is_some()
    }
}

pub(crate) fn parse(tokens: TokenStream) -> syn::Result<Args> {
    let metas =
        syn::parse::Parser::parse2(Punctuated::<Meta, Token![,]>::parse_terminated, tokens)?;
    let mut args = Args::default();
    let mut errors = Errors::default();
    for meta in metas {
        let nv = match meta {
            Meta::NameValue(nv) => nv,
            other => {
                let key = other.path().get_ident().map(ToString::to_string);
                match key.as_deref() {
                    Some(key) if KEYS.contains(&key) => errors.spanned(
                        &other,
                        format!("`{key}` needs a value: write `{}`", usage(key)),
                    ),
                    Some(key) => errors.spanned(&other, unknown_key("argument", key, KEYS)),
                    None => errors.spanned(&other, "expected `key = value` arguments"),
                }
                continue;
            }
        };
        let Some(key) = nv.path.get_ident().map(ToString::to_string) else {
            errors.spanned(
                &nv.path,
                unknown_key("argument", &path_string(&nv.path), KEYS),
            );
            continue;
        };
        match key.as_str() {
            "aggregate_type" | "event_type" => {
                let Some(lit) = string_literal(&nv.value) else {
                    errors.spanned(
                        &nv.value,
                        format!("`{key}` takes a string literal: write `{}`", usage(&key)),
                    );
                    continue;
                };
                check_metadata(&mut errors, &key, &lit);
                let slot = if key == "aggregate_type" {
                    &mut args.aggregate_type
                } else {
                    &mut args.event_type
                };
                set_once(&mut errors, slot, lit, &nv.path, &key);
            }
            "aggregate_id" => match nv.value {
                Expr::Closure(closure) if closure.inputs.len() == 1 => {
                    set_once(&mut errors, &mut args.aggregate_id, closure, &nv.path, &key);
                }
                Expr::Closure(closure) => errors.spanned(
                    &closure.inputs,
                    "the `aggregate_id` closure takes exactly one parameter, the returned entity: \
                     `aggregate_id = |entity| entity.id`",
                ),
                other => errors.spanned(
                    other,
                    "`aggregate_id` takes a closure over the returned entity: write \
                     `aggregate_id = |entity| entity.id`",
                ),
            },
            "outbox" => match nv.value {
                value @ (Expr::Path(_) | Expr::Call(_) | Expr::MethodCall(_) | Expr::Field(_)) => {
                    set_once(&mut errors, &mut args.outbox, value, &nv.path, &key);
                }
                other => errors.spanned(
                    other,
                    "`outbox` takes the path of an `outbox::Outbox` constant: write \
                     `outbox = BILLING_OUTBOX` with \
                     `const BILLING_OUTBOX: Outbox = Outbox::for_table(TableName::from_static(\"billing_outbox\"));`",
                ),
            },
            "delay" => match nv.value {
                Expr::Closure(closure) if closure.inputs.len() != 1 => errors.spanned(
                    &closure.inputs,
                    "the `delay` closure takes exactly one parameter, the returned entity: \
                     `delay = |entity| entity.remind_after`",
                ),
                value => set_once(&mut errors, &mut args.delay, value, &nv.path, &key),
            },
            other => errors.spanned(&nv.path, unknown_key("argument", other, KEYS)),
        }
    }
    errors.finish(args)
}

fn set_once<T>(errors: &mut Errors, slot: &mut Option<T>, value: T, path: &syn::Path, key: &str) {
    if slot.is_some() {
        errors.spanned(path, format!("`{key}` is given twice: keep one"));
    } else {
        *slot = Some(value);
    }
}

fn string_literal(expr: &Expr) -> Option<LitStr> {
    match expr {
        Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(lit),
            ..
        }) => Some(lit.clone()),
        _ => None,
    }
}

fn usage(key: &str) -> String {
    match key {
        "aggregate_id" => "aggregate_id = |entity| entity.id".to_owned(),
        "outbox" => "outbox = MY_OUTBOX".to_owned(),
        "delay" => "delay = Duration::from_secs(3600)".to_owned(),
        _ => format!("{key} = \"{}\"", example(key)),
    }
}

fn path_string(path: &syn::Path) -> String {
    path.segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect::<Vec<_>>()
        .join("::")
}
