//! The uplink: drain to central and central ingest. Being written (issue 5).
