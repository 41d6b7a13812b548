//! Criterion benchmarks comparing mixed against its baselines; see `benches/` and `docs/benchmarks.md`.
