//! Synonyms a shop sets for what its shoppers type and its texts say otherwise: "couch" for
//! the "Sofa" in its titles, a brand it does not sell read as the kind of product it does
//! ("blendtec => blender"). `Stats.unmatched_queries` lists the searches that need them.
//!
//! Two kinds of rule, as search engines' synonym files write them (Solr's format):
//! - equivalent phrases, `sofa, couch, settee`: each phrase typed also finds the items that
//!   hold one of the others, by their words ([`crate::bm25::Bm25::scores`] scores the group by
//!   its best-matching phrase, so an item saying two of them is not counted twice); the
//!   query's vector is the typed text's (the model knows the words are alike);
//! - a one-way reading, `blendtec, blend tec => blender`: the phrase is read as the
//!   replacement for every signal, as a spelling correction is (the response's
//!   `corrected_query` shows it).
//!
//! Phrases match whole words as the index reads them (folded, plural-free, stop words
//! skipped: "Sofas" matches "sofa"); the longest phrase starting at a word wins. A word a
//! rule names is never read as a misspelling, and a half-typed word may be completed to a
//! one-word phrase the texts lack, weighed by what it finds ("ruck" -> "rucksack").
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::RankError;
use crate::bm25::terms;

/// Most rules a shop may set.
pub const MAX_RULES: usize = 10_000;
/// Most phrases in one rule.
pub const MAX_PHRASES: usize = 64;
/// Most words in one phrase.
pub const MAX_PHRASE_WORDS: usize = 8;
/// Longest phrase, in bytes.
pub const MAX_PHRASE_BYTES: usize = 256;

/// One rule as the shop wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SynonymRule {
    /// Words or phrases a shopper may type.
    pub phrases: Vec<String>,
    /// `None`: the phrases are equivalent. `Some`: each is read as this phrase.
    pub replacement: Option<String>,
}

/// A phrase as the index reads it.
type Terms = Vec<String>;

/// The rules in force, indexed by the first word of each phrase.
#[derive(Debug, Clone, Default)]
pub struct Synonyms {
    rules: Vec<SynonymRule>,
    /// Equivalent phrases by their first term: (the phrase, the other phrases of its rule),
    /// longest phrase first.
    equivalents: HashMap<String, Vec<(Terms, Vec<Terms>)>>,
    /// One-way phrases by their first term: (the phrase, the replacement as written),
    /// longest phrase first.
    replacements: HashMap<String, Vec<(Terms, String)>>,
    /// Every term a rule names, on either side.
    named: HashSet<String>,
    /// Each phrase as the shop wrote it (trimmed), by its terms.
    written: HashMap<Terms, String>,
    /// What each rule finds: all its phrases (an equivalence) or its replacement.
    finds: Vec<Vec<Terms>>,
    /// One-word phrases, each with the first terms of what it finds (its rule's other
    /// phrases, or its replacement): a half-typed word may be completed to it, weighed by
    /// those ("ruck" -> "rucksack", weighed by "backpack").
    words: BTreeMap<String, Vec<String>>,
}

/// Why a set of rules was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynonymError {
    /// The rule at fault, counted from 0 (`None`: the set as a whole).
    pub rule: Option<usize>,
    pub reason: String,
    /// The earlier rule that already names the phrase, when that is the fault.
    pub named_by: Option<usize>,
}

impl std::fmt::Display for SynonymError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(rule) = self.rule {
            write!(f, "synonym {rule}: ")?;
        }
        f.write_str(&self.reason)?;
        match self.named_by {
            Some(other) if Some(other) != self.rule => write!(f, " (already in synonym {other})"),
            Some(_) => f.write_str(" (named twice in it)"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for SynonymError {}

impl From<SynonymError> for RankError {
    fn from(error: SynonymError) -> Self {
        RankError::InvalidInput(error.to_string())
    }
}

/// The fault `reason` of rule `rule`.
fn fault(rule: usize, reason: String) -> SynonymError {
    SynonymError {
        rule: Some(rule),
        reason,
        named_by: None,
    }
}

/// A phrase's terms, checked.
fn phrase_terms(rule: usize, phrase: &str) -> Result<Terms, SynonymError> {
    let bad = |why: String| fault(rule, why);
    if phrase.len() > MAX_PHRASE_BYTES {
        return Err(bad(format!(
            "a phrase of {} bytes; the limit is {MAX_PHRASE_BYTES}",
            phrase.len()
        )));
    }
    let terms = terms(phrase);
    if terms.is_empty() {
        return Err(bad(format!(
            "{phrase:?} has no word that search reads (stop words and punctuation are skipped)"
        )));
    }
    if terms.len() > MAX_PHRASE_WORDS {
        return Err(bad(format!(
            "{phrase:?} has {} words; the limit is {MAX_PHRASE_WORDS}",
            terms.len()
        )));
    }
    Ok(terms)
}

impl Synonyms {
    /// The rules, checked: each names 1 to [`MAX_PHRASES`] phrases (an equivalence at least
    /// two different ones) of 1 to [`MAX_PHRASE_WORDS`] searched words, and no phrase is
    /// named by two rules (which reading would win is not for the engine to guess).
    ///
    /// # Errors
    /// The rule at fault (counted from 0) and what is wrong with it.
    pub fn new(rules: Vec<SynonymRule>) -> Result<Self, SynonymError> {
        if rules.len() > MAX_RULES {
            return Err(SynonymError {
                rule: None,
                reason: format!("{} synonyms; the limit is {MAX_RULES}", rules.len()),
                named_by: None,
            });
        }
        let mut out = Self::default();
        // Each phrase (as terms) -> the rule that names it.
        let mut owner: HashMap<Terms, usize> = HashMap::new();
        for (i, rule) in rules.iter().enumerate() {
            let bad = |why: String| fault(i, why);
            if rule.phrases.is_empty() {
                return Err(bad("names no phrase".into()));
            }
            if rule.phrases.len() > MAX_PHRASES {
                return Err(bad(format!(
                    "{} phrases; the limit is {MAX_PHRASES}",
                    rule.phrases.len()
                )));
            }
            let mut phrases: Vec<Terms> = Vec::with_capacity(rule.phrases.len());
            for phrase in &rule.phrases {
                let terms = phrase_terms(i, phrase)?;
                if let Some(&other) = owner.get(&terms) {
                    return Err(SynonymError {
                        named_by: Some(other),
                        ..bad(format!("{phrase:?} is named by two synonyms"))
                    });
                }
                owner.insert(terms.clone(), i);
                out.written.insert(terms.clone(), phrase.trim().to_string());
                phrases.push(terms);
            }
            out.named.extend(phrases.iter().flatten().cloned());
            out.finds.push(phrases.clone());
            match &rule.replacement {
                None => {
                    if phrases.len() < 2 {
                        return Err(bad(format!(
                            "{:?} alone: equivalent phrases come two or more (or give a replacement)",
                            rule.phrases[0]
                        )));
                    }
                    for (p, phrase) in phrases.iter().enumerate() {
                        let others: Vec<Terms> = phrases
                            .iter()
                            .enumerate()
                            .filter(|&(o, _)| o != p)
                            .map(|(_, other)| other.clone())
                            .collect();
                        if let [word] = phrase.as_slice() {
                            let finds = others.iter().map(|o| o[0].clone()).collect();
                            out.words.insert(word.clone(), finds);
                        }
                        out.equivalents
                            .entry(phrase[0].clone())
                            .or_default()
                            .push((phrase.clone(), others));
                    }
                }
                Some(replacement) => {
                    let target = phrase_terms(i, replacement)?;
                    if let Some(same) = phrases.iter().position(|p| *p == target) {
                        return Err(bad(format!("{:?} is read as itself", rule.phrases[same])));
                    }
                    for phrase in &phrases {
                        if let [word] = phrase.as_slice() {
                            out.words.insert(word.clone(), vec![target[0].clone()]);
                        }
                    }
                    if let Some(finds) = out.finds.last_mut() {
                        *finds = vec![target.clone()];
                    }
                    out.named.extend(target);
                    for phrase in phrases {
                        out.replacements
                            .entry(phrase[0].clone())
                            .or_default()
                            .push((phrase, replacement.trim().to_string()));
                    }
                }
            }
        }
        for candidates in out.equivalents.values_mut() {
            candidates.sort_by_key(|(phrase, _)| std::cmp::Reverse(phrase.len()));
        }
        for candidates in out.replacements.values_mut() {
            candidates.sort_by_key(|(phrase, _)| std::cmp::Reverse(phrase.len()));
        }
        out.rules = rules;
        Ok(out)
    }

    /// The rules (counted from 0) that find nothing: no phrase they find (an equivalence's
    /// phrases, a one-way rule's replacement) is held by an item, as `holds` says of a
    /// phrase's terms. Such a rule is allowed (the items may come later) but worth a warning.
    pub fn finding_nothing(&self, holds: impl Fn(&[String]) -> bool) -> Vec<usize> {
        self.finds
            .iter()
            .enumerate()
            .filter(|(_, phrases)| !phrases.iter().any(|p| holds(p)))
            .map(|(i, _)| i)
            .collect()
    }

    /// The rules as they were set.
    pub fn rules(&self) -> &[SynonymRule] {
        &self.rules
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether a rule names `term` (a term as [`terms`] reads it): such a word is meant as
    /// typed, never a misspelling.
    pub fn names(&self, term: &str) -> bool {
        self.named.contains(term)
    }

    /// One-word phrases that begin with `prefix` (folded), in text order, each with the
    /// terms of what it finds (at most `limit`).
    pub fn words_beginning(&self, prefix: &str, limit: usize) -> Vec<(&str, &[String])> {
        self.words
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(word, _)| word.starts_with(prefix))
            .take(limit)
            .map(|(word, finds)| (word.as_str(), finds.as_slice()))
            .collect()
    }

    /// `query` with every phrase of a one-way rule replaced by its replacement, the rest as
    /// typed; `None` when no phrase is in it.
    pub fn rewrite(&self, query: &str) -> Option<String> {
        if self.replacements.is_empty() {
            return None;
        }
        let words = words(query);
        let mut out = String::with_capacity(query.len());
        let mut copied = 0;
        let mut i = 0;
        while i < words.len() {
            let found = self.replacements.get(&words[i].1).and_then(|candidates| {
                candidates
                    .iter()
                    .find(|(phrase, _)| starts(&words[i..], phrase))
            });
            match found {
                Some((phrase, replacement)) => {
                    let span = words[i].0.start..words[i + phrase.len() - 1].0.end;
                    out.push_str(&query[copied..span.start]);
                    out.push_str(replacement);
                    copied = span.end;
                    i += phrase.len();
                }
                None => i += 1,
            }
        }
        (copied > 0).then(|| {
            out.push_str(&query[copied..]);
            out
        })
    }

    /// Whether an equivalent phrase may start at one of `terms` (else [`Self::groups`] would
    /// leave every term alone).
    pub fn widens(&self, terms: &[String]) -> bool {
        !self.equivalents.is_empty() && terms.iter().any(|t| self.equivalents.contains_key(t))
    }

    /// The equivalent phrases, as the shop wrote them, that a query of `terms` is widened to
    /// (each phrase's rule's other phrases, in the rule's order; none twice).
    pub fn widened_to(&self, terms: &[String]) -> Vec<String> {
        if !self.widens(terms) {
            return Vec::new();
        }
        let mut out: Vec<String> = Vec::new();
        for group in self.groups(terms) {
            for phrase in group.iter().skip(1) {
                if let Some(text) = self.written.get(phrase)
                    && !out.contains(text)
                {
                    out.push(text.clone());
                }
            }
        }
        out
    }

    /// A query's terms in groups, each a list of alternative phrases: a phrase of an
    /// equivalence (the longest starting at a term) with its rule's other phrases after it,
    /// and every other term alone.
    pub fn groups(&self, terms: &[String]) -> Vec<Vec<Terms>> {
        let mut out = Vec::with_capacity(terms.len());
        let mut i = 0;
        while i < terms.len() {
            let found = self.equivalents.get(&terms[i]).and_then(|candidates| {
                candidates
                    .iter()
                    .find(|(phrase, _)| terms[i..].starts_with(phrase))
            });
            match found {
                Some((phrase, others)) => {
                    let mut group = Vec::with_capacity(1 + others.len());
                    group.push(phrase.clone());
                    group.extend(others.iter().cloned());
                    out.push(group);
                    i += phrase.len();
                }
                None => {
                    out.push(vec![vec![terms[i].clone()]]);
                    i += 1;
                }
            }
        }
        out
    }
}

/// Whether the words begin with `phrase`'s terms.
fn starts(words: &[(Range<usize>, String)], phrase: &[String]) -> bool {
    words.len() >= phrase.len() && words.iter().zip(phrase).all(|((_, t), p)| t == p)
}

/// The query's searched words: each one's place in `query` and its term (stop words, which
/// have none, are left out, so a phrase matches across them as the index does).
fn words(query: &str) -> Vec<(Range<usize>, String)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in query
        .char_indices()
        .chain(std::iter::once((query.len(), ' ')))
    {
        match (c.is_alphanumeric(), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                if let Some(term) = terms(&query[s..i]).pop() {
                    out.push((s..i, term));
                }
                start = None;
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(phrases: &[&str], replacement: Option<&str>) -> SynonymRule {
        SynonymRule {
            phrases: phrases.iter().map(|p| p.to_string()).collect(),
            replacement: replacement.map(str::to_string),
        }
    }

    fn shop() -> Synonyms {
        Synonyms::new(vec![
            rule(&["sofa", "couch", "settee"], None),
            rule(&["hoodie", "hooded sweatshirt"], None),
            rule(&["blendtec", "blend tec"], Some("blender")),
            rule(&["tv"], Some("television")),
        ])
        .unwrap()
    }

    #[test]
    fn a_one_way_phrase_is_replaced_and_the_rest_kept_as_typed() {
        let synonyms = shop();
        for (query, want) in [
            ("Blendtec", Some("blender")),
            ("blendtec 570, black", Some("blender 570, black")),
            ("Blend-Tec jar", Some("blender jar")),
            ("blend the tec", Some("blender")),
            ("TVs under 500", Some("television under 500")),
            ("smart tv stand", Some("smart television stand")),
            ("tvstand", None),
            ("blend", None),
            ("sofa", None),
            ("", None),
        ] {
            assert_eq!(synonyms.rewrite(query).as_deref(), want, "{query:?}");
        }
    }

    #[test]
    fn an_equivalent_phrase_brings_its_rule_s_others_longest_first() {
        let synonyms = shop();
        let t = |s: &str| terms(s);
        assert_eq!(
            synonyms.groups(&t("leather sofas")),
            vec![vec![t("leather")], vec![t("sofa"), t("couch"), t("settee")]]
        );
        assert_eq!(
            synonyms.groups(&t("grey hooded sweatshirt")),
            vec![vec![t("grey")], vec![t("hooded sweatshirt"), t("hoodie")]]
        );
        // "hooded" alone is no phrase of the rule.
        assert_eq!(
            synonyms.groups(&t("hooded jacket")),
            vec![vec![t("hooded")], vec![t("jacket")]]
        );
        assert_eq!(
            synonyms.widened_to(&t("Leather Sofas")),
            ["couch", "settee"]
        );
        assert_eq!(synonyms.widened_to(&t("hooded sweatshirt")), ["hoodie"]);
        assert!(
            synonyms.widened_to(&t("tv stand")).is_empty(),
            "one-way: a reading"
        );
        assert!(synonyms.names("settee") && synonyms.names("television"));
        assert!(!synonyms.names("leather"));
    }

    #[test]
    fn a_rule_that_cannot_be_read_is_refused_by_its_number() {
        for (rules, why) in [
            (vec![rule(&[], None)], "synonym 0: names no phrase"),
            (
                vec![rule(&["sofa"], None)],
                "synonym 0: \"sofa\" alone: equivalent phrases come two or more",
            ),
            (
                vec![
                    rule(&["sofa", "couch"], None),
                    rule(&["Sofas", "divan"], None),
                ],
                "synonym 1: \"Sofas\" is named by two synonyms (already in synonym 0)",
            ),
            (
                vec![rule(&["sofa", "the", "couch"], None)],
                "synonym 0: \"the\" has no word that search reads",
            ),
            (
                vec![rule(&["tv"], Some("TVs"))],
                "synonym 0: \"tv\" is read as itself",
            ),
            (
                vec![rule(&["tv"], Some("!"))],
                "synonym 0: \"!\" has no word",
            ),
            (
                vec![rule(
                    &["one two three four five six seven eight nine"],
                    Some("x"),
                )],
                "has 9 words; the limit is 8",
            ),
        ] {
            let error = Synonyms::new(rules).unwrap_err().to_string();
            assert!(error.contains(why), "{error} (wanted {why})");
        }
    }
}
