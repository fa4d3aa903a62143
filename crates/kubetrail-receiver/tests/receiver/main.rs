//! Integration tests of the audit webhook receiver over real loopback HTTP(S), in front of
//! the real embedded queue, driven by a client that behaves like kube-apiserver's batch
//! webhook backend.

mod auth;
mod cloud;
mod common;
mod ingest;
mod lifecycle;
mod limits;
mod pressure;
