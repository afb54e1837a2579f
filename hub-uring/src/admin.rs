//! Placeholder: written in a later change.
