//! Collecting errors instead of stopping at the first, and shared checks of literal values.

use proc_macro2::Span;
use quote::ToTokens;

/// Every problem found in one macro input; reported together.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    pub(crate) fn spanned(&mut self, tokens: impl ToTokens, message: impl std::fmt::Display) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    pub(crate) fn at(&mut self, span: Span, message: impl std::fmt::Display) {
        self.push(syn::Error::new(span, message));
    }

    /// `Ok(value)` when nothing was pushed.
    pub(crate) fn finish<T>(self, value: T) -> syn::Result<T> {
        match self.0 {
            Some(error) => Err(error),
            None => Ok(value),
        }
    }
}

/// Longest metadata value; the outbox columns are 255 wide (MySQL `VARCHAR(255)`).
const MAX_METADATA_LEN: usize = 255;

/// Checks an `aggregate_type`/`event_type` literal the way the runtime would, but at compile time.
pub(crate) fn check_metadata(errors: &mut Errors, key: &str, lit: &syn::LitStr) {
    let value = lit.value();
    if value.trim().is_empty() {
        errors.spanned(
            lit,
            format!(
                "`{key}` cannot be empty: name it, e.g. `{key} = \"{}\"`",
                example(key)
            ),
        );
    } else if value.len() > MAX_METADATA_LEN {
        errors.spanned(
            lit,
            format!(
                "`{key}` is {} bytes long; the outbox columns hold at most {MAX_METADATA_LEN}",
                value.len()
            ),
        );
    }
}

/// An example value for a key, for messages.
pub(crate) fn example(key: &str) -> &'static str {
    match key {
        "aggregate_type" => "account",
        _ => "AccountOpened",
    }
}

/// The known key closest to a mistyped one, when one is close enough to be a typo.
pub(crate) fn suggest<'a>(unknown: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (edit_distance(unknown, k), *k))
        .filter(|(d, k)| *d <= 3.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diag + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// "unknown argument" message with the list of known ones and a suggestion.
pub(crate) fn unknown_key(what: &str, key: &str, known: &[&str]) -> String {
    let list = known
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    match suggest(key, known) {
        Some(close) => {
            format!("unknown {what} `{key}`: did you mean `{close}`? (expected one of {list})")
        }
        None => format!("unknown {what} `{key}`: expected one of {list}"),
    }
}
