//! The fuzz targets' checks on the stable toolchain, in the test suite: every committed seed
//! and every input a fuzzing run once found failing (`fuzz/seeds/<target>/`,
//! `fuzz/regressions/<target>/`), then a few thousand random inputs built from the seeds'
//! pieces. `scripts/fuzz.sh` runs the same checks coverage-guided, for longer.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

/// The committed inputs of `target`.
fn committed(target: &str) -> Vec<Vec<u8>> {
    let mut inputs = Vec::new();
    for folder in ["seeds", "regressions"] {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(folder)
            .join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            inputs.push(std::fs::read(entry.unwrap().path()).unwrap());
        }
    }
    assert!(!inputs.is_empty(), "no seeds for {target}");
    inputs
}

/// Random inputs: seeds cut, spliced and sprinkled with the bytes that matter to parsers.
fn mutated(seeds: &[Vec<u8>], count: usize) -> Vec<Vec<u8>> {
    const SPICE: &[&[u8]] = &[
        b"{",
        b"}",
        b".",
        b"\"",
        b"`",
        b"'",
        b";",
        b"\n",
        b"[",
        b"]",
        b"=",
        b" ",
        b"\0",
        b"\xff",
        b"\xc3",
        b"\xe2\x80\xae",
        b"{event_type}",
        b"whsec_",
        b"v1,",
        b"\\",
        b"#",
    ];
    let mut rng = fastrand::Rng::with_seed(0x0b0c);
    (0..count)
        .map(|_| {
            let mut input = seeds[rng.usize(..seeds.len())].clone();
            for _ in 0..rng.usize(1..6) {
                let at = rng.usize(..=input.len());
                match rng.u8(..4) {
                    0 => input.truncate(at),
                    1 => {
                        let other = &seeds[rng.usize(..seeds.len())];
                        let from = rng.usize(..=other.len());
                        input.splice(at..at, other[from..].iter().copied());
                    }
                    2 if at < input.len() => {
                        input.remove(at);
                    }
                    _ => {
                        let spice = SPICE[rng.usize(..SPICE.len())];
                        input.splice(at..at, spice.iter().copied());
                    }
                }
            }
            input
        })
        .collect()
}

fn replay(target: &str, count: usize, check: fn(&[u8])) {
    let seeds = committed(target);
    for input in seeds.iter().chain(&mutated(&seeds, count)) {
        let caught = std::panic::catch_unwind(|| check(input));
        assert!(
            caught.is_ok(),
            "{target} failed on {:?}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn table_names() {
    replay("table_name", 5_000, outbox_fuzz::table_name);
}

#[test]
fn routing_templates() {
    replay("routing_template", 5_000, outbox_fuzz::routing_template);
}

#[test]
fn configuration_files() {
    replay("config_file", 2_000, outbox_fuzz::config_file);
}

#[test]
fn webhook_signatures() {
    replay("webhook_signature", 500, outbox_fuzz::webhook_signature);
}

#[test]
fn inbox_ids() {
    replay("inbox_ids", 300, outbox_fuzz::inbox_ids);
}
