//! Any bytes as guest writes, zero writes, discards, flushes and reopens on a new VHD image: reads must
//! match a model, nothing may fail or panic, and the image must check clean at the end.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| blk_fuzz::write_path::write_vhd(data));
