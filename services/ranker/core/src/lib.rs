//! Ranker domain: items, filters, features, fusion, explanations and the source traits. No sled, no tonic.
