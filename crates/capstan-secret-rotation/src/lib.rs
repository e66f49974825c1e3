//! capstan-secret-rotation
