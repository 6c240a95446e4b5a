//! `cargo fuzz run table_name`: see [`outbox_fuzz::table_name`] for what each input must satisfy.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| outbox_fuzz::table_name(data));
