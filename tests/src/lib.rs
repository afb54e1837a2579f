//! End-to-end tests arrive with the hub and the agent; the protocol core is tested in `core/`.
