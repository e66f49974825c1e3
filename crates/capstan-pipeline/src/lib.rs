//! capstan-pipeline
