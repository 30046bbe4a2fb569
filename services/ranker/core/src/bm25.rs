//! An incremental BM25 index over item texts (Robertson/Sparck Jones, k1 = 1.2, b = 0.75).
use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::Bound;
use std::sync::Arc;

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

use crate::catalog::IdHash;
use crate::rng::SlotSample;
use crate::slots::{RankedBits, SlotBits};
use crate::synonyms::Synonyms;

const K1: f32 = 1.2;
const B: f32 = 0.75;

/// A posting's term frequency with this bit set: the term is in the document's title.
const IN_TITLE: u32 = 1 << 31;

/// The share of [`Matches::relevance`] that is the query's words the item holds ([`Match::words`]);
/// the rest is BM25 over the whole text, normalised by the best match's. Measured on
/// Crowdflower dev (`soukctl eval search`, `Rank`'s default weights 0.55 dense + 0.20 this;
/// BENCHMARKS.md "Session 20").
const WORDS_SHARE: f32 = 0.9;

/// What a query word found in the description (not the title) counts for in [`Match::words`]
/// (in the title: 1).
const DESCRIPTION_WORD: f32 = 0.5;

const STOP: &[&str] = &[
    "the", "and", "for", "with", "a", "an", "of", "in", "on", "to", "is", "by",
];

/// Lower-cased alphanumeric terms without accents ("Crème" matches "creme"), plurals folded
/// ("lights" matches "light", "batteries" matches "battery"); a few stop words are dropped.
/// Chinese, Japanese and Korean, written without spaces between words, become overlapping
/// pairs of characters (Lucene's CJK bigrams: "咖啡研磨机" is 咖啡, 啡研, 研磨, 磨机), so a
/// search for 研磨机 finds the grinder; a lone character is its own term.
pub fn terms(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for token in text.split(|c: char| !c.is_alphanumeric()) {
        if token.is_empty() {
            continue;
        }
        if token.is_ascii() || !token.chars().any(is_cjk) {
            push_word(token, &mut out);
            continue;
        }
        // Runs of CJK characters as bigrams, the letters and digits between them as words.
        let chars: Vec<(usize, char)> = token.char_indices().collect();
        let mut i = 0;
        while i < chars.len() {
            let cjk = is_cjk(chars[i].1);
            let mut j = i;
            while j < chars.len() && is_cjk(chars[j].1) == cjk {
                j += 1;
            }
            let end = chars.get(j).map_or(token.len(), |c| c.0);
            let run = &token[chars[i].0..end];
            if !cjk {
                push_word(run, &mut out);
            } else if j - i == 1 {
                out.push(fold(run));
            } else {
                for k in i..j - 1 {
                    let pair_end = chars.get(k + 2).map_or(token.len(), |c| c.0);
                    out.push(fold(&token[chars[k].0..pair_end]));
                }
            }
            i = j;
        }
    }
    out
}

/// One word's term, unless it is a stop word.
fn push_word(word: &str, out: &mut Vec<String>) {
    let folded = fold(word);
    if !STOP.contains(&folded.as_str()) {
        out.push(plural_stem(folded));
    }
}

/// A character of a script written without spaces between words, as Lucene's CJK bigram
/// filter takes them: Han ideographs, Hiragana, Katakana (full and half width), Hangul.
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3400..=0x4DBF // CJK Unified Ideographs Extension A
        | 0x4E00..=0x9FFF // CJK Unified Ideographs
        | 0xF900..=0xFAFF // CJK Compatibility Ideographs
        | 0x20000..=0x2FFFF // Extensions B and later
        | 0x3040..=0x309F // Hiragana
        | 0x30A0..=0x30FF // Katakana
        | 0x31F0..=0x31FF // Katakana Phonetic Extensions
        | 0xFF66..=0xFF9F // Halfwidth Katakana
        | 0xAC00..=0xD7AF // Hangul Syllables
    )
}

/// A word lower-cased, with its accents and other combining marks dropped (canonical
/// decomposition: "é" -> "e", "ñ" -> "n", "ö" -> "o") and the Latin letters that do not
/// decompose written out as Lucene's ASCII folding does ("ß" -> "ss", "æ" -> "ae", "ø" ->
/// "o", "ł" -> "l"): shoppers type "creme brulee" for "Crème Brûlée". Other scripts keep
/// their letters (CJK has no marks to drop; a Hangul syllable decomposes into its jamo on
/// both sides alike).
pub fn fold(word: &str) -> String {
    if word.is_ascii() {
        return word.to_ascii_lowercase();
    }
    let mut out = String::with_capacity(word.len());
    for c in word.nfd().filter(|c| !is_combining_mark(*c)) {
        match c {
            'ß' | 'ẞ' => out.push_str("ss"),
            'æ' | 'Æ' => out.push_str("ae"),
            'œ' | 'Œ' => out.push_str("oe"),
            'þ' | 'Þ' => out.push_str("th"),
            'ø' | 'Ø' => out.push('o'),
            'ł' | 'Ł' => out.push('l'),
            'đ' | 'Đ' | 'ð' | 'Ð' => out.push('d'),
            'ı' => out.push('i'),
            c => out.extend(c.to_lowercase()),
        }
    }
    out
}

/// A spelling lexicon (see [`Bm25::set_lexicon`]) of `words` (the encoder's `Words`), folded
/// as query words are looked up in it.
pub fn lexicon<S: AsRef<str>>(words: impl IntoIterator<Item = S>) -> Arc<HashSet<String>> {
    Arc::new(words.into_iter().map(|w| fold(w.as_ref())).collect())
}

/// Query words shorter than this are never corrected: one edit turns most 3-letter words into
/// another word ("mug" -> "rug"), so a short miss is more likely a word the shop lacks.
const MIN_CORRECTED_CHARS: usize = 4;
/// Longer words are never corrected: a word's neighbours are ~55 x its letters strings of its
/// length, and a query is not bounded by the API.
const MAX_CORRECTED_CHARS: usize = 32;
/// Unknown words corrected per query (the first ones): bounds a query's correction to ~1 ms.
const MAX_CORRECTED_WORDS: usize = 8;
/// Words of at least this many letters with no indexed term one edit away are corrected to
/// one two edits away (Lucene's fuzzy "AUTO" allows two edits from 6 letters on: shorter
/// words have too many two-edit neighbours).
const MIN_TWO_EDIT_CHARS: usize = 6;

/// Fewest letters of a half-typed last word that [`Bm25::complete`] reads: one letter begins
/// too many terms to guess from.
const MIN_PREFIX_CHARS: usize = 2;
/// Terms a half-typed word begins that are weighed by the query's other words: those in the
/// most documents.
const COMPLETIONS: usize = 16;
/// Other query words a half-typed word's completions are weighed against: the last ones.
const CONTEXT_WORDS: usize = 8;
/// Terms a half-typed word's completions are picked from, at most (in text order): "co"
/// begins ~1,200 of the 37k terms of Crowdflower's and Flipkart's texts.
const PREFIX_SCAN: usize = 4096;

/// Fewest letters of each part of a query word split in two ([`Bm25::split`]): "soda" +
/// "stream"; shorter parts are inside most words by chance.
const MIN_SPLIT_CHARS: usize = 3;

/// Letters each part of a split needs to be read instead of a term two edits away.
const MIN_TWO_WORD_CHARS: usize = 4;

/// `query` split before its last word (the word a shopper is typing): ("wireless ", "headp").
/// The last word is empty when the query ends in anything but a letter or digit.
pub fn last_word(query: &str) -> (&str, &str) {
    let start = query
        .char_indices()
        .rev()
        .find(|(_, c)| !c.is_alphanumeric())
        .map_or(0, |(i, c)| i + c.len_utf8());
    query.split_at(start)
}

/// Documents `docs` shares with the `context` word it shares most with (0 without context).
fn shared(docs: &Postings, context: &[&Postings]) -> usize {
    context
        .iter()
        .map(|other| docs.shared(other))
        .max()
        .unwrap_or(0)
}

/// Documents `docs` shares with a `context` word it is found with more often than chance
/// (shared / its documents over the share of all `total` documents the word is in), the most
/// of them; 0 when it goes with none. A word in every description ("Loved by reviewers") is
/// found with everything about as often as chance, so it is no reading of a misspelt word.
fn found_with(docs: &Postings, context: &[&Postings], total: usize) -> usize {
    context
        .iter()
        .map(|other| {
            let both = shared(docs, &[*other]);
            let chance = docs.len() as f64 * other.len() as f64 / total.max(1) as f64;
            if both as f64 > chance { both } else { 0 }
        })
        .max()
        .unwrap_or(0)
}

/// A term a half-typed word may become (see [`Bm25::complete`]).
struct Completion<'a> {
    term: &'a str,
    /// Documents it shares with the query's other word it shares most with, when more than
    /// chance (see `found_with`; else 0); all of its own when the query has no other indexed
    /// word.
    items: usize,
    /// Documents holding it.
    documents: usize,
    /// Whether it is the typed word itself.
    itself: bool,
}

/// A term's letters as a set of bits (a-z, digits, anything else by its code): an edit
/// changes at most two letters' presence, so two edits change at most four bits, and most
/// terms are ruled out by one popcount.
fn letter_bits(term: &str) -> u64 {
    term.chars().fold(0, |bits, c| {
        let bit = match c {
            'a'..='z' => c as u32 - 'a' as u32,
            '0'..='9' => 26 + c as u32 - '0' as u32,
            _ => 36 + c as u32 % 28,
        };
        bits | 1 << bit
    })
}

/// Optimal-string-alignment distance (deletions, insertions, replacements and swaps of two
/// neighbours, each 1) between `a` and `b`, or `None` once it is over `max`. Only the band of
/// cells within `max` of the diagonal is computed (the others are over it), and words of up
/// to [`EDIT_LETTERS`] - 1 letters (longer: `None`), so the rows live on the stack.
fn edit_distance<T: PartialEq>(a: &[T], b: &[T], max: usize) -> Option<usize> {
    if a.len().abs_diff(b.len()) > max || b.len() >= EDIT_LETTERS || a.len() >= EDIT_LETTERS {
        return None;
    }
    // Cells over `max` are all `over` (so they fit a byte); rows on the stack, rotated by
    // index: two back (for swaps), the last, the one being filled.
    let over = (max + 1).min(usize::from(u8::MAX)) as u8;
    let mut rows = [[over; EDIT_LETTERS]; 3];
    for (j, cell) in rows[1].iter_mut().enumerate().take(b.len().min(max) + 1) {
        *cell = j as u8;
    }
    let (mut before, mut last, mut row) = (0, 1, 2);
    for i in 1..=a.len() {
        let (low, high) = (i.saturating_sub(max).max(1), (i + max).min(b.len()));
        // The cell left of the band: this array held row i - 3, whose band covered it. (The
        // band only moves right, so the cells right of it were never written.)
        let first = if i <= max { i as u8 } else { over };
        rows[row][0] = first;
        rows[row][low - 1] = if low > 1 { over } else { first };
        let mut least = first;
        for j in low..=high {
            let cost = u8::from(a[i - 1] != b[j - 1]);
            let mut d = (rows[last][j] + 1)
                .min(rows[row][j - 1] + 1)
                .min(rows[last][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(rows[before][j - 2] + 1);
            }
            let d = d.min(over);
            rows[row][j] = d;
            least = least.min(d);
        }
        if usize::from(least) > max {
            return None;
        }
        (before, last, row) = (last, row, before);
    }
    Some(usize::from(rows[last][b.len()])).filter(|&d| d <= max)
}

/// Room in [`edit_distance`]'s rows: a corrected word has at most [`MAX_CORRECTED_CHARS`]
/// letters and a term two edits from it two more.
const EDIT_LETTERS: usize = MAX_CORRECTED_CHARS + 4;

/// The indexed terms a two-edit correction may become (letters only, 4 to 34 of them), by
/// length in letters, each with its letter bits, kept in step with the postings: a word's
/// search reads the five lengths within two of its own and skips most terms there on a
/// popcount (37k terms of Crowdflower and Flipkart texts: BENCHMARKS.md, "two edits").
#[derive(Debug, Clone, Default)]
struct Vocabulary {
    by_length: Vec<Terms>,
    /// Each term's length and place in its `Terms`.
    at: HashMap<String, (usize, usize)>,
}

/// Terms of one length, with their letter bits side by side for the scan.
#[derive(Debug, Clone, Default)]
struct Terms {
    bits: Vec<u64>,
    terms: Vec<String>,
}

impl Vocabulary {
    fn add(&mut self, term: &str) {
        let length = term.chars().count();
        if !(MIN_CORRECTED_CHARS..=MAX_CORRECTED_CHARS + 2).contains(&length)
            || term.contains(|c: char| c.is_numeric())
            || self.at.contains_key(term)
        {
            return;
        }
        if self.by_length.len() <= length {
            self.by_length.resize_with(length + 1, Terms::default);
        }
        let terms = &mut self.by_length[length];
        self.at
            .insert(term.to_string(), (length, terms.terms.len()));
        terms.bits.push(letter_bits(term));
        terms.terms.push(term.to_string());
    }

    fn remove(&mut self, term: &str) {
        let Some((length, i)) = self.at.remove(term) else {
            return;
        };
        let Some(terms) = self.by_length.get_mut(length) else {
            return;
        };
        terms.bits.swap_remove(i);
        terms.terms.swap_remove(i);
        if let Some(moved) = terms.terms.get(i) {
            self.at.insert(moved.clone(), (length, i));
        }
    }

    /// The terms within two letters of `length` whose letter bits differ from `bits` in at
    /// most four places (two edits change at most four letters' presence).
    fn near(&self, bits: u64, length: usize) -> Vec<&str> {
        let lengths = length.saturating_sub(2)..(length + 3).min(self.by_length.len());
        let mut near = Vec::new();
        let mut places = Vec::new();
        for t in self.by_length.get(lengths).unwrap_or_default() {
            places.clear();
            within_four_bits(&t.bits, bits, &mut places);
            near.extend(
                places
                    .iter()
                    .filter_map(|&i| t.terms.get(i))
                    .map(String::as_str),
            );
        }
        near
    }
}

/// Appends to `places` the places in `all` whose bits differ from `bits` in at most four:
/// with the CPU's popcount instruction where it has one (the build targets baseline x86-64,
/// whose `count_ones` is a dozen instructions, and this is the two-edit search's scan).
fn within_four_bits(all: &[u64], bits: u64, places: &mut Vec<usize>) {
    #[inline(always)]
    fn scan(all: &[u64], bits: u64, places: &mut Vec<usize>) {
        for (i, b) in all.iter().enumerate() {
            if (b ^ bits).count_ones() <= 4 {
                places.push(i);
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "popcnt")]
        fn scan_popcnt(all: &[u64], bits: u64, places: &mut Vec<usize>) {
            scan(all, bits, places);
        }
        if std::is_x86_feature_detected!("popcnt") {
            // SAFETY: the CPU has POPCNT, checked at run time just above.
            #[allow(unsafe_code)]
            return unsafe { scan_popcnt(all, bits, places) };
        }
    }
    scan(all, bits, places);
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

/// English endings a word of the lexicon may take and still be a word: a WordPiece
/// vocabulary holds "blend" and "project" but splits "blender" and "projector". Longest first.
const ENDINGS: &[&str] = &[
    "ments", "ings", "ment", "ness", "less", "able", "ers", "ors", "ing", "ful", "er", "or", "ed",
    "ly", "es", "s",
];

/// Whether `word` (folded) is in `lexicon`, or is a word of it of 4+ letters with one of the
/// [`ENDINGS`]: as written ("blend-er"), before an ending that begins with a vowel with a final
/// "e" dropped ("mak-er") or a final consonant doubled ("shopp-er"), or with "y" turned "i"
/// ("tidi-ness"). Shorter words take endings by chance: "hower" is "how" + "er", "wirless"
/// German "wir" + "less".
fn is_word(lexicon: &HashSet<String>, word: &str) -> bool {
    let known = |w: &str| w.chars().count() >= 4 && lexicon.contains(w);
    lexicon.contains(word)
        || ENDINGS.iter().any(|ending| {
            // No "-s" after an "s": "assassinss" is a slip for "assassins".
            let Some(stem) = word
                .strip_suffix(ending)
                .filter(|stem| !(*ending == "s" && stem.ends_with('s')))
            else {
                return false;
            };
            let mut last = stem.chars().rev();
            let (Some(z), Some(y)) = (last.next(), last.next()) else {
                return false;
            };
            let cut = &stem[..stem.len() - z.len_utf8()];
            let vowel = ending.starts_with(['a', 'e', 'i', 'o']);
            known(stem)
                || (vowel && known(&format!("{stem}e")))
                || (vowel && z == y && known(cut))
                || (z == 'i' && known(&format!("{cut}y")))
        })
}

/// Alternative phrases (each a list of terms) a query's words may be read as, the typed one
/// first ([`Bm25::scores`] scores a document by the best).
type Group = Vec<Vec<String>>;

/// A document's length slot when the document is not indexed.
const ABSENT: u32 = u32::MAX;

/// Out-of-order postings a list gathers before they are merged into its sorted run: this
/// many, or the square root of the run's length where that is more (a late posting costs a
/// shift of up to that many, and its share of a merge about as much: ~300 for a common
/// word's 100k postings).
const LATE_POSTINGS: usize = 64;

/// One term's postings: the documents holding it, each with its count (the [`IN_TITLE`] bit
/// set where the title holds it). 8 bytes a posting, where a `HashMap<u32, u32>` per term
/// took ~17-20 with its tables' slack (the largest share of a described item's memory), and
/// a scan reads them front to back (BENCHMARKS.md, "Session 31").
///
/// Documents indexed in ascending order (a load: new items take new slots) are appended to a
/// sorted run. A document put out of order (an edited title gaining a word) goes to a short
/// sorted `late` list, merged into the run now and then ([`LATE_POSTINGS`]), instead of
/// shifting a common word's ~100k postings. A removed document's posting stays as a
/// tombstone (count 0) until tombstones outnumber the live postings, so a removal is a
/// binary search, and a document indexed again with the same words (a catalog loaded again)
/// takes its tombstones back in place. A document is in the run or in `late`, never both.
#[derive(Debug, Clone, Default)]
struct Postings {
    /// Ascending by document.
    entries: Vec<(u32, u32)>,
    /// Ascending by document, each under the run's last document.
    late: Vec<(u32, u32)>,
    /// Postings with a count (not tombstones).
    live: u32,
}

/// Two sorted lists of postings as one, ascending (a document in at most one of them).
fn merge_sorted<'a>(
    a: &'a [(u32, u32)],
    b: &'a [(u32, u32)],
) -> impl Iterator<Item = (u32, u32)> + 'a {
    let (mut i, mut j) = (0, 0);
    std::iter::from_fn(move || {
        let next = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x.0 < y.0 => {
                i += 1;
                x
            }
            (_, Some(y)) => {
                j += 1;
                y
            }
            (Some(x), None) => {
                i += 1;
                x
            }
            (None, None) => return None,
        };
        Some(*next)
    })
}

/// Where `doc` is in a sorted list of postings, or where it would go.
fn find(list: &[(u32, u32)], doc: u32) -> Result<usize, usize> {
    list.binary_search_by_key(&doc, |&(d, _)| d)
}

/// `doc`'s count in a sorted list of postings (0 where it is not there or a tombstone).
fn count_in(list: &[(u32, u32)], doc: u32) -> u32 {
    find(list, doc).map_or(0, |i| list[i].1)
}

/// Documents both sorted lists hold with a count: each of `small`'s looked up in `large` from
/// where the last one was found.
fn shared_sorted(small: &[(u32, u32)], large: &[(u32, u32)]) -> usize {
    let mut rest = large;
    let mut both = 0;
    for &(doc, tf) in small {
        if tf == 0 {
            continue;
        }
        rest = &rest[rest.partition_point(|&(d, _)| d < doc)..];
        match rest.first() {
            None => break,
            Some(&(d, tf)) if d == doc && tf != 0 => both += 1,
            Some(_) => {}
        }
    }
    both
}

impl Postings {
    /// Documents holding the term.
    fn len(&self) -> usize {
        self.live as usize
    }

    fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Each document holding the term, ascending.
    fn docs(&self) -> impl Iterator<Item = u32> + '_ {
        self.sorted().map(|(doc, _)| doc)
    }

    fn contains(&self, doc: u32) -> bool {
        self.count(doc) != 0
    }

    /// `doc`'s count (0 where it does not hold the term).
    fn count(&self, doc: u32) -> u32 {
        match count_in(&self.entries, doc) {
            0 => count_in(&self.late, doc),
            tf => tf,
        }
    }

    /// Sets `doc`'s count to `tf` (not 0).
    fn put(&mut self, doc: u32, tf: u32) {
        debug_assert!(tf != 0, "a count of 0 is a tombstone");
        // Past the run's last document, so in neither list (`late` is all under it).
        if self.entries.last().is_none_or(|&(last, _)| last < doc) {
            self.make_room();
            self.entries.push((doc, tf));
            self.live += 1;
            return;
        }
        let (list, at) = match find(&self.entries, doc) {
            Ok(i) => (&mut self.entries, Ok(i)),
            Err(_) => {
                let at = find(&self.late, doc);
                (&mut self.late, at)
            }
        };
        match at {
            Ok(i) => {
                if list[i].1 == 0 {
                    self.live += 1;
                }
                list[i].1 = tf;
            }
            Err(i) => {
                list.insert(i, (doc, tf));
                self.live += 1;
                if self.late.len() >= LATE_POSTINGS.max(self.entries.len().isqrt()) {
                    self.merge();
                }
            }
        }
    }

    /// Room for one more posting in the run: a quarter more when full, not double (a list
    /// keeps ~10% spare on average instead of ~40%; the extra copies while loading are a few
    /// memcpy of the postings).
    fn make_room(&mut self) {
        let len = self.entries.len();
        if len == self.entries.capacity() {
            self.entries.reserve_exact(len / 4 + 1);
        }
    }

    /// Takes `doc` out (a tombstone; tombstones are swept out when they outnumber the live
    /// postings, so that costs O(1) a removal over time).
    fn remove(&mut self, doc: u32) {
        let tf = match find(&self.entries, doc) {
            Ok(i) => &mut self.entries[i].1,
            Err(_) => match find(&self.late, doc) {
                Ok(i) => &mut self.late[i].1,
                Err(_) => return,
            },
        };
        if *tf == 0 {
            return;
        }
        *tf = 0;
        self.live -= 1;
        if self.entries.len() + self.late.len() > 2 * self.live as usize + 8 {
            self.merge();
        }
    }

    /// Each document holding the term with its count, ascending.
    fn sorted(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        merge_sorted(&self.entries, &self.late).filter(|&(_, tf)| tf != 0)
    }

    /// One sorted run of the live postings: `late` merged in, tombstones dropped.
    fn merge(&mut self) {
        let mut merged = Vec::with_capacity(self.live as usize + self.live as usize / 8);
        merged.extend(self.sorted());
        self.entries = merged;
        self.late.clear();
    }

    /// Documents both lists hold.
    fn shared(&self, other: &Postings) -> usize {
        let (small, large) = if self.entries.len() <= other.entries.len() {
            (self, other)
        } else {
            (other, self)
        };
        // Run with run, then each late posting looked up once: small's in all of large,
        // large's in small's run (small's late ones with them are counted already).
        let mut both = shared_sorted(&small.entries, &large.entries);
        both += small
            .late
            .iter()
            .filter(|&&(doc, tf)| tf != 0 && large.contains(doc))
            .count();
        both += large
            .late
            .iter()
            .filter(|&&(doc, tf)| tf != 0 && count_in(&small.entries, doc) != 0)
            .count();
        both
    }
}

/// Each indexed term's number, for [`Bm25`]'s lists of the terms in each document: 4 bytes
/// per term a document holds instead of a `String` of its own (~56 bytes), which was most of
/// the ranker's memory for items with descriptions (BENCHMARKS.md, "Session 30").
#[derive(Debug, Clone, Default)]
struct TermIds {
    ids: HashMap<String, u32>,
    /// Each number's term ("" while the number is free).
    names: Vec<String>,
    free: Vec<u32>,
}

impl TermIds {
    /// `term`'s number, given it now if it has none.
    fn id(&mut self, term: &str) -> u32 {
        if let Some(&id) = self.ids.get(term) {
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.names[id as usize] = term.to_string();
                id
            }
            None => {
                self.names.push(term.to_string());
                (self.names.len() - 1) as u32
            }
        };
        self.ids.insert(term.to_string(), id);
        id
    }

    fn name(&self, id: u32) -> &str {
        self.names.get(id as usize).map_or("", String::as_str)
    }

    /// Frees the number of a term no document holds any more.
    fn release(&mut self, id: u32) {
        if let Some(name) = self.names.get_mut(id as usize) {
            self.ids.remove(name.as_str());
            *name = String::new();
            self.free.push(id);
        }
    }
}

/// Postings by document slot. Documents are the catalog's slots (small dense numbers), so
/// lengths sit in an array, each term's postings are a sorted list of slots ([`Postings`]),
/// and a query's sums are merged from those lists into one sorted list ([`Matches`]): a
/// common word ("black") matches a tenth of the catalog, and hashing every one of those
/// slots (SipHash, then the id hasher into a map per query) was most of a search's BM25 cost.
#[derive(Debug, Clone, Default)]
pub struct Bm25 {
    postings: HashMap<String, Postings>,
    /// Term count of each document, [`ABSENT`] where none is indexed.
    lengths: Vec<u32>,
    documents: usize,
    /// Distinct terms of each document (by number), so removal touches only its postings.
    doc_terms: Vec<Box<[u32]>>,
    term_ids: TermIds,
    total_length: u64,
    vocabulary: Vocabulary,
    /// Every term in text order, for completing a half-typed word.
    sorted: BTreeSet<String>,
    /// Words of the language (folded), which are never read as misspellings.
    lexicon: Option<Arc<HashSet<String>>>,
    /// The shop's synonyms, applied to queries.
    synonyms: Arc<Synonyms>,
}

impl Bm25 {
    /// Distinct indexed terms (the vocabulary the spelling check reads).
    pub fn terms_len(&self) -> usize {
        self.postings.len()
    }

    /// Words of the language (folded, see [`fold`]) that [`Bm25::correct`] leaves as typed
    /// although the catalog lacks them; `None` reads every unknown word as a possible slip.
    pub fn set_lexicon(&mut self, lexicon: Option<Arc<HashSet<String>>>) {
        self.lexicon = lexicon;
    }

    /// The lexicon in use, if any.
    pub fn lexicon(&self) -> Option<Arc<HashSet<String>>> {
        self.lexicon.clone()
    }

    /// The shop's synonyms: queries are read and scored with them (see [`Synonyms`]).
    pub fn set_synonyms(&mut self, synonyms: Arc<Synonyms>) {
        self.synonyms = synonyms;
    }

    pub fn synonyms(&self) -> &Synonyms {
        &self.synonyms
    }

    /// Words in the lexicon (0 without one).
    pub fn lexicon_len(&self) -> usize {
        self.lexicon.as_ref().map_or(0, |l| l.len())
    }

    /// Indexes `text` as document `doc`, replacing what `doc` held before; all of it reads as
    /// the title ([`Matches::relevance`]).
    pub fn insert(&mut self, doc: u32, text: &str) {
        self.insert_titled(doc, text, "");
    }

    /// Indexes `title` and `rest` (a description) as one text, document `doc`, replacing what
    /// `doc` held before; the title's terms are marked ([`Matches::relevance`] counts the
    /// query's words found there).
    pub fn insert_titled(&mut self, doc: u32, title: &str, rest: &str) {
        self.remove(doc);
        let title = terms(title);
        let in_title = title.len();
        let mut terms = title;
        terms.extend(self::terms(rest));
        let i = doc as usize;
        if self.lengths.len() <= i {
            self.lengths.resize(i + 1, ABSENT);
            self.doc_terms.resize_with(i + 1, Box::default);
        }
        // A text of 4 billion terms cannot arrive (requests are capped far below), but its
        // length must not collide with ABSENT if it did.
        self.lengths[i] = (terms.len() as u32).min(ABSENT - 1);
        self.documents += 1;
        self.total_length += u64::from(self.lengths[i]);
        // Each distinct term once (sorted by its text, so the same index in every process),
        // with its count and whether the title holds it.
        let mut terms: Vec<(String, bool)> = terms
            .into_iter()
            .enumerate()
            .map(|(at, term)| (term, at < in_title))
            .collect();
        terms.sort_unstable();
        let mut distinct = Vec::new();
        for run in terms.chunk_by(|a, b| a.0 == b.0) {
            let term = &run[0].0;
            // The count stays under the flag (texts are capped far below 2^31 terms).
            let count = (run.len() as u32).min(IN_TITLE - 1);
            let tf = if run.iter().any(|&(_, title)| title) {
                count | IN_TITLE
            } else {
                count
            };
            distinct.push(self.term_ids.id(term));
            match self.postings.get_mut(term) {
                Some(docs) => docs.put(doc, tf),
                None => {
                    self.vocabulary.add(term);
                    self.sorted.insert(term.clone());
                    let mut docs = Postings::default();
                    docs.put(doc, tf);
                    self.postings.insert(term.clone(), docs);
                }
            }
        }
        self.doc_terms[i] = distinct.into_boxed_slice();
    }

    pub fn remove(&mut self, doc: u32) {
        let i = doc as usize;
        let Some(&length) = self.lengths.get(i).filter(|&&l| l != ABSENT) else {
            return;
        };
        self.lengths[i] = ABSENT;
        self.documents -= 1;
        self.total_length -= u64::from(length);
        for id in std::mem::take(&mut self.doc_terms[i]) {
            let term = self.term_ids.name(id);
            if let Some(docs) = self.postings.get_mut(term) {
                docs.remove(doc);
                if docs.is_empty() {
                    self.postings.remove(term);
                    self.vocabulary.remove(term);
                    self.sorted.remove(term);
                    self.term_ids.release(id);
                }
            }
        }
    }

    /// `query` with every word that matches no indexed term replaced by the word one edit
    /// away (a letter deleted, inserted or replaced, or two neighbours swapped) whose term
    /// shares the most documents with one of the query's other indexed words (counted only
    /// when more than chance: see `found_with`), then is in the most documents (on a tie the
    /// longer, then the first by text): "wireless hedphones" -> "wireless headphones". When
    /// the query has other indexed words and no neighbour goes with any, the word stays (one
    /// the catalog lacks, not a slip). Words under
    /// [`MIN_CORRECTED_CHARS`] letters, with a digit (model numbers), stop words and words
    /// with no such neighbour stay as typed, and so do words of the language the catalog
    /// lacks when a lexicon is set ([`Bm25::set_lexicon`]: "coffee lover" is not "coffee
    /// over", although pour-over sets are found with "coffee"); `None` when no word changed. Words are looked up
    /// folded ([`fold`]: "creme" is no misspelling of "crème", it is the same term) and
    /// edited as typed ("crèmme" -> "crème"). Inserted and replacing letters are a-z and the
    /// word's own (all letters of a script would be thousands of lookups for CJK), so
    /// outside a-z a doubled, dropped or swapped letter is corrected. A word of 6+ letters
    /// with no neighbour one edit away is read as the term two edits away in the most
    /// documents ("headfones" -> "headphones"; see `two_edits_away`).
    ///
    /// # Complexity
    /// About 55 x (letters) index lookups per unknown word (every one-edit neighbour): ~30 us
    /// for an 8-10-letter word against 37k terms, ~50-100 us when the two-edit search runs
    /// too (BENCHMARKS.md, "two edits"); nothing for words the index holds.
    pub fn correct(&self, query: &str) -> Option<String> {
        let context = self.context(query);
        let mut out = String::with_capacity(query.len());
        let mut changed = false;
        let mut tried = 0;
        let mut rest = query;
        while let Some(start) = rest.find(char::is_alphanumeric) {
            out.push_str(&rest[..start]);
            rest = &rest[start..];
            let end = rest
                .find(|c: char| !c.is_alphanumeric())
                .unwrap_or(rest.len());
            let word = &rest[..end];
            let fixed = if tried < MAX_CORRECTED_WORDS {
                self.correct_word(word, &context, &mut tried)
            } else {
                None
            };
            match fixed {
                Some(fixed) => {
                    out.push_str(&fixed);
                    changed = true;
                }
                None => out.push_str(word),
            }
            rest = &rest[end..];
        }
        out.push_str(rest);
        changed.then_some(out)
    }

    /// `query` as the ranker reads it: misspelt words corrected ([`Bm25::correct`]) and,
    /// when the shopper may still be typing its last word (`typing`), that word completed
    /// ([`Bm25::complete`]) among the terms found with the corrected others, or corrected
    /// like the rest when it begins no term ("wireless hedphones" is misspelt, not half
    /// typed). `None` when nothing changed.
    pub fn read(&self, query: &str, typing: bool) -> Option<String> {
        // The shop's one-way synonyms first: their words are meant, not misspelt.
        let rewritten = self.synonyms.rewrite(query);
        let query = rewritten.as_deref().unwrap_or(query);
        let read = if typing {
            let fixed = self.correct_head(query);
            let query = fixed.as_deref().unwrap_or(query);
            match self.complete(query) {
                // A half-typed word completed to a one-way synonym is read as its
                // replacement too (that word only: a replacement holding its own phrase,
                // "tv => smart tv", is not read twice).
                Some(completed) => {
                    let (head, last) = last_word(&completed);
                    Some(match self.synonyms.rewrite(last) {
                        Some(replacement) => format!("{head}{replacement}"),
                        None => completed,
                    })
                }
                None => self.correct(query).or(fixed),
            }
        } else {
            self.correct(query)
        };
        read.or(rewritten)
    }

    /// `query` with the words before its last corrected ([`Bm25::correct`]), the last as
    /// typed; `None` when none changed.
    fn correct_head(&self, query: &str) -> Option<String> {
        let (head, last) = last_word(query);
        self.correct(head).map(|head| format!("{head}{last}"))
    }

    /// `query` with its last word, which may be half typed (search as you type), replaced by
    /// the indexed term it most likely begins: of the [`COMPLETIONS`] terms it begins that are
    /// in the most documents (and the word itself when it is a term), the one most specific to
    /// the query's other words: sharing documents with one of them more often than chance
    /// (see `found_with`), the most shared documents squared over its documents ("coffee gr"
    /// -> "coffee grinder", not the commoner "green"; "yoga ma" -> "yoga mat", not "yoga
    /// material", which the demo's texts all say; "shower head" stays), then the one in the
    /// most documents (ties: the shorter, then the first by text). Terms are folded and
    /// singular ("wireless headp" -> "wireless headphone"). `None` when the query does not
    /// end in a letter or digit (the word is finished), its last word has under
    /// [`MIN_PREFIX_CHARS`] letters or is a stop word, begins no term, is the term chosen, or
    /// when the query has other indexed words and nothing it begins goes with them ("coffee
    /// lo", typing "lover", is not finished as "coffee loved").
    ///
    /// # Complexity
    /// A walk over the terms the word begins (at most [`PREFIX_SCAN`]), then for each of
    /// the [`COMPLETIONS`] and each other query word, the smaller of their two posting lists.
    pub fn complete(&self, query: &str) -> Option<String> {
        let (head, completions) = self.completions(query)?;
        let best = completions.first()?;
        // Nothing it begins goes with the other words: a word the catalog lacks ("coffee
        // lo" for "coffee lover"), not one to finish as the commonest ("loved").
        if best.items == 0 && !self.context(head).is_empty() {
            return None;
        }
        (!best.itself).then(|| format!("{head}{}", best.term))
    }

    /// Up to `k` queries a shopper typing `query` may mean (search-as-you-type suggestions):
    /// the words before the last corrected, the half-typed last word completed to each of
    /// the terms [`Bm25::complete`] weighs, best first, the word itself included when it is a
    /// term, each with the documents it has in common with the other word it shares most
    /// with (all its documents when the query has no other indexed word); completions
    /// sharing none are left out.
    pub fn suggest(&self, query: &str, k: usize) -> Vec<(String, usize)> {
        let fixed = self.correct_head(query);
        let query = fixed.as_deref().unwrap_or(query);
        let Some((head, completions)) = self.completions(query) else {
            return Vec::new();
        };
        completions
            .into_iter()
            .filter(|c| c.items > 0)
            .take(k)
            .map(|c| (format!("{head}{}", c.term), c.items))
            .collect()
    }

    /// The postings of the last [`CONTEXT_WORDS`] indexed words of `query`: what a
    /// correction or completion of another word is weighed against (a query is not bounded
    /// by the API, and each word costs an intersection per candidate).
    fn context(&self, query: &str) -> Vec<&Postings> {
        let mut words = terms(query);
        words.reverse();
        words.dedup();
        words
            .iter()
            .filter_map(|t| self.postings.get(t))
            .take(CONTEXT_WORDS)
            .collect()
    }

    /// A misspelt word's neighbour's weight, for one-edit and two-edit neighbours alike: the
    /// documents it shares with the `context` word it goes with most (see [`found_with`]),
    /// then the documents holding it.
    fn weigh(&self, docs: &Postings, context: &[&Postings]) -> (usize, usize) {
        (found_with(docs, context, self.documents), docs.len())
    }

    /// The query before its last word and the terms that word may become, best first (see
    /// [`Bm25::complete`]); `None` when the word is finished, short or a stop word.
    fn completions<'a>(&'a self, query: &'a str) -> Option<(&'a str, Vec<Completion<'a>>)> {
        let (head, last) = last_word(query);
        if last.chars().count() < MIN_PREFIX_CHARS {
            return None;
        }
        let folded = fold(last);
        if STOP.contains(&folded.as_str()) {
            return None;
        }
        // The word itself, when indexed, competes with what it begins: "lamps" (the term
        // "lamp") must not become "lampshade".
        let itself = self
            .postings
            .get_key_value(&plural_stem(folded.clone()))
            .map(|(term, docs)| (docs.len(), term.as_str()));
        let documents = |term: &str| self.postings.get(term).map_or(0, Postings::len);
        let mut begun: Vec<(usize, &str)> = self
            .sorted
            .range::<str, _>((Bound::Included(folded.as_str()), Bound::Unbounded))
            .take(PREFIX_SCAN)
            .take_while(|t| t.starts_with(folded.as_str()))
            .map(|t| (documents(t), t.as_str()))
            .collect();
        let by_documents = |a: &(usize, &str), b: &(usize, &str)| {
            b.0.cmp(&a.0)
                .then_with(|| a.1.len().cmp(&b.1.len()))
                .then_with(|| a.1.cmp(b.1))
        };
        if begun.len() > COMPLETIONS {
            begun.select_nth_unstable_by(COMPLETIONS - 1, by_documents);
            begun.truncate(COMPLETIONS);
        }
        if let Some(itself) = itself
            && !begun.contains(&itself)
        {
            begun.push(itself);
        }
        // (documents, the term shown, the term it is weighed by).
        let mut begun: Vec<(usize, &str, &str)> =
            begun.into_iter().map(|(d, t)| (d, t, t)).collect();
        // The shop's one-word synonyms the word begins, weighed by the term they find that
        // the most items hold: "ruck" -> "rucksack", weighed by "backpack".
        for (word, finds) in self.synonyms.words_beginning(&folded, COMPLETIONS) {
            if self.postings.contains_key(word) {
                continue;
            }
            if let Some(by) = finds.iter().max_by_key(|t| documents(t))
                && documents(by) > 0
            {
                begun.push((documents(by), word, by));
            }
        }
        let context = self.context(head);
        let mut completions: Vec<Completion> = begun
            .into_iter()
            .map(|(documents, term, by)| Completion {
                term,
                items: match self.postings.get(by) {
                    Some(docs) if !context.is_empty() => found_with(docs, &context, self.documents),
                    _ => documents,
                },
                documents,
                itself: itself.is_some_and(|(_, t)| t == term),
            })
            .collect();
        // Most specific to the context first: shared documents squared over documents (the
        // shared count times the share of the term's documents that are shared), so "yoga
        // mat" (13 of 13) goes before "yoga material" (13 of the many texts saying
        // "material"); without context, the commonest.
        let specific = |c: &Completion| c.items as u128 * c.items as u128;
        completions.sort_by(|a, b| {
            (specific(b) * a.documents.max(1) as u128)
                .cmp(&(specific(a) * b.documents.max(1) as u128))
                .then_with(|| (b.items, b.documents).cmp(&(a.items, a.documents)))
                .then_with(|| a.term.len().cmp(&b.term.len()))
                .then_with(|| a.term.cmp(b.term))
        });
        Some((head, completions))
    }

    /// The most common indexed neighbour of one query word (see [`Bm25::correct`]); counts
    /// in `tried` the words it searched neighbours for.
    fn correct_word(&self, word: &str, context: &[&Postings], tried: &mut usize) -> Option<String> {
        let length = word.chars().count();
        if !(MIN_CORRECTED_CHARS..=MAX_CORRECTED_CHARS).contains(&length)
            || word.chars().any(char::is_numeric)
        {
            return None;
        }
        let lower = word.to_lowercase();
        let folded = fold(&lower);
        if STOP.contains(&folded.as_str()) {
            return None;
        }
        let stem = plural_stem(folded.clone());
        if self.postings.contains_key(&stem)
            || self.synonyms.names(&stem)
            || self
                .lexicon
                .as_ref()
                .is_some_and(|l| is_word(l, &folded) || is_word(l, &stem))
        {
            return None;
        }
        *tried += 1;
        let letters: Vec<char> = lower.chars().collect();
        let mut alphabet: Vec<char> = ('a'..='z').chain(letters.iter().copied()).collect();
        alphabet.sort_unstable();
        alphabet.dedup();
        // ((documents shared with the context, documents), indexed term, the word as shown).
        let mut best: Option<((usize, usize), String, String)> = None;
        let mut consider = |candidate: Vec<char>| {
            let word: String = candidate.into_iter().collect();
            if word.chars().count() < MIN_CORRECTED_CHARS - 1 || STOP.contains(&word.as_str()) {
                return;
            }
            let term = plural_stem(fold(&word));
            let Some(docs) = self.postings.get(&term) else {
                return;
            };
            let documents = self.weigh(docs, context);
            let better = match &best {
                None => true,
                // Several neighbours of one term ("grinds", "grind"): the term as written.
                Some((_, t, w)) if *t == term => {
                    (
                        word == term,
                        std::cmp::Reverse(word.len()),
                        std::cmp::Reverse(&word),
                    ) > (*w == term, std::cmp::Reverse(w.len()), std::cmp::Reverse(w))
                }
                // Ties: the longer term (a dropped letter is a commoner slip than an extra
                // one), then the first by text.
                Some((d, t, _)) => documents
                    .cmp(d)
                    .then_with(|| term.len().cmp(&t.len()))
                    .then_with(|| t.cmp(&term))
                    .is_gt(),
            };
            if better {
                best = Some((documents, term, word));
            }
        };
        for i in 0..letters.len() {
            let mut deleted = letters.clone();
            deleted.remove(i);
            consider(deleted);
            if i + 1 < letters.len() && letters[i] != letters[i + 1] {
                let mut swapped = letters.clone();
                swapped.swap(i, i + 1);
                consider(swapped);
            }
            for &c in &alphabet {
                if c != letters[i] {
                    let mut replaced = letters.clone();
                    replaced[i] = c;
                    consider(replaced);
                }
            }
        }
        for i in 0..=letters.len() {
            for &c in &alphabet {
                let mut inserted = letters.clone();
                inserted.insert(i, c);
                consider(inserted);
            }
        }
        let ((together, _), word) = match best {
            Some((weight, _, word)) => (weight, word),
            // Two words written together ("hardisk": "hard disk") are read as such
            // (`Bm25::groups`), not as a term two edits away ("sandisk"); words of 4+
            // letters, since short ones split too much ("topelf", "towels" with two slips,
            // is "top" and "elf").
            None if self.split(&stem).is_some_and(|(a, b)| {
                a.chars().count() >= MIN_TWO_WORD_CHARS && b.chars().count() >= MIN_TWO_WORD_CHARS
            }) =>
            {
                return None;
            }
            None if length >= MIN_TWO_EDIT_CHARS => self.two_edits_away(&lower, context)?,
            None => return None,
        };
        // Neighbours, but none found with the query's other words: a word the catalog lacks
        // ("gift for a coffee lover" is not "... loved"), not a slip.
        (together > 0 || context.is_empty()).then_some(word)
    }

    /// The indexed term two edits from `lower` (a lower-cased query word; compared folded and
    /// without its plural) found with the `context` words in the most documents, then in the
    /// most documents (ties: the longer, then the first by text), written plural when the
    /// word was ("hedfones" -> "headphones"), with that weight.
    ///
    /// # Complexity
    /// A popcount per indexed term within two letters of the word's length, an edit
    /// distance for those within four letters' presence (BENCHMARKS.md, "two edits").
    fn two_edits_away(
        &self,
        lower: &str,
        context: &[&Postings],
    ) -> Option<((usize, usize), String)> {
        let folded = fold(lower);
        let stem = plural_stem(folded.clone());
        let plural = stem != folded;
        let (bits, letters) = (letter_bits(&stem), stem.chars().collect::<Vec<char>>());
        let ascii = stem.is_ascii();
        let mut best: Option<((usize, usize), &str)> = None;
        let mut chars = Vec::new();
        for term in self.vocabulary.near(bits, letters.len()) {
            let near = if ascii && term.is_ascii() {
                edit_distance(stem.as_bytes(), term.as_bytes(), 2)
            } else {
                chars.clear();
                chars.extend(term.chars());
                edit_distance(&letters, &chars, 2)
            };
            if near.is_none() {
                continue;
            }
            let Some(docs) = self.postings.get(term) else {
                continue;
            };
            let documents = self.weigh(docs, context);
            let better = best.is_none_or(|(d, t)| {
                documents
                    .cmp(&d)
                    .then_with(|| term.len().cmp(&t.len()))
                    .then_with(|| t.cmp(term))
                    .is_gt()
            });
            if better {
                best = Some((documents, term));
            }
        }
        let (weight, term) = best?;
        let word = match (plural, term.strip_suffix('y')) {
            (false, _) => term.to_string(),
            (true, Some(base)) if folded.ends_with("ies") => format!("{base}ies"),
            (true, _) => format!("{term}s"),
        };
        Some((weight, word))
    }

    /// Whether one document holds every one of `terms` (a phrase's, as [`terms`] reads it).
    pub fn holds_all(&self, terms: &[String]) -> bool {
        let mut lists: Vec<&Postings> = Vec::with_capacity(terms.len());
        for term in terms {
            match self.postings.get(term) {
                Some(docs) => lists.push(docs),
                None => return false,
            }
        }
        lists.sort_by_key(|docs| docs.len());
        match lists.split_first() {
            Some((smallest, rest)) => smallest
                .docs()
                .any(|doc| rest.iter().all(|docs| docs.contains(doc))),
            None => false,
        }
    }

    /// The query's words, as typed, that document `doc` holds (each of a word's terms in its
    /// text; a word equivalent by synonyms or by writing does not count), and how many words
    /// the query has that count at all (stop words do not). For explaining a result, so a
    /// few documents per request.
    pub fn held_words<'q>(&self, query: &'q str, doc: u32) -> (Vec<&'q str>, usize) {
        let mut held: Vec<&str> = Vec::new();
        // A set, not a list: a query's words against every word before it is quadratic.
        let mut words: HashSet<Vec<String>> = HashSet::new();
        for word in query.split(|c: char| !c.is_alphanumeric()) {
            let terms = terms(word);
            if terms.is_empty() || words.contains(&terms) {
                continue;
            }
            if terms
                .iter()
                .all(|t| self.postings.get(t).is_some_and(|docs| docs.contains(doc)))
            {
                held.push(word);
            }
            words.insert(terms);
        }
        (held, words.len())
    }

    /// Whether any item holds any of the query's words or their equivalents (what
    /// [`Self::scores`] would find anything for): one lookup per word.
    pub fn matches_any(&self, query: &str) -> bool {
        let terms = terms(query);
        match self.groups(&terms) {
            None => terms.iter().any(|t| self.holds(t)),
            Some((groups, _)) => groups.iter().flatten().flatten().any(|t| self.holds(t)),
        }
    }

    /// Whether any document holds `term`.
    fn holds(&self, term: &str) -> bool {
        self.postings.get(term).is_some_and(|docs| !docs.is_empty())
    }

    /// The query's `terms` in groups of alternative phrases (the first as typed), when
    /// anything widens them: the shop's equivalent phrases ([`Synonyms::groups`]), and the
    /// texts' way of writing words together or apart: two neighbouring words an indexed term
    /// joins ("mac book" also finds "MacBook", "coffee maker" "coffeemaker"), a word no text
    /// holds that two words found together split ([`Self::split`]: "sodastream" finds "Soda
    /// Stream"). Also the alternatives the texts' writing added, their terms spaced
    /// ("macbook", "soda stream"). `None` when nothing widens the query (each term alone).
    ///
    /// # Complexity
    /// A lookup per pair of neighbouring words; for a word no text holds, two per split place
    /// and, where both parts are terms, the smaller of their posting lists.
    fn groups(&self, terms: &[String]) -> Option<(Vec<Group>, Vec<String>)> {
        let by_synonyms = self.synonyms.widens(terms);
        if !by_synonyms && !self.written_apart(terms) {
            return None;
        }
        let groups: Vec<Group> = if by_synonyms {
            self.synonyms.groups(terms)
        } else {
            terms.iter().map(|t| vec![vec![t.clone()]]).collect()
        };
        let alone = |group: &[Vec<String>]| match group {
            [phrase] => match phrase.as_slice() {
                [term] => Some(term.clone()),
                _ => None,
            },
            _ => None,
        };
        let mut out = Vec::with_capacity(groups.len());
        let mut written = Vec::new();
        let mut i = 0;
        while i < groups.len() {
            let this = alone(&groups[i]);
            if let Some(a) = &this
                && let Some(b) = groups.get(i + 1).and_then(|g| alone(g))
            {
                let joined = format!("{a}{b}");
                if self.holds(&joined) {
                    written.push(joined.clone());
                    out.push(vec![vec![a.clone(), b], vec![joined]]);
                    i += 2;
                    continue;
                }
            }
            match this.as_deref().and_then(|word| self.split(word)) {
                Some((a, b)) => {
                    written.push(format!("{a} {b}"));
                    out.push(vec![vec![this.unwrap_or_default()], vec![a, b]]);
                }
                None => out.push(groups[i].clone()),
            }
            i += 1;
        }
        (by_synonyms || !written.is_empty()).then_some((out, written))
    }

    /// Whether two neighbouring `terms` join into an indexed term or one splits in two
    /// ([`Self::groups`]' test, without building a group: most queries have neither).
    fn written_apart(&self, terms: &[String]) -> bool {
        let mut joined = String::new();
        terms.windows(2).any(|pair| {
            joined.clear();
            joined.push_str(&pair[0]);
            joined.push_str(&pair[1]);
            self.holds(&joined)
        }) || terms.iter().any(|t| self.split(t).is_some())
    }

    /// `word` (a query term) split into two indexed terms of [`MIN_SPLIT_CHARS`]+ letters,
    /// neither a stop word, that documents hold together: the split the most documents hold
    /// ("sodastream" -> "soda", "stream" where the texts write "Soda Stream"). The letter at
    /// the join may be typed once for both ("hardisk" -> "hard", "disk"; "hardrive" ->
    /// "hard", "drive"). `None` when a document holds the word itself, it is longer than a
    /// corrected word may be, or no split is held together. A misspelling one edit away is
    /// corrected before (`Bm25::read`), so this reads only the words the spelling check found
    /// no such neighbour for.
    fn split(&self, word: &str) -> Option<(String, String)> {
        if self.holds(word) || word.chars().count() > MAX_CORRECTED_CHARS {
            return None;
        }
        // (documents holding both, end of the first part, start of the second).
        let mut best: Option<(usize, usize, usize)> = None;
        let starts: Vec<usize> = word.char_indices().map(|(at, _)| at).collect();
        for (i, &at) in starts.iter().enumerate().skip(MIN_SPLIT_CHARS) {
            // The plain split, then the one that shares the letter before the join.
            for from in [at, starts[i - 1]] {
                let (a, b) = (&word[..at], &word[from..]);
                if b.chars().count() < MIN_SPLIT_CHARS || STOP.contains(&a) || STOP.contains(&b) {
                    continue;
                }
                let (Some(x), Some(y)) = (self.postings.get(a), self.postings.get(b)) else {
                    continue;
                };
                let together = x.shared(y);
                if together > 0 && best.is_none_or(|(most, _, _)| together > most) {
                    best = Some((together, at, from));
                }
            }
        }
        best.map(|(_, at, from)| (word[..at].to_string(), word[from..].to_string()))
    }

    /// What a search for `query` is widened to beyond its own words, as the index reads them
    /// or as the shop wrote them: the shop's equivalent phrases, the terms two neighbouring
    /// words join into and the words one is split into ("sodastream" -> "soda stream").
    pub fn widened_to(&self, query: &str) -> Vec<String> {
        let terms = terms(query);
        let Some((_, written)) = self.groups(&terms) else {
            return Vec::new();
        };
        let mut out = self.synonyms.widened_to(&terms);
        for alternative in written {
            if !out.contains(&alternative) {
                out.push(alternative);
            }
        }
        out
    }

    /// Whether a document is among [`Self::matches`] of `query`, answered per document: the
    /// posting lists of every term the query is read as (its terms, or every phrase of its
    /// widened groups), looked up for each document asked about. For a few documents (a
    /// page's reasons) instead of listing a common word's ~100k matches again.
    pub fn matcher(&self, query: &str) -> impl Fn(u32) -> bool + '_ {
        let terms = terms(query);
        let lists: Vec<&Postings> = if self.documents == 0 {
            Vec::new()
        } else {
            match self.groups(&terms) {
                Some((groups, _)) => groups
                    .iter()
                    .flatten()
                    .flatten()
                    .filter_map(|t| self.postings.get(t))
                    .collect(),
                None => terms.iter().filter_map(|t| self.postings.get(t)).collect(),
            }
        };
        move |doc| lists.iter().any(|docs| docs.contains(doc))
    }

    /// BM25 score of every document matching at least one query term (or an equivalent
    /// phrase of the shop's synonyms).
    ///
    /// # Complexity
    /// O(total postings of the query's terms and of their equivalents).
    pub fn scores(&self, query: &str) -> HashMap<u32, f32, IdHash> {
        self.matches(query)
            .docs
            .into_iter()
            .map(|(doc, m)| (doc, m.bm25))
            .collect()
    }

    /// Every document matching at least one query term (or an equivalent phrase of the shop's
    /// synonyms, or a way the texts write its words together or apart), with its BM25 score
    /// and how many of the query's words it holds ([`Match::words`], [`Matches::relevance`]).
    ///
    /// # Complexity
    /// O(total postings of the query's terms and of their equivalents).
    pub fn matches(&self, query: &str) -> Matches {
        if self.documents == 0 {
            return Matches::default();
        }
        let avg = (self.total_length as f32 / self.documents as f32).max(1e-6);
        let terms = terms(query);
        if let Some((groups, _)) = self.groups(&terms) {
            return self.matches_grouped(groups, avg);
        }
        // Each distinct term once, in query order (the order the scores are summed in).
        let mut seen: Vec<String> = Vec::new();
        let mut postings: Vec<&Postings> = Vec::new();
        for term in terms {
            if !seen.contains(&term) {
                postings.extend(self.postings.get(&term));
                seen.push(term);
            }
        }
        let mut docs = Sums::new();
        for term_docs in postings {
            docs = summed(docs, self.term_sums(term_docs, avg, 1.0));
        }
        Matches::new(docs, seen.len())
    }

    /// One term's BM25 contribution (its postings `docs`) to each document's score, and
    /// `share` of a word to the words it holds ([`Match::words`]: half of it where only the
    /// description holds the term), ascending by document.
    fn term_sums(&self, docs: &Postings, avg: f32, share: f32) -> Sums {
        let n = self.documents as f32;
        let df = docs.len() as f32;
        let idf = ((n - df + 0.5) / (df + 0.5) + 1.0).ln();
        let mut sums = Sums::with_capacity(docs.len());
        for (doc, tf) in docs.sorted() {
            let len = self.lengths.get(doc as usize).copied().unwrap_or(0) as f32;
            let held = if tf & IN_TITLE != 0 {
                share
            } else {
                share * DESCRIPTION_WORD
            };
            let tf = (tf & !IN_TITLE) as f32;
            let s = idf * tf * (K1 + 1.0) / (tf + K1 * (1.0 - B + B * len / avg));
            sums.push((
                doc,
                Match {
                    bm25: s,
                    words: held,
                },
            ));
        }
        sums
    }

    /// [`Self::matches`] of a widened query ([`Self::groups`]): a group of alternative phrases
    /// scores each document by its best-scoring alternative (the phrase's terms summed), so an
    /// item saying "sofa" matches "couch", and one saying both is not counted twice; a term
    /// alone scores as in any query. A group is one word of the query: the words it holds
    /// ([`Match::words`]) are the best alternative's share of terms held.
    fn matches_grouped(&self, groups: Vec<Group>, avg: f32) -> Matches {
        let mut out = Sums::new();
        let mut seen: Vec<Group> = Vec::new();
        for group in groups {
            if seen.contains(&group) {
                continue;
            }
            if let [single] = group.as_slice()
                && let [term] = single.as_slice()
            {
                if let Some(docs) = self.postings.get(term) {
                    out = summed(out, self.term_sums(docs, avg, 1.0));
                }
            } else {
                // The typed phrase's sums, then each other phrase's kept where it is higher.
                let mut best = Sums::new();
                for (p, phrase) in group.iter().enumerate() {
                    let share = 1.0 / phrase.len().max(1) as f32;
                    let mut sum = Sums::new();
                    for docs in phrase.iter().filter_map(|t| self.postings.get(t)) {
                        sum = summed(sum, self.term_sums(docs, avg, share));
                    }
                    best = if p == 0 {
                        sum
                    } else {
                        combined(best, sum, |kept, m| {
                            kept.bm25 = kept.bm25.max(m.bm25);
                            kept.words = kept.words.max(m.words);
                        })
                    };
                }
                out = summed(out, best);
            }
            seen.push(group);
        }
        Matches::new(out, seen.len())
    }
}

/// One document's match with a query.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Match {
    /// BM25 over the whole text.
    pub bm25: f32,
    /// The query's words it holds, each counting 1 in the title and [`DESCRIPTION_WORD`]
    /// (0.5) only in the description (a word widened to a phrase counts the best phrase's
    /// share of terms, held the same way).
    pub words: f32,
}

/// Sums per document ([`Match`]), ascending by document.
type Sums = Vec<(u32, Match)>;

/// `a` and `b` as one list: a document in both gets `b`'s added to `a`'s (the order the
/// query's terms are summed in), one in either keeps its own.
fn summed(a: Sums, b: Sums) -> Sums {
    combined(a, b, |kept, m| {
        kept.bm25 += m.bm25;
        kept.words += m.words;
    })
}

/// `a` and `b` (each ascending by document) as one ascending list, `both` folding `b`'s
/// sums into `a`'s for a document in both.
fn combined(a: Sums, b: Sums, both: impl Fn(&mut Match, &Match)) -> Sums {
    if a.is_empty() {
        return b;
    }
    if b.is_empty() {
        return a;
    }
    let mut out = Sums::with_capacity(a.len().max(b.len()));
    let (mut i, mut j) = (0, 0);
    while let (Some(&(x, kept)), Some(&(y, m))) = (a.get(i), b.get(j)) {
        if x < y {
            out.push((x, kept));
            i += 1;
        } else if y < x {
            out.push((y, m));
            j += 1;
        } else {
            let mut kept = kept;
            both(&mut kept, &m);
            out.push((x, kept));
            i += 1;
            j += 1;
        }
    }
    out.extend_from_slice(a.get(i..).unwrap_or_default());
    out.extend_from_slice(b.get(j..).unwrap_or_default());
    out
}

/// The documents a query's words match ([`Bm25::matches`]): their sums in one list ascending
/// by document, and a bit per document with a count of the bits before each 64, so that
/// asking about one document (the pool reads a match's relevance, a graph walk whether a
/// visited item matches) is two reads, not a search or a hash lookup. A common word matches
/// ~100k items at 1M; summing them into a hash map was most of building them
/// (BENCHMARKS.md "Session 31").
#[derive(Debug, Clone, Default)]
pub struct Matches {
    docs: Sums,
    /// The matching documents, each with its position in `docs`.
    bits: RankedBits,
    /// Distinct words of the query (a widened word counted once), held or not.
    words: f32,
    best_bm25: f32,
}

impl Matches {
    /// The matching `docs` (ascending) of a query of `words` distinct words (a widened word
    /// counted once).
    fn new(docs: Sums, words: usize) -> Self {
        let best_bm25 = docs.iter().map(|(_, m)| m.bm25).fold(0.0, f32::max);
        debug_assert!(docs.windows(2).all(|w| w[0].0 < w[1].0), "not ascending");
        let bits = RankedBits::of_ascending(docs.iter().map(|&(doc, _)| doc));
        Self {
            docs,
            bits,
            words: words as f32,
            best_bm25,
        }
    }

    /// Where `doc` is in `docs`, if it matches.
    fn index(&self, doc: u32) -> Option<usize> {
        self.bits.position(doc)
    }

    /// How well document `doc` matches the query's words, 0..=1 (0 when it holds none):
    /// [`WORDS_SHARE`] (0.9) of it the share of the query's words it holds ([`Match::words`]:
    /// title words count twice description words), the rest its BM25 over the whole text
    /// relative to the best match's. A title holding every word the shopper typed is the
    /// strongest lexical sign of relevance on judged shop data; a BM25 sum normalised by the
    /// best match calls the best half-match "1" as well.
    pub fn relevance(&self, doc: u32) -> f32 {
        self.get(doc).map_or(0.0, |m| self.relevance_of(m))
    }

    fn relevance_of(&self, m: &Match) -> f32 {
        let words = if self.words > 0.0 {
            (m.words / self.words).min(1.0)
        } else {
            0.0
        };
        let bm25 = if self.best_bm25 > 0.0 {
            m.bm25 / self.best_bm25
        } else {
            0.0
        };
        WORDS_SHARE * words + (1.0 - WORDS_SHARE) * bm25
    }

    /// Each matching document with its [`Self::relevance`], ascending by document.
    pub fn iter(&self) -> impl Iterator<Item = (u32, f32)> + '_ {
        self.docs
            .iter()
            .map(|(doc, m)| (*doc, self.relevance_of(m)))
    }

    /// The matching documents, ascending.
    pub fn docs(&self) -> impl Iterator<Item = u32> + '_ {
        self.docs.iter().map(|&(doc, _)| doc)
    }

    pub fn contains(&self, doc: u32) -> bool {
        self.index(doc).is_some()
    }

    /// The matching documents as bits.
    pub(crate) fn bits(&self) -> &SlotBits {
        self.bits.bits()
    }

    /// About `n` matching documents drawn from all of them (see [`SlotSample`]).
    pub fn spread(&self, n: usize) -> impl Iterator<Item = u32> + '_ {
        let sample = SlotSample::new(n, self.docs.len());
        self.docs
            .iter()
            .map(|&(doc, _)| doc)
            .filter(move |&doc| sample.holds(doc))
    }

    pub fn get(&self, doc: u32) -> Option<&Match> {
        self.index(doc)
            .and_then(|i| self.docs.get(i))
            .map(|(_, m)| m)
    }

    pub fn len(&self) -> usize {
        self.docs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An index of `texts`, document i holding text i.
    fn indexed(texts: &[&str]) -> Bm25 {
        let mut index = Bm25::default();
        for (doc, text) in texts.iter().enumerate() {
            index.insert(doc as u32, text);
        }
        index
    }

    /// A query's matches, built by merging its terms' sorted sums, are each document holding
    /// any of its words once, ascending, with each word's BM25 and share added up: what the
    /// one-word queries give, summed. Asked about one document (`contains`, `get`, as the pool
    /// and the graph walk ask) they answer as a look through the whole list does, at word
    /// edges (documents 63, 64) and past the last match too. The index has edited and removed
    /// documents, so postings sit in late lists and tombstones as well as in sorted runs.
    #[test]
    fn matches_are_the_sum_of_their_words_and_answer_per_document() {
        let words = ["red", "blue", "shoe", "boot", "wool", "silk", "lamp"];
        let mut rng = crate::rng::XorShift::new(7);
        let mut pick = |n: usize| (rng.unit() * n as f64) as usize;
        let mut index = Bm25::default();
        let text = |pick: &mut dyn FnMut(usize) -> usize| {
            (0..1 + pick(4))
                .map(|_| words[pick(words.len())])
                .collect::<Vec<_>>()
                .join(" ")
        };
        for doc in 0..600 {
            index.insert(doc, &text(&mut pick));
        }
        for _ in 0..300 {
            let doc = pick(600) as u32;
            match pick(3) {
                0 => index.remove(doc),
                _ => {
                    let (title, rest) = (text(&mut pick), text(&mut pick));
                    index.insert_titled(doc, &title, &rest);
                }
            }
        }
        assert!(index.postings.values().any(|p| !p.late.is_empty()));
        for query in [
            "red",
            "red blue",
            "shoe wool lamp",
            "boot boot silk",
            "blue lamp",
        ] {
            let matches = index.matches(query);
            let listed: Vec<u32> = matches.docs().collect();
            assert!(listed.windows(2).all(|w| w[0] < w[1]), "{query:?}");
            let terms: Vec<String> = terms(query);
            let holding: Vec<u32> = (0..700)
                .filter(|&d| terms.iter().any(|t| index.postings[t].contains(d)))
                .collect();
            assert_eq!(listed, holding, "{query:?}");
            let mut distinct = terms.clone();
            distinct.dedup();
            let alone: Vec<Matches> = distinct.iter().map(|t| index.matches(t)).collect();
            for doc in 0..700 {
                let found = matches.docs.iter().find(|(d, _)| *d == doc).map(|(_, m)| m);
                assert_eq!(matches.get(doc), found, "{query:?} doc {doc}");
                assert_eq!(matches.contains(doc), found.is_some());
                let mut sum = Match::default();
                for one in &alone {
                    if let Some(m) = one.get(doc) {
                        sum.bm25 += m.bm25;
                        sum.words += m.words;
                    }
                }
                assert_eq!(
                    found.copied().unwrap_or_default(),
                    sum,
                    "{query:?} doc {doc}"
                );
            }
        }
    }

    /// The graph walk's starting points among a common word's matches: matches, each once,
    /// about as many as asked, from every stretch of the list (not bunched at its start), and
    /// not every k-th document (a catalog's items alike every k slots would all be seeds).
    #[test]
    fn seeds_are_spread_over_the_matches() {
        let texts: Vec<String> = (0..5000)
            .map(|i| if i % 3 == 0 { "black shoe" } else { "red shoe" }.to_string())
            .collect();
        let index = indexed(&texts.iter().map(String::as_str).collect::<Vec<_>>());
        let matches = index.matches("black");
        let seeds: Vec<u32> = matches.spread(128).collect();
        assert!((100..=160).contains(&seeds.len()), "{}", seeds.len());
        assert!(seeds.iter().all(|&s| matches.contains(s)));
        assert!(
            seeds.windows(2).all(|w| w[0] < w[1]),
            "each once, in list order"
        );
        // Every tenth of the matches has seeds.
        let listed: Vec<u32> = matches.docs().collect();
        for tenth in listed.chunks(listed.len() / 10).take(10) {
            assert!(seeds.iter().any(|s| tenth.contains(s)));
        }
        let gaps: std::collections::HashSet<u32> = seeds.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.len() > 10, "a fixed stride: {gaps:?}");
        assert_eq!(Matches::default().spread(128).count(), 0);
    }

    /// A term's postings stay what a plain map of document to count says under any mix of
    /// appends, out-of-order puts, removals (their tombstones swept now and then) and
    /// re-indexing: the documents listed ascending, the counts, `len` and what two lists
    /// share. A posting lost or resurrected by a sweep would find an item that no longer
    /// holds the word, or lose one that does.
    #[test]
    fn postings_agree_with_a_map_of_the_same_puts_and_removals() {
        let mut rng = crate::rng::XorShift::new(31);
        let mut below = |n: u32| (rng.unit() * f64::from(n)) as u32;
        let (mut a, mut b) = (Postings::default(), Postings::default());
        let (mut model_a, mut model_b) = (
            std::collections::BTreeMap::new(),
            std::collections::BTreeMap::new(),
        );
        let mut next = 0;
        for step in 0..22_000 {
            let (list, model) = if below(2) == 0 {
                (&mut a, &mut model_a)
            } else {
                (&mut b, &mut model_b)
            };
            // Phases of loading and of clearing out, so that tombstones pile up and are swept.
            let clearing = (step / 2_000) % 2 == 1;
            match below(10) + if clearing { 4 } else { 0 } {
                // A load: the next document, appended.
                0..=3 => {
                    let tf = (1 + below(3)) | if below(2) == 0 { IN_TITLE } else { 0 };
                    list.put(next, tf);
                    model.insert(next, tf);
                    next += 1;
                }
                // A document re-indexed, or one given the term it lacked.
                4..=5 => {
                    let doc = below(next + 1);
                    let tf = 1 + below(5);
                    list.put(doc, tf);
                    model.insert(doc, tf);
                }
                _ => {
                    // Mostly a document the list holds.
                    let doc = match model.keys().nth(below(model.len() as u32 + 1) as usize) {
                        Some(&doc) => doc,
                        None => below(next + 1),
                    };
                    list.remove(doc);
                    model.remove(&doc);
                }
            }
            if step % 500 == 0 || step == 21_999 {
                for (list, model) in [(&a, &model_a), (&b, &model_b)] {
                    let listed: Vec<(u32, u32)> = list.sorted().collect();
                    let expected: Vec<(u32, u32)> = model.iter().map(|(&d, &t)| (d, t)).collect();
                    assert_eq!(listed, expected, "step {step}");
                    assert_eq!(list.len(), model.len());
                    for doc in 0..=next {
                        assert_eq!(list.contains(doc), model.contains_key(&doc), "doc {doc}");
                    }
                    // Tombstones never outnumber live postings by much, and the late ones are
                    // few.
                    assert!(
                        list.entries.len() + list.late.len() <= 2 * list.len() + 8,
                        "step {step}"
                    );
                    assert!(
                        list.late.len() < LATE_POSTINGS.max(list.entries.len().isqrt()),
                        "step {step}"
                    );
                }
                let shared = model_a.keys().filter(|d| model_b.contains_key(d)).count();
                assert_eq!(a.shared(&b), shared, "step {step}");
                assert_eq!(b.shared(&a), shared, "step {step}");
            }
        }
        assert!(a.len() > 50 && b.len() > 50, "{} {}", a.len(), b.len());
    }

    /// Documents replaced and removed take exactly their own terms out (the numbers of terms
    /// no document holds are given to new terms), so what is left finds what it should.
    #[test]
    fn removing_documents_takes_out_their_terms_only() {
        let mut index = indexed(&["red shoe", "blue shoe"]);
        let found = |index: &Bm25, word: &str| index.matches(word).docs().collect::<Vec<_>>();
        index.remove(0);
        assert!(found(&index, "red").is_empty());
        // Takes the number "red" had.
        index.insert(2, "green hat");
        index.insert_titled(1, "blue boot", "green laces");
        assert_eq!(found(&index, "shoe"), Vec::<u32>::new());
        assert_eq!(found(&index, "boot"), [1]);
        let mut green = found(&index, "green");
        green.sort_unstable();
        assert_eq!(green, [1, 2]);
        index.remove(2);
        assert_eq!(found(&index, "green"), [1]);
        assert!(found(&index, "hat").is_empty());
        assert_eq!(index.terms_len(), 4, "blue, boot, green, laces");
        index.remove(1);
        assert_eq!(index.terms_len(), 0);
        index.insert(0, "red shoe");
        assert_eq!(found(&index, "red"), [0]);
        assert_eq!(index.terms_len(), 2);
    }

    /// The shop's synonyms: an equivalent finds the items of its phrases, scored by the best
    /// one (an item saying two is not counted twice); a one-way rule reads the query anew; a
    /// word a rule names is no misspelling.
    #[test]
    fn synonyms_widen_and_rewrite_queries() {
        use crate::synonyms::{SynonymRule, Synonyms};
        let mut index = indexed(&[
            "leather sofa",
            "sofa couch cover",
            "oak table",
            "settle bench",
            "steel blender",
        ]);
        let (sofa, couch_alone) = (index.scores("sofa"), index.scores("couch"));
        assert!(couch_alone.len() == 1 && !index.matches_any("settee"));
        assert_eq!(index.correct("settee").as_deref(), Some("settle"));
        let rule = |phrases: &[&str], to: Option<&str>| SynonymRule {
            phrases: phrases.iter().map(|p| p.to_string()).collect(),
            replacement: to.map(str::to_string),
        };
        let synonyms = Synonyms::new(vec![
            rule(&["sofa", "couch", "settee"], None),
            rule(&["blendtec"], Some("blender")),
        ])
        .unwrap();
        index.set_synonyms(Arc::new(synonyms));
        let couch = index.scores("couch");
        assert_eq!(
            couch.keys().copied().collect::<BTreeSet<_>>(),
            [0, 1].into()
        );
        assert_eq!(couch[&0], sofa[&0], "found by the phrase it says");
        // Document 1 says "sofa" and "couch": the better of the two, not their sum.
        assert_eq!(couch[&1], sofa[&1].max(couch_alone[&1]));
        assert_eq!(index.scores("sofa"), couch, "equivalent either way");
        let ranked = index.scores("leather settee");
        assert!(ranked[&0] > ranked[&1], "{ranked:?}");
        assert!(index.matches_any("settee"));
        assert_eq!(
            index.correct("settee"),
            None,
            "named by a rule: meant as typed"
        );
        assert_eq!(
            index.read("Blendtec jar", false).as_deref(),
            Some("blender jar")
        );
        assert_eq!(index.read("blendtec", true).as_deref(), Some("blender"));
        // The rewrite, then the spelling of the rest.
        assert_eq!(
            index.read("blendtec stel", false).as_deref(),
            Some("blender steel")
        );
        // A half-typed word completed to a synonym the texts lack, weighed by what it
        // finds; a one-way one is then read as its replacement.
        assert_eq!(
            index.complete("leather sett").as_deref(),
            Some("leather settee")
        );
        let suggested = index.suggest("sett", 3);
        let suggested: Vec<(&str, usize)> =
            suggested.iter().map(|(q, n)| (q.as_str(), *n)).collect();
        assert_eq!(suggested, [("settee", 2), ("settle", 1)], "the sofas count");
        assert_eq!(
            index.read("steel blendt", true).as_deref(),
            Some("steel blender")
        );
        // A replacement holding its own phrase is read once, typed or typing.
        let mut tv = indexed(&["smart tv stand", "oak table"]);
        let once = Synonyms::new(vec![rule(&["tv"], Some("smart tv"))]).unwrap();
        tv.set_synonyms(Arc::new(once));
        for typing in [false, true] {
            assert_eq!(
                tv.read("tv", typing).as_deref(),
                Some("smart tv"),
                "{typing}"
            );
        }
        assert_eq!(tv.read("tv sta", true).as_deref(), Some("smart tv stand"));
        // A rule whose phrases no item holds finds nothing (a warning for the shop).
        let idle = Synonyms::new(vec![
            rule(&["sofa", "couch"], None),
            rule(&["divan", "ottoman"], None),
            rule(&["vitamix"], Some("steel blender")),
            rule(&["thermomix"], Some("oak blender")),
        ])
        .unwrap();
        assert_eq!(idle.finding_nothing(|t| index.holds_all(t)), [1, 3]);
    }

    /// Words the texts write together or apart: two query words an indexed term joins find
    /// it, a word no text holds is split into two words texts hold together, and the
    /// alternatives are named for the page; a term the texts hold is not split.
    #[test]
    fn words_written_together_or_apart_find_each_other() {
        let index = indexed(&[
            "Apple MacBook Air laptop",
            "book light for reading",
            "mac cosmetics lipstick",
            "Soda Stream sparkling water maker",
            "stream deck controller",
            "coffeemaker with grinder",
            "coffee maker 12 cup",
            "deck of cards",
        ]);
        let found = |q: &str| index.scores(q).keys().copied().collect::<BTreeSet<u32>>();
        assert_eq!(found("mac book"), [0, 1, 2].into());
        assert_eq!(index.widened_to("mac book"), ["macbook"]);
        assert_eq!(found("coffee maker"), [3, 5, 6].into());
        assert_eq!(index.widened_to("coffee maker"), ["coffeemaker"]);
        // Split where the parts are found together; the pair outranks either part alone.
        assert!(index.matches_any("sodastream"));
        assert_eq!(index.widened_to("Sodastream"), ["soda stream"]);
        let scores = index.scores("sodastream");
        assert!(scores[&3] > scores[&4], "{scores:?}");
        assert_eq!(
            index.read("sodastream", false),
            None,
            "no misspelling: it is read as two words"
        );
        // Parts no document holds together, and words the texts hold, are left alone.
        assert!(!index.matches_any("cardstream"));
        assert!(index.widened_to("cardstream").is_empty());
        assert_eq!(found("coffeemaker"), [5].into());
        assert!(index.widened_to("macbook laptop").is_empty());
        // Nothing to widen: the plain sum, as before.
        assert!(index.widened_to("sparkling water").is_empty());
        assert_eq!(found("sparkling water"), [3].into());

        // The letter at the join typed once: two words, not a term two edits away.
        let index = indexed(&[
            "external hard disk 500 GB",
            "portable hard disk drive",
            "SanDisk memory card",
            "SanDisk USB stick",
            "hard drive enclosure",
        ]);
        assert_eq!(
            index.read("extenal hardisk", false).as_deref(),
            Some("external hardisk")
        );
        assert_eq!(index.widened_to("hardisk"), ["hard disk"]);
        assert_eq!(index.widened_to("hardrive"), ["hard drive"]);
        let scores = index.scores("hardisk");
        assert!(scores[&0] > 0.0 && !scores.contains_key(&2), "{scores:?}");
        // A slip one edit away is still corrected first.
        assert_eq!(index.read("sandisc", false).as_deref(), Some("sandisk"));
    }

    /// Lexical relevance: a title holding every word the shopper typed outranks a short text
    /// that says them in its description only (BM25 alone put that first, here they count
    /// half) and a title with one of them; a widened word counts once.
    #[test]
    fn titles_holding_the_query_words_are_the_most_relevant() {
        let mut index = Bm25::default();
        let docs = [
            (
                "Trail running shoes",
                "Light and grippy on wet rock, mud and gravel, with a cushioned sole for long days",
            ),
            ("Running socks", "Running socks for running"),
            ("Aurora", "Waterproof trail running shoes"),
            ("Trail map", ""),
            ("Apple MacBook Air", "A laptop"),
        ];
        for (doc, (title, description)) in docs.iter().enumerate() {
            index.insert_titled(doc as u32, title, description);
        }
        let matches = index.matches("running shoes");
        let bm25 = index.scores("running shoes");
        assert!(
            bm25[&2] > bm25[&0],
            "the premise: BM25 prefers a short text saying both words in its description {bm25:?}"
        );
        let r = |doc: u32| matches.relevance(doc);
        assert!(
            r(0) > 0.9 && r(0) <= 1.0,
            "both words in the title: {}",
            r(0)
        );
        assert!(r(0) > r(1) && r(0) > r(2), "{} {} {}", r(0), r(1), r(2));
        assert!(
            r(2) > 0.5 && r(2) < 0.6,
            "words in the description count half: {}",
            r(2)
        );
        assert_eq!(r(3), 0.0, "no word of the query");
        assert_eq!(matches.len(), 3);
        assert_eq!(matches.get(1).map(|m| m.words), Some(1.0));
        // "mac book" is one word read two ways: the title holding it holds the whole query.
        let matches = index.matches("mac book");
        assert!(matches.relevance(4) > 0.9, "{}", matches.relevance(4));
        // An unindexed text (insert) reads as all title.
        let plain = indexed(&["running shoes", "shoes"]);
        let matches = plain.matches("running shoes");
        assert_eq!(matches.get(0).map(|m| m.words), Some(2.0));
        assert!(matches.relevance(0) > matches.relevance(1));
        assert!(Bm25::default().matches("shoes").is_empty());
    }

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

    /// A half-typed last word becomes the term it begins that goes with the other words,
    /// else the commonest; a finished, known, short or unknown one stays.
    #[test]
    fn a_completion_is_the_term_most_specific_to_the_other_words() {
        // Every text says "material" and "loved" (boilerplate); "mat" only the yoga mats.
        let texts = [
            "yoga mat, non-slip material, loved by all",
            "yoga mat, cork material, loved by all",
            "yoga block, foam material, loved by all",
            "coffee maker, steel material, loved by all",
            "coffee beans, bag material, loved by all",
            "desk lamp, metal material, loved by all",
            "desk chair, mesh material, loved by all",
        ];
        let index = indexed(&texts);
        assert_eq!(index.complete("yoga ma").as_deref(), Some("yoga mat"));
        assert_eq!(index.complete("coffee ma").as_deref(), Some("coffee maker"));
        // Nothing "lo" begins is found with "coffee" more than chance: left as typed.
        assert_eq!(index.complete("coffee lo"), None);
        assert!(index.suggest("coffee lo", 5).is_empty());
        // Without other words, the commonest.
        assert_eq!(index.complete("lo").as_deref(), Some("loved"));
    }

    #[test]
    fn a_half_typed_word_is_completed_in_context() {
        let mut index = indexed(&[
            "wireless headphones",
            "studio headphones",
            "headband",
            "coffee grinder",
            "pepper grinder",
            "green tea",
            "green mug",
            "green lamp",
            "shower head",
            "Café crème",
            "desk lamp",
            "floor lamp",
            "lampshade",
        ]);
        for (query, want) in [
            ("wireless headp", Some("wireless headphone")),
            ("headp", Some("headphone")),
            ("HEADB", Some("headband")),
            // "green" is in three documents, "grinder" in two, but only "grinder" is found
            // with "coffee".
            ("coffee gr", Some("coffee grinder")),
            ("gr", Some("green")),
            ("café cr", Some("café creme")),
            ("shower head", None),
            // Without context the commonest term the word begins, the word included.
            ("head", Some("headphone")),
            ("lamps", None),
            ("lamp", None),
            ("wireless headp ", None),
            ("wireless h", None),
            ("xyz", None),
            ("", None),
        ] {
            assert_eq!(index.complete(query).as_deref(), want, "{query:?}");
        }
        // Read while typing: the others corrected, the last completed, or corrected when it
        // begins no term; known words stay.
        for (query, want) in [
            ("wirless headp", Some("wireless headphone")),
            ("wireless hedphones", Some("wireless headphones")),
            ("wirless hedphones", Some("wireless headphones")),
            ("shower head", None),
            ("shower hea", Some("shower head")),
        ] {
            assert_eq!(index.read(query, true).as_deref(), want, "{query:?}");
        }
        // Suggestions: the completions that go with the other words, the word itself among
        // them, each with the documents in common.
        let suggest = |q: &str| index.suggest(q, 5);
        let s = |pairs: &[(&str, usize)]| -> Vec<(String, usize)> {
            pairs.iter().map(|(q, n)| ((*q).to_string(), *n)).collect()
        };
        assert_eq!(suggest("desk la"), s(&[("desk lamp", 1)]));
        assert_eq!(suggest("lam"), s(&[("lamp", 3), ("lampshade", 1)]));
        assert_eq!(suggest("lamp"), s(&[("lamp", 3), ("lampshade", 1)]));
        assert_eq!(suggest("dessk la"), s(&[("desk lamp", 1)]));
        assert_eq!(
            suggest("hea"),
            s(&[("headphone", 2), ("head", 1), ("headband", 1)])
        );
        assert_eq!(index.suggest("hea", 1), s(&[("headphone", 2)]));
        // A query of any length: the last 8 indexed words weigh the completions.
        let long = format!("{}desk la", "tea ".repeat(100_000));
        assert_eq!(suggest(&long)[0].1, 1);
        assert!(suggest("lamp ").is_empty() && suggest("xyz").is_empty());
        // Not typing: "headp" is one edit from "head", but no document holds "head" with
        // "wireless": left as typed; alone it is read as "head".
        assert_eq!(index.read("wireless headp", false), None);
        assert_eq!(index.read("headp", false).as_deref(), Some("head"));
        assert_eq!(last_word("wireless headp"), ("wireless ", "headp"));
        assert_eq!(last_word("crème brû"), ("crème ", "brû"));
        assert_eq!(last_word("tea!"), ("tea!", ""));
        assert_eq!(last_word("tea 🍵"), ("tea 🍵", ""));
        assert_eq!(last_word("抹茶 日本"), ("抹茶 ", "日本"));
        for doc in [5, 6, 7] {
            index.remove(doc);
        }
        assert_eq!(index.complete("gr").as_deref(), Some("grinder"));
    }

    /// Two edits are corrected from six letters on, only when no term is one edit away, to
    /// the term in the most documents, written plural when the word was; the vocabulary
    /// follows removals.
    #[test]
    fn a_word_two_edits_off_is_corrected_when_long_enough() {
        let mut index = indexed(&[
            "wireless headphones",
            "studio headphones",
            "bluetooth speaker",
            "battery pack",
            "coffee grinder",
            "coffee mug",
            "pepper grinder",
            "paper grinder",
        ]);
        for (query, want) in [
            ("headfones", Some("headphones")),
            ("wireless headfone", Some("wireless headphone")),
            ("blutoth speaker", Some("bluetooth speaker")),
            ("baterries", Some("batteries")),
            ("bateries", Some("batteries")),
            // One edit wins over two: "peppar" is one from "pepper", two from "paper"
            // (which is in as many documents and shorter).
            ("peppar", Some("pepper")),
            // Under six letters, two edits stay as typed; so do far misses.
            ("cofie", None),
            ("xylophone", None),
            ("headphones", None),
        ] {
            assert_eq!(index.correct(query).as_deref(), want, "{query:?}");
        }
        // The term in more documents wins: "coffee" (2) over "toffee" (1), both two off.
        index.insert(8, "toffee");
        assert_eq!(index.correct("xoffex").as_deref(), Some("coffee"));
        index.insert(9, "toffee apple");
        index.insert(10, "toffee sauce");
        assert_eq!(index.correct("xoffex").as_deref(), Some("toffee"));
        // A neighbour no document holds with the query's other words is no correction:
        // "lover" is a word the catalog lacks, not a slip for "loved" ...
        index.insert(11, "loved by baristas");
        assert_eq!(index.correct("gift for a coffee lover"), None);
        assert_eq!(index.correct("lover").as_deref(), Some("loved"));
        // ... nor is one found with them no more often than chance: a word in every text.
        let boilerplate = indexed(&[
            "coffee mug, loved by all",
            "coffee cup, loved by all",
            "teapot, loved by all",
            "desk lamp, loved by all",
        ]);
        assert_eq!(boilerplate.correct("coffee lover"), None);
        assert_eq!(
            boilerplate.correct("coffee cupp").as_deref(),
            Some("coffee cup")
        );
        // ... and among neighbours the one found with the others wins over a commoner one.
        index.insert(12, "toffee");
        index.insert(13, "coffee cup");
        assert_eq!(index.correct("xoffex cup").as_deref(), Some("coffee cup"));
        // Gone from the catalog, gone from the corrections.
        for doc in [0, 1] {
            index.remove(doc);
        }
        assert_eq!(index.correct("headfones"), None);
        index.insert(0, "over-ear headphones");
        assert_eq!(index.correct("headfones").as_deref(), Some("headphones"));
    }

    #[test]
    fn words_of_the_language_are_no_misspellings() {
        // "over" goes with "coffee" (pour-over sets), so without a lexicon "lover" is read
        // as it, and "rain" with "jacket".
        let mut index = indexed(&[
            "pour-over coffee set",
            "pour-over coffee kettle",
            "coffee beans",
            "rain jacket",
            "rain boots",
            "down jacket",
        ]);
        let typed = ["gift for a coffee lover", "coffee lovers", "rani jacket"];
        let read = typed.map(|q| index.correct(q));
        assert_eq!(
            read.each_ref().map(Option::as_deref),
            [
                Some("gift for a coffee over"),
                Some("coffee overs"),
                Some("rain jacket")
            ]
        );
        let lexicon: HashSet<String> = ["lover", "rani", "coffee", "gift"].map(String::from).into();
        index.set_lexicon(Some(Arc::new(lexicon)));
        assert_eq!(index.lexicon_len(), 4);
        // Real words stay as typed, plurals of them too (the price: a slip that makes a
        // real word, "rani" for "rain", stays too) ...
        for query in typed {
            assert_eq!(index.correct(query), None, "{query:?}");
        }
        // ... words that are not are still corrected, beside them or in completions.
        assert_eq!(
            index.correct("cofee lover").as_deref(),
            Some("coffee lover")
        );
        assert_eq!(
            index.read("coffee lover be", true).as_deref(),
            Some("coffee lover bean")
        );
        index.set_lexicon(None);
        assert_eq!(
            index.correct("coffee lover").as_deref(),
            Some("coffee over")
        );
    }

    #[test]
    fn a_word_of_the_lexicon_with_an_english_ending_is_a_word() {
        let lexicon: HashSet<String> = [
            "blend",
            "project",
            "make",
            "shop",
            "tidy",
            "glass",
            "assassins",
            "how",
            "wir",
            "wire",
            "ꀀꀀ",
        ]
        .map(String::from)
        .into();
        for word in [
            "blend",
            "blender",
            "blenders",
            "projector",
            "maker",
            "shopper",
            "tidiness",
            "glasses",
            "wireless",
        ] {
            assert!(is_word(&lexicon, word), "{word}");
        }
        // Slips that look like endings: a doubled "s", a stem under four letters ("how",
        // German "wir"), an "e" dropped before a consonant ("wirless"), other scripts.
        for word in [
            "assassinss",
            "hower",
            "wirless",
            "blendx",
            "ꀀꀀer",
            "ꀀꀀꀀer",
            "er",
            "",
        ] {
            assert!(!is_word(&lexicon, word), "{word}");
        }
    }

    #[test]
    fn edit_distances_count_swaps_as_one() {
        let d = |a: &str, b: &str| {
            let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
            edit_distance(&a, &b, 2)
        };
        assert_eq!(d("headfone", "headphone"), Some(2));
        assert_eq!(d("ca", "ac"), Some(1));
        assert_eq!(d("blutoth", "bluetooth"), Some(2));
        assert_eq!(d("", "ab"), Some(2));
        assert_eq!(d("abc", "abc"), Some(0));
        assert_eq!(d("kitten", "sitting"), None);
        assert_eq!(d("abc", "abcdef"), None);
        assert_eq!(d("crème", "creme"), Some(1));
        // The banded table against the whole one, on random words of three letters' alphabet
        // (many swaps and repeats).
        let full = |a: &[u8], b: &[u8]| {
            let mut t = vec![vec![0usize; b.len() + 1]; a.len() + 1];
            for (i, row) in t.iter_mut().enumerate() {
                row[0] = i;
            }
            for (j, cell) in t[0].iter_mut().enumerate() {
                *cell = j;
            }
            for i in 1..=a.len() {
                for j in 1..=b.len() {
                    let cost = usize::from(a[i - 1] != b[j - 1]);
                    t[i][j] = (t[i - 1][j] + 1)
                        .min(t[i][j - 1] + 1)
                        .min(t[i - 1][j - 1] + cost);
                    if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                        t[i][j] = t[i][j].min(t[i - 2][j - 2] + 1);
                    }
                }
            }
            t[a.len()][b.len()]
        };
        let mut rng = crate::rng::XorShift::new(11);
        let word = |rng: &mut crate::rng::XorShift| -> Vec<u8> {
            let n = (rng.unit() * 9.0) as usize;
            (0..n)
                .map(|_| b'a' + (rng.unit() * 3.0).min(2.0) as u8)
                .collect()
        };
        for _ in 0..20_000 {
            let (a, b) = (word(&mut rng), word(&mut rng));
            for max in [1, 2, 3] {
                let want = Some(full(&a, &b)).filter(|&d| d <= max);
                assert_eq!(edit_distance(&a, &b, max), want, "{a:?} {b:?} {max}");
            }
        }
    }

    #[test]
    fn a_misspelt_word_becomes_its_most_common_neighbour() {
        let index = indexed(&[
            "wireless headphones",
            "studio headphones",
            "headphone stand",
            "headband",
            "leather wallet",
            "Café crème mug",
            "кружка",
            "usb cable 420",
        ]);
        for (query, want) in [
            // Each kind of edit, plurals folded on both sides, case and punctuation kept.
            ("wireless hedphones", Some("wireless headphones")),
            ("Wireles, headphones!", Some("wireless, headphones!")),
            ("headpohnes", Some("headphones")),
            ("headphonnes", Some("headphones")),
            ("leathre walet", Some("leather wallet")),
            ("wallez", Some("wallet")),
            // Other scripts: edits within the word's own letters (and a-z): a doubled or
            // dropped letter is found; a missing accent is no misspelling (folded alike).
            ("crèmme mug", Some("crème mug")),
            ("cremme mug", Some("creme mug")),
            ("кружа", Some("кружка")),
            ("creme mug", None),
            ("CAFE", None),
            // Known words, short words, numbers, stop words and far misses stay as typed.
            ("leather headband", None),
            ("mig", None),
            ("usb cable 421", None),
            ("with", None),
            ("xylophone", None),
            ("", None),
        ] {
            assert_eq!(index.correct(query).as_deref(), want, "{query:?}");
        }
        // A query of any size: the first 8 unknown words are looked at, words over 32
        // letters never (a 100,000-letter word has ~5.5 million neighbours of its length).
        let long = format!("{} walet", "xylophone ".repeat(8));
        assert_eq!(index.correct(&long), None);
        let long = format!("{} walet {}", "xylophone ".repeat(7), "q".repeat(100_000));
        let fixed = index.correct(&long).unwrap();
        assert!(fixed.ends_with(&format!("wallet {}", "q".repeat(100_000))));
        let huge = "walet ".repeat(200_000);
        let fixed = index.correct(&huge).unwrap();
        assert_eq!(fixed.matches("wallet").count(), 8);
        // The neighbour in the most documents wins: "headphone" (3) over "headband" (1).
        let mut tie = Bm25::default();
        tie.insert(0, "cart");
        tie.insert(1, "card");
        tie.insert(2, "card");
        assert_eq!(tie.correct("carx").as_deref(), Some("card"));
        tie.insert(3, "cart");
        assert_eq!(
            tie.correct("carx").as_deref(),
            Some("card"),
            "ties: first by text"
        );
        tie.insert(4, "cart");
        assert_eq!(tie.correct("carx").as_deref(), Some("cart"));
        // Equal counts: the longer word ("grindr" is "grinder" less a letter, or "grind"
        // plus one).
        tie.insert(5, "coffee grinder");
        tie.insert(6, "fine grind");
        assert_eq!(tie.correct("grindr").as_deref(), Some("grinder"));
        tie.insert(7, "grind");
        assert_eq!(tie.correct("grindr").as_deref(), Some("grind"));
    }

    /// Accents and case do not separate a query from a title; other scripts keep their
    /// letters.
    #[test]
    fn accents_fold_on_both_sides() {
        for (word, folded) in [
            ("Crème", "creme"),
            ("BRÛLÉE", "brulee"),
            ("Smörgåsbord", "smorgasbord"),
            ("Straße", "strasse"),
            ("Æble", "aeble"),
            ("Øl", "ol"),
            ("Łódź", "lodz"),
            ("Ñandú", "nandu"),
            ("naïve", "naive"),
            ("кружка", "кружка"),
            ("咖啡机", "咖啡机"),
            ("420", "420"),
        ] {
            assert_eq!(fold(word), folded, "{word}");
        }
        let mut index = Bm25::default();
        index.insert(0, "Crème Brûlée torch");
        index.insert(1, "creme brulee ramekins");
        index.insert(2, "kitchen torch");
        let s = index.scores("creme brulee");
        assert!(
            s.contains_key(&0) && s.contains_key(&1) && !s.contains_key(&2),
            "{s:?}"
        );
        assert_eq!(index.scores("CRÈME BRÛLÉE"), s);
        assert_eq!(terms("Crèmes brûlée"), ["creme", "brulee"]);
    }

    #[test]
    fn chinese_and_japanese_words_are_found_inside_unspaced_titles() {
        assert_eq!(
            terms("不锈钢咖啡研磨机 Pro"),
            [
                "不锈", "锈钢", "钢咖", "咖啡", "啡研", "研磨", "磨机", "pro"
            ]
        );
        assert_eq!(terms("iPhone15手机壳"), ["iphone15", "手机", "机壳"]);
        assert_eq!(terms("包 bags"), ["包", "bag"]);
        assert_eq!(terms("ステンレス"), ["ステ", "テン", "ンレ", "レス"]);
        let mut index = Bm25::default();
        index.insert(0, "不锈钢咖啡研磨机");
        index.insert(1, "电动咖啡机");
        index.insert(2, "不锈钢保温杯");
        let found = |query: &str| {
            let mut ids: Vec<u32> = index.scores(query).into_keys().collect();
            ids.sort_unstable();
            ids
        };
        assert_eq!(found("研磨机"), [0], "a word inside a title");
        assert_eq!(found("咖啡"), [0, 1]);
        assert_eq!(found("不锈钢 杯"), [0, 2]);
        assert_eq!(found("保温杯"), [2]);
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

    /// The per-document matcher answers as the listed matches do, for plain, widened
    /// (synonyms, words written together) and unmatched queries, over every document.
    #[test]
    fn the_matcher_agrees_with_the_matches() {
        use crate::synonyms::{SynonymRule, Synonyms};
        let mut index = indexed(&[
            "leather sofa",
            "sofa couch cover",
            "macbook air",
            "mac book stand",
            "red running shoes",
            "blue kettle",
        ]);
        let rule = |phrases: &[&str], to: Option<&str>| SynonymRule {
            phrases: phrases.iter().map(|p| p.to_string()).collect(),
            replacement: to.map(str::to_string),
        };
        let synonyms = Synonyms::new(vec![
            rule(&["couch", "settee"], None),
            rule(&["boiler"], Some("kettle")),
        ]);
        index.set_synonyms(Arc::new(synonyms.unwrap()));
        for query in [
            "sofa",
            "settee",
            "macbook",
            "mac book",
            "running",
            "kettle red",
            "boiler",
            "nothing",
            "",
        ] {
            let matches = index.matches(query);
            let matcher = index.matcher(query);
            for doc in 0..8 {
                assert_eq!(matcher(doc), matches.contains(doc), "{query:?} doc {doc}");
            }
        }
        assert!(!Bm25::default().matcher("sofa")(0));
    }
}
