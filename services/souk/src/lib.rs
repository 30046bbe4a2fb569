//! The all-in-one souk binary: the three services in one process, and the demo.
