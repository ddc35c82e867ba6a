//! Example machine configs live next to this crate as `*.toml` files; the
//! tests in `tests/` parse and validate every one of them.
