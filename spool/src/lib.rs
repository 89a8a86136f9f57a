//! The spool: the venue's durable event store. Being written (issue 3).
