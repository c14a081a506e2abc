//! Cairn's scenario suite lives in `tests.rs` (run with `cargo test --workspace`). This library
//! holds what the suite shares with its helper program (`helper.rs`, run by tests as a separate
//! process): the once-per-machine preparation of cached items.

pub mod prepared;
