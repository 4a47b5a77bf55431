//! Multi-node test harness for hf-mirror.
//!
//! This crate is a placeholder with no functionality yet.
//! It will own, with the issue "The four-node cluster", a harness that starts N real `hf-mirror`
//! processes (the built binary) with their own data directories and pre-bound ports, plus the fake
//! upstream Hub from `tests/fakehub/`, with helpers to kill -9, restart, pause and partition nodes
//! (network namespaces joined by veth pairs, with a loopback fallback).
//!
//! The single-node client suite lives in `tests/clients/` (pytest driving real `huggingface_hub`
//! versions), and it uses the same fake Hub.
