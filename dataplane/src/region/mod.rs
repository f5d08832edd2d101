//! Shared stats region (being written).
