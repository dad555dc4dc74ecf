//! Shared helpers for the end-to-end tests live in the test files themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benchmarks fail loudly.
