//! Our own seeded RNG, so native and wasm draw the same numbers.
