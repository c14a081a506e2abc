//! Cairn's scenario suite lives in `tests.rs` (run with `cargo test --workspace`); this library
//! target is empty.
