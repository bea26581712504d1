//! Shared state on Redis, for brokers and AgentAuth replicas that must
//! agree: configuration, the connection pool (single Redis, Sentinel or
//! Cluster) with its fail-closed time limits and metrics, and key names.

pub mod config;
pub mod keys;
pub mod redis;
