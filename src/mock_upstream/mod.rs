//! A local simulator of the upstream video API (create, query, file host, result files,
//! callbacks), for the demo and the tests. The product never depends on it.
// SKELETON: replaced by the mock implementation.
