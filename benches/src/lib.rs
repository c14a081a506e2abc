//! Benches live in `benches/` (criterion) and `compare.sh` (end to end against restic).
