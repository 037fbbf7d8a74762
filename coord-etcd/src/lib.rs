//! The etcd backend of coord (work in progress).
