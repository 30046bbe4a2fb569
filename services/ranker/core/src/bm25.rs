//! An incremental BM25 index over item texts (Robertson/Sparck Jones, k1 = 1.2, b = 0.75).
use std::collections::HashMap;

use crate::catalog::IdHash;

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

/// A document's length slot when the document is not indexed.
const ABSENT: u32 = u32::MAX;

/// Postings keyed by document slot. Documents are the catalog's slots (small dense numbers), so
/// lengths sit in an array and the postings and scores hash them with the id hasher: a common
/// word ("black") matches a tenth of a 100k-item catalog, and SipHash over those postings was
/// most of a search's BM25 cost.
#[derive(Debug, Clone, Default)]
pub struct Bm25 {
    postings: HashMap<String, HashMap<u32, u32, IdHash>>,
    /// Term count of each document, [`ABSENT`] where none is indexed.
    lengths: Vec<u32>,
    documents: usize,
    /// Distinct terms of each document, so removal touches only its postings.
    doc_terms: Vec<Vec<String>>,
    total_length: u64,
}

impl Bm25 {
    /// Indexes `text` as document `doc`, replacing what `doc` held before.
    pub fn insert(&mut self, doc: u32, text: &str) {
        self.remove(doc);
        let terms = terms(text);
        let i = doc as usize;
        if self.lengths.len() <= i {
            self.lengths.resize(i + 1, ABSENT);
            self.doc_terms.resize_with(i + 1, Vec::new);
        }
        // A text of 4 billion terms cannot arrive (requests are capped far below), but its
        // length must not collide with ABSENT if it did.
        self.lengths[i] = (terms.len() as u32).min(ABSENT - 1);
        self.documents += 1;
        self.total_length += u64::from(self.lengths[i]);
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
        self.doc_terms[i] = distinct;
    }

    pub fn remove(&mut self, doc: u32) {
        let i = doc as usize;
        let Some(&length) = self.lengths.get(i).filter(|&&l| l != ABSENT) else {
            return;
        };
        self.lengths[i] = ABSENT;
        self.documents -= 1;
        self.total_length -= u64::from(length);
        for term in std::mem::take(&mut self.doc_terms[i]) {
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
    pub fn scores(&self, query: &str) -> HashMap<u32, f32, IdHash> {
        let n = self.documents as f32;
        let mut out = HashMap::default();
        if self.documents == 0 {
            return out;
        }
        let avg = (self.total_length as f32 / n).max(1e-6);
        // Each distinct term once, in query order (the order the scores are summed in).
        let mut seen: Vec<String> = Vec::new();
        let mut postings: Vec<&HashMap<u32, u32, IdHash>> = Vec::new();
        for term in terms(query) {
            if !seen.contains(&term) {
                postings.extend(self.postings.get(&term));
                seen.push(term);
            }
        }
        out.reserve(postings.iter().map(|d| d.len()).max().unwrap_or(0));
        for docs in postings {
            let df = docs.len() as f32;
            let idf = ((n - df + 0.5) / (df + 0.5) + 1.0).ln();
            for (&doc, &tf) in docs {
                let len = self.lengths.get(doc as usize).copied().unwrap_or(0) as f32;
                let tf = tf as f32;
                let s = idf * tf * (K1 + 1.0) / (tf + K1 * (1.0 - B + B * len / avg));
                *out.entry(doc).or_insert(0.0) += s;
            }
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

    /// After inserts, replacements and removals (some of documents never indexed, on slots
    /// far apart), every score equals BM25 recomputed from scratch over the texts then held.
    #[test]
    fn scores_match_a_recount_after_any_edits() {
        let words = [
            "red", "shoe", "lamp", "oak", "black", "mug", "glass", "wool",
        ];
        let mut held: HashMap<u32, String> = HashMap::new();
        let mut index = Bm25::default();
        let mut rng = crate::rng::XorShift::new(11);
        let mut next = |n: usize| (rng.unit() * n as f64) as usize;
        for step in 0..400 {
            let doc = [0, 1, 2, 7, 40, 1000, 4097][next(7)];
            if next(4) == 0 {
                index.remove(doc);
                held.remove(&doc);
            } else {
                let text: Vec<&str> = (0..1 + next(6)).map(|_| words[next(8)]).collect();
                let text = text.join(" ");
                index.insert(doc, &text);
                held.insert(doc, text);
            }
            if step % 20 != 19 {
                continue;
            }
            let query = "black red shoe red";
            let n = held.len() as f32;
            let lengths: HashMap<u32, f32> = held
                .iter()
                .map(|(d, t)| (*d, terms(t).len() as f32))
                .collect();
            let avg = (lengths.values().sum::<f32>() / n).max(1e-6);
            let mut expected: HashMap<u32, f32> = HashMap::new();
            for term in ["black", "red", "shoe"] {
                let df = held
                    .values()
                    .filter(|t| terms(t).contains(&term.into()))
                    .count() as f32;
                let idf = ((n - df + 0.5) / (df + 0.5) + 1.0).ln();
                for (doc, text) in &held {
                    let tf = terms(text).iter().filter(|t| *t == term).count() as f32;
                    if tf > 0.0 {
                        let norm = 1.0 - B + B * lengths[doc] / avg;
                        *expected.entry(*doc).or_default() +=
                            idf * tf * (K1 + 1.0) / (tf + K1 * norm);
                    }
                }
            }
            let got = index.scores(query);
            assert_eq!(
                got.len(),
                expected.len(),
                "step {step}: {got:?} vs {expected:?}"
            );
            for (doc, want) in expected {
                let have = got.get(&doc).copied().unwrap_or(f32::NAN);
                assert!(
                    (have - want).abs() < 1e-5,
                    "step {step} doc {doc}: {have} vs {want}"
                );
            }
        }
    }
}
