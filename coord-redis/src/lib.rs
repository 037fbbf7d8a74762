//! The redis backend of coord (work in progress).
