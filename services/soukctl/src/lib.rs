//! souk's admin and client CLI.
