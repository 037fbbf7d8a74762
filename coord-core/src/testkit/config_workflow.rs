//! The config conformance cases of the workflows: audit, approvals, gray
//! release, promotion between environments, export and import.
