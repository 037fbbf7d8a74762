//! The per-instance circuit breaker.
