//! The one integration-test binary: modules by feature.

mod store_conformance;
mod support;
