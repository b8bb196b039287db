//! The driver's refusal warnings (on both sides of an RPC) are rate-limited by the crate's one
//! [`QuietLog`](crate::QuietLog): at most one line per 10 s per peer and kind of event.

pub(crate) use crate::quiet_log::QuietLog;
