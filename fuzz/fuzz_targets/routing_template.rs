//! `cargo fuzz run routing_template`: see [`outbox_fuzz::routing_template`] for what each input must satisfy.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| outbox_fuzz::routing_template(data));
