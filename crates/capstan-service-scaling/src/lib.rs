//! capstan-service-scaling
