//! Helpers shared by the integration tests. A test file takes them with
//! `mod support;` and uses, say, `support::pprof_tools::check`; a new helper
//! goes in its own file here, declared below.

pub mod clocks;
pub mod fake_agent;
pub mod pprof_tools;
pub mod stats;
pub mod test_agent;
pub mod xml;
