//! Reference-video measurement and the address rules every outgoing fetch obeys.

pub mod address;
