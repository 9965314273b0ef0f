//! Export: the Prometheus exposition, the JSON API, the HTTP server and the
//! event stream.

pub mod api;
pub mod client;
pub mod overview;
pub mod prometheus;
pub mod stream;
pub mod web;
