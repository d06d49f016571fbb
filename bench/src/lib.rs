//! Parts of the gateway-overhead benchmark (`scripts/bench-gateway.sh`): the fake upstream
//! the gateway forwards to, and the report that turns oha's results into one table.

pub mod fake_upstream;
pub mod report;
