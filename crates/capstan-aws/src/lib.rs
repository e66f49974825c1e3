//! capstan-aws
