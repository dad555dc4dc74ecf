//! The `diffit` command line.
