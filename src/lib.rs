//! coord facade
