//! `diffit-server`: serves runs and the dashboard.
fn main() {}
