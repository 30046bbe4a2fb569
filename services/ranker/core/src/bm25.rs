//! An incremental BM25 index over item texts (Robertson/Sparck Jones, k1 = 1.2, b = 0.75).
use std::collections::HashMap;

const K1: f32 = 1.2;
const B: f32 = 0.75;

/// Lower-cased alphanumeric terms with plurals folded ("lights" matches "light", "batteries"
/// matches "battery"); a few stop words are dropped.
pub fn terms(text: &str) -> Vec<String> {
    const STOP: &[&str] = &[
        "the", "and", "for", "with", "a", "an", "of", "in", "on", "to", "is", "by",
    ];
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_lowercase)
        .filter(|t| !STOP.contains(&t.as_str()))
        .map(plural_stem)
        .collect()
}

/// Folds English plurals only (Harman's S-stemmer, the rule set of Lucene's
/// `EnglishMinimalStemmer`): "-ies" -> "-y", else a final "-s" dropped; words ending "-us",
/// "-ss", "-aes", "-ees", "-oes", "-aies" or "-eies" stay as written. Shop queries gain recall
/// from "lights" ~ "light"; a full Porter stemmer also costs precision ("organic" -> "organ").
/// Measured on Crowdflower (BENCHMARKS.md): Porter lowered both BM25 signals, this raised both.
fn plural_stem(mut t: String) -> String {
    let b = t.as_bytes();
    let n = b.len();
    if n < 3 || b[n - 1] != b's' {
        return t;
    }
    match b[n - 2] {
        b'u' | b's' => t,
        b'e' if n > 3 && b[n - 3] == b'i' && b[n - 4] != b'a' && b[n - 4] != b'e' => {
            t.truncate(n - 3);
            t.push('y');
            t
        }
        b'e' if matches!(b[n - 3], b'i' | b'a' | b'o' | b'e') => t,
        _ => {
            t.truncate(n - 1);
            t
        }
    }
}

/// Postings keyed by document slot.
#[derive(Debug, Clone, Default)]
pub struct Bm25 {
    postings: HashMap<String, HashMap<u32, u32>>,
    lengths: HashMap<u32, u32>,
    /// Distinct terms of each document, so removal touches only its postings.
    doc_terms: HashMap<u32, Vec<String>>,
    total_length: u64,
}

impl Bm25 {
    /// Indexes `text` as document `doc`, replacing what `doc` held before.
    pub fn insert(&mut self, doc: u32, text: &str) {
        self.remove(doc);
        let terms = terms(text);
        self.lengths.insert(doc, terms.len() as u32);
        self.total_length += terms.len() as u64;
        let mut distinct = Vec::new();
        for term in terms {
            let tf = self
                .postings
                .entry(term.clone())
                .or_default()
                .entry(doc)
                .or_default();
            if *tf == 0 {
                distinct.push(term);
            }
            *tf += 1;
        }
        self.doc_terms.insert(doc, distinct);
    }

    pub fn remove(&mut self, doc: u32) {
        let Some(length) = self.lengths.remove(&doc) else {
            return;
        };
        self.total_length -= u64::from(length);
        for term in self.doc_terms.remove(&doc).unwrap_or_default() {
            if let Some(docs) = self.postings.get_mut(&term) {
                docs.remove(&doc);
                if docs.is_empty() {
                    self.postings.remove(&term);
                }
            }
        }
    }

    /// BM25 score of every document matching at least one query term.
    ///
    /// # Complexity
    /// O(total postings of the query's terms).
    pub fn scores(&self, query: &str) -> HashMap<u32, f32> {
        let n = self.lengths.len() as f32;
        let mut out = HashMap::new();
        if n == 0.0 {
            return out;
        }
        let avg = self.total_length as f32 / n;
        let mut seen = Vec::new();
        for term in terms(query) {
            if seen.contains(&term) {
                continue;
            }
            let Some(docs) = self.postings.get(&term) else {
                seen.push(term);
                continue;
            };
            let df = docs.len() as f32;
            let idf = ((n - df + 0.5) / (df + 0.5) + 1.0).ln();
            for (&doc, &tf) in docs {
                let len = self.lengths.get(&doc).copied().unwrap_or(0) as f32;
                let tf = tf as f32;
                let s = idf * tf * (K1 + 1.0) / (tf + K1 * (1.0 - B + B * len / avg.max(1e-6)));
                *out.entry(doc).or_insert(0.0) += s;
            }
            seen.push(term);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plurals_fold_onto_their_singular_and_nothing_else_changes() {
        for (word, stem) in [
            ("lights", "light"),
            ("batteries", "battery"),
            ("cases", "case"),
            ("glass", "glass"),
            ("bus", "bus"),
            ("shoes", "shoes"),
            ("organic", "organic"),
            ("running", "running"),
            ("xs", "xs"),
            ("s", "s"),
            ("cafés", "café"),
            ("éies", "éy"),
            ("日本s", "日本"),
        ] {
            assert_eq!(plural_stem(word.to_string()), stem, "{word}");
        }
        // A folding, not a dictionary: "christmas" becomes "christma" on both sides alike.
        assert_eq!(terms("LED Christmas Lights"), terms("led christmas light"));
        assert_eq!(terms("the Lights of a car").len(), 2);
    }

    #[test]
    fn a_plural_query_finds_the_singular_title() {
        let mut index = Bm25::default();
        index.insert(0, "string light for the patio");
        index.insert(1, "garden hose");
        let s = index.scores("patio lights");
        assert!(s.contains_key(&0) && !s.contains_key(&1), "{s:?}");
    }

    #[test]
    fn matching_documents_score_and_rare_terms_weigh_more() {
        let mut index = Bm25::default();
        index.insert(0, "red running shoes");
        index.insert(1, "blue running jacket");
        index.insert(2, "red wool scarf");
        let s = index.scores("red shoes");
        assert!(s[&0] > s[&2], "both terms beat one");
        assert!(!s.contains_key(&1));
        index.remove(0);
        assert!(!index.scores("shoes").contains_key(&0));
        index.insert(2, "green scarf");
        assert!(
            index.scores("red").is_empty(),
            "re-inserting replaces the old text"
        );
    }
}
