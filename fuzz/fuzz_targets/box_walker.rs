//! Fuzzes the mp4/mov box walker: it must return (Ok or Err) on any input, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vidgate::probe::boxes::walk_bytes;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the read size (1..=256 bytes at a time), so the range-read path
    // (pausing, asking for more, appending) is fuzzed along with the parsing.
    let Some((first, file)) = data.split_first() else {
        return;
    };
    let _ = walk_bytes(file, usize::from(*first) + 1);
    // And the whole file in one window, as a faststart file's first range gives it.
    let _ = walk_bytes(file, file.len());
});
