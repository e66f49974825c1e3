//! capstan-core
