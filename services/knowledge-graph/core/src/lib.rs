//! Knowledge-graph domain: triples, parsing, the store trait and traversal over petgraph. No sled, no tonic.
