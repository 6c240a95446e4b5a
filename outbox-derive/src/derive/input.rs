//! The derive's input: `#[outbox(aggregate_type = "...", event_type = "...", version = N)]` on a
//! struct with named fields, `#[outbox(aggregate_id)]` on exactly one of them.

use syn::punctuated::Punctuated;
use syn::{Data, DeriveInput, Fields, LitInt, LitStr, Meta, Token};

use crate::errors::{Errors, check_metadata, example, unknown_key};

const TYPE_KEYS: &[&str] = &["aggregate_type", "event_type", "version"];
const FIELD_KEYS: &[&str] = &["aggregate_id"];

/// A validated event type.
pub(crate) struct Event<'a> {
    pub(crate) aggregate_type: LitStr,
    /// Defaults to the type's name.
    pub(crate) event_type: LitStr,
    /// The schema version of the event type, when given.
    pub(crate) version: Option<LitInt>,
    pub(crate) id_field: &'a syn::Field,
}

impl<'a> Event<'a> {
    pub(crate) fn parse(input: &'a DeriveInput) -> syn::Result<Self> {
        let mut errors = Errors::default();
        let fields = match &input.data {
            Data::Struct(data) => match &data.fields {
                Fields::Named(named) => Some(named),
                Fields::Unnamed(_) | Fields::Unit => {
                    errors.spanned(
                        &input.ident,
                        "`OutboxEvent` is derived for structs with named fields, one of them \
                         marked `#[outbox(aggregate_id)]`; give the fields names",
                    );
                    None
                }
            },
            Data::Enum(data) => {
                errors.spanned(
                    data.enum_token,
                    "`OutboxEvent` cannot be derived for an enum: each event is a struct with its \
                     own `#[outbox(...)]` metadata; make one struct per variant, or record the \
                     enum with `#[outbox_event(aggregate_type = ..., event_type = ..., \
                     aggregate_id = ...)]`",
                );
                None
            }
            Data::Union(data) => {
                errors.spanned(
                    data.union_token,
                    "`OutboxEvent` cannot be derived for a union: use a struct with named fields",
                );
                None
            }
        };

        let TypeAttributes {
            aggregate_type,
            event_type,
            version,
        } = type_attributes(input, &mut errors);
        let id_field = fields.and_then(|fields| id_field(input, fields, &mut errors));

        let aggregate_type = aggregate_type.or_else(|| {
            errors.spanned(
                &input.ident,
                format!(
                    "missing `aggregate_type`: say which aggregate this event belongs to, e.g. \
                     `#[outbox(aggregate_type = \"{}\")]` above the struct",
                    example("aggregate_type")
                ),
            );
            None
        });
        let event_type =
            event_type.unwrap_or_else(|| LitStr::new(&input.ident.to_string(), input.ident.span()));
        match (aggregate_type, id_field) {
            (Some(aggregate_type), Some(id_field)) => errors.finish(Event {
                aggregate_type,
                event_type,
                version,
                id_field,
            }),
            _ => {
                errors.finish(())?;
                unreachable!("a missing part always pushed an error")
            }
        }
    }
}

fn outbox_attributes(attrs: &[syn::Attribute]) -> impl Iterator<Item = &syn::Attribute> {
    attrs.iter().filter(|a| a.path().is_ident("outbox"))
}

/// The keys of the struct's `#[outbox(...)]`, each given at most once.
#[derive(Default)]
struct TypeAttributes {
    aggregate_type: Option<LitStr>,
    event_type: Option<LitStr>,
    version: Option<LitInt>,
}

/// `version = N`: a positive integer that fits a `u32`.
fn version(meta: &Meta, errors: &mut Errors) -> Option<LitInt> {
    let wrong = "`version` takes a positive whole number: write `version = 2`";
    let Meta::NameValue(syn::MetaNameValue {
        value:
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Int(lit),
                ..
            }),
        ..
    }) = meta
    else {
        errors.spanned(meta, wrong);
        return None;
    };
    match lit.base10_parse::<u32>() {
        Ok(0) | Err(_) => {
            errors.spanned(lit, wrong);
            None
        }
        Ok(_) if !lit.suffix().is_empty() => {
            errors.spanned(
                lit,
                "`version` takes a plain number, without a suffix: `version = 2`",
            );
            None
        }
        Ok(_) => Some(lit.clone()),
    }
}

fn type_attributes(input: &DeriveInput, errors: &mut Errors) -> TypeAttributes {
    let mut found = TypeAttributes::default();
    let mut version_given = false;
    for attr in outbox_attributes(&input.attrs) {
        let metas = match attr.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated) {
            Ok(metas) => metas,
            Err(error) => {
                errors.push(error);
                continue;
            }
        };
        for meta in metas {
            let key = meta
                .path()
                .get_ident()
                .map(ToString::to_string)
                .unwrap_or_default();
            if key == "aggregate_id" {
                errors.spanned(
                    meta.path(),
                    "`aggregate_id` marks a field: put `#[outbox(aggregate_id)]` on the field \
                     that holds the aggregate's id",
                );
                continue;
            }
            if !TYPE_KEYS.contains(&key.as_str()) {
                errors.spanned(meta.path(), unknown_key("`outbox` key", &key, TYPE_KEYS));
                continue;
            }
            if key == "version" {
                if version_given {
                    errors.spanned(meta.path(), "`version` is given twice: keep one");
                } else {
                    version_given = true;
                    found.version = version(&meta, errors);
                }
                continue;
            }
            let lit = match &meta {
                Meta::NameValue(syn::MetaNameValue {
                    value:
                        syn::Expr::Lit(syn::ExprLit {
                            lit: syn::Lit::Str(lit),
                            ..
                        }),
                    ..
                }) => lit.clone(),
                _ => {
                    errors.spanned(
                        &meta,
                        format!(
                            "`{key}` takes a string literal: write `{key} = \"{}\"`",
                            example(&key)
                        ),
                    );
                    continue;
                }
            };
            check_metadata(errors, &key, &lit);
            let slot = if key == "aggregate_type" {
                &mut found.aggregate_type
            } else {
                &mut found.event_type
            };
            if slot.is_some() {
                errors.spanned(meta.path(), format!("`{key}` is given twice: keep one"));
            } else {
                *slot = Some(lit);
            }
        }
    }
    found
}

fn id_field<'a>(
    input: &DeriveInput,
    fields: &'a syn::FieldsNamed,
    errors: &mut Errors,
) -> Option<&'a syn::Field> {
    let mut marked = Vec::new();
    for field in &fields.named {
        for attr in outbox_attributes(&field.attrs) {
            let metas = match attr.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated)
            {
                Ok(metas) => metas,
                Err(error) => {
                    errors.push(error);
                    continue;
                }
            };
            for meta in metas {
                match &meta {
                    Meta::Path(path) if path.is_ident("aggregate_id") => marked.push(field),
                    _ if meta.path().is_ident("aggregate_id") => errors.spanned(
                        &meta,
                        "`aggregate_id` takes no value: write `#[outbox(aggregate_id)]` on the id field",
                    ),
                    _ => {
                        let key = meta.path().get_ident().map(ToString::to_string).unwrap_or_default();
                        let message = if TYPE_KEYS.contains(&key.as_str()) {
                            format!("`{key}` describes the whole event: put it on the struct, next to `aggregate_type`")
                        } else {
                            unknown_key("`outbox` field key", &key, FIELD_KEYS)
                        };
                        errors.spanned(meta.path(), message);
                    }
                }
            }
        }
    }
    match marked.as_slice() {
        [field] => Some(field),
        [] => {
            errors.spanned(
                &input.ident,
                "no field is marked as the aggregate id: put `#[outbox(aggregate_id)]` on the field \
                 that identifies the aggregate (any `Display` type, or an `Option` of one)",
            );
            None
        }
        [_, rest @ ..] => {
            for field in rest {
                errors.spanned(
                    field.ident.as_ref(),
                    "a second `#[outbox(aggregate_id)]`: an event belongs to exactly one aggregate \
                     instance; mark one field (for a composite key, add a field that combines them)",
                );
            }
            None
        }
    }
}
