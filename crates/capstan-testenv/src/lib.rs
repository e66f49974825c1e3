//! capstan-testenv
