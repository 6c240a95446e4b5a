//! `cargo fuzz run inbox_ids`: see [`outbox_fuzz::inbox_ids`] for what each input must satisfy.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| outbox_fuzz::inbox_ids(data));
