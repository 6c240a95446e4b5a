//! `cargo fuzz run config_file`: see [`outbox_fuzz::config_file`] for what each input must satisfy.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| outbox_fuzz::config_file(data));
