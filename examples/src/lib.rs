//! Shared code of the example programs.
#![forbid(unsafe_code)]
