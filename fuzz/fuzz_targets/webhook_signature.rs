//! `cargo fuzz run webhook_signature`: see [`outbox_fuzz::webhook_signature`] for what each input must satisfy.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| outbox_fuzz::webhook_signature(data));
