//! Price phrases in a search: "tents under 300", "boots between 50 and 100", "lamp over $40",
//! "mugs $10-$20". `Rank` reads such a phrase as a price filter (tightening the request's own
//! bounds) and ranks the other words, so that a shopper who types a budget gets it instead of
//! items whose text happens to hold the number.
//!
//! Conservative by design: a number is a price only after a price word ("under", "between",
//! "up to", a currency sign...) and when no unit follows it ("tv over 50 inch", "tent for
//! up to 4 people" and "under armour" stay words).

/// A price phrase found in a query.
#[derive(Debug, Clone, PartialEq)]
pub struct PricePhrase {
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// The phrase as typed ("under $300").
    pub phrase: String,
    /// The query without it (empty when it was all price: a browse by price).
    pub rest: String,
    /// Whether it is the query's last words (then no word before it is being typed).
    pub ends_query: bool,
}

/// Words before a number that make it an upper bound.
const UPPER: &[&[&str]] = &[
    &["under"],
    &["below"],
    &["beneath"],
    &["less", "than"],
    &["cheaper", "than"],
    &["max"],
    &["maximum"],
    &["up", "to"],
    &["upto"],
    &["within"],
    &["<"],
    &["<="],
];

/// Words before a number that make it a lower bound.
const LOWER: &[&[&str]] = &[
    &["over"],
    &["above"],
    &["more", "than"],
    &["min"],
    &["minimum"],
    &["at", "least"],
    &["from"],
    &[">"],
    &[">="],
];

/// Currency words that may follow a price.
const CURRENCY_WORDS: &[&str] = &[
    "dollar", "dollars", "usd", "bucks", "eur", "euro", "euros", "pound", "pounds", "gbp", "rs",
    "inr", "rupees",
];

/// Currency signs around a price.
const CURRENCY_SIGNS: &[char] = &['$', '€', '£', '₹'];

/// Words after a number that make it a quantity, not a price.
const UNITS: &[&str] = &[
    "inch", "inches", "in", "\"", "cm", "mm", "m", "km", "ft", "feet", "foot", "gb", "tb", "mb",
    "kg", "g", "gram", "grams", "lb", "lbs", "oz", "ounce", "ounces", "ml", "l", "liter", "liters",
    "litre", "litres", "gallon", "gallons", "qt", "quart", "cup", "cups", "w", "watt", "watts",
    "v", "volt", "volts", "mah", "hz", "mp", "pack", "packs", "pc", "pcs", "piece", "pieces",
    "people", "person", "persons", "seater", "player", "players", "year", "years", "month",
    "months", "day", "days", "hour", "hours", "min", "mins", "minutes", "x", "%", "percent",
    "degrees", "speed", "bar",
];

/// A token's price: digits with an optional decimal part and thousands commas, with currency
/// signs around it; whether it carried a sign.
fn price(token: &str) -> Option<(f64, bool)> {
    let bare = token.trim_matches(|c| CURRENCY_SIGNS.contains(&c));
    let signed = bare.len() != token.len();
    if bare.is_empty() || !bare.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    if !bare
        .chars()
        .all(|c| c.is_ascii_digit() || c == '.' || c == ',')
    {
        return None;
    }
    let value: f64 = bare.replace(',', "").parse().ok()?;
    value.is_finite().then_some((value, signed))
}

/// The token, lower-cased and without trailing punctuation.
fn word(token: &str) -> String {
    token
        .trim_end_matches(['.', ',', '!', '?', ';', ':'])
        .to_lowercase()
}

/// What follows a number at `tokens[i - 1]`: `None` when a unit makes it a quantity, else
/// whether `tokens[i]` is a currency word (part of the price).
fn after_number(tokens: &[&str], i: usize) -> Option<bool> {
    let Some(next) = tokens.get(i).map(|t| word(t)) else {
        return Some(false);
    };
    if UNITS.contains(&next.as_str()) {
        return None;
    }
    Some(CURRENCY_WORDS.contains(&next.as_str()))
}

/// A price at `tokens[i]`: its value and how many tokens it takes (a currency word after it
/// counts), unless a unit follows it.
fn price_at(tokens: &[&str], i: usize) -> Option<(f64, usize, bool)> {
    let (value, signed) = price(tokens.get(i)?.trim_end_matches([',', '.', '!', '?']))?;
    let currency_word = after_number(tokens, i + 1)?;
    Some((
        value,
        1 + usize::from(currency_word),
        signed || currency_word,
    ))
}

/// Whether `tokens[i..]` begins with one of `words`; how many tokens it takes.
fn starts_with(tokens: &[&str], i: usize, words: &[&[&str]]) -> Option<usize> {
    words
        .iter()
        .find(|w| {
            w.iter()
                .enumerate()
                .all(|(j, w)| tokens.get(i + j).is_some_and(|t| word(t) == *w))
        })
        .map(|w| w.len())
}

/// The first price phrase of `query`, if any (see the module's doc).
pub fn price_phrase(query: &str) -> Option<PricePhrase> {
    let tokens: Vec<&str> = query.split_whitespace().collect();
    for i in 0..tokens.len() {
        // (min, max, tokens taken from i)
        let found: Option<(Option<f64>, Option<f64>, usize)> = if word(tokens[i]) == "between" {
            range(&tokens, i + 1, false).map(|(lo, hi, n)| (Some(lo), Some(hi), 1 + n))
        } else if let Some(n) = starts_with(&tokens, i, UPPER) {
            price_at(&tokens, i + n).map(|(v, used, _)| (None, Some(v), n + used))
        } else if let Some(n) = starts_with(&tokens, i, LOWER) {
            // "from 20 to 40" is a range.
            range(&tokens, i + n, false)
                .map(|(lo, hi, used)| (Some(lo), Some(hi), n + used))
                .or_else(|| price_at(&tokens, i + n).map(|(v, used, _)| (Some(v), None, n + used)))
        } else {
            // "$20-$40", "20 to 40 dollars": a bare range needs a currency.
            range(&tokens, i, true).map(|(lo, hi, n)| (Some(lo), Some(hi), n))
        };
        let Some((min, max, taken)) = found else {
            continue;
        };
        // "gift for under 50": the "for" goes with the phrase.
        let start = if i > 0 && word(tokens[i - 1]) == "for" {
            i - 1
        } else {
            i
        };
        let end = i + taken;
        let rest: Vec<&str> = tokens[..start]
            .iter()
            .chain(&tokens[end..])
            .copied()
            .collect();
        return Some(PricePhrase {
            min,
            max,
            phrase: tokens[start..end].join(" "),
            rest: rest.join(" "),
            ends_query: end == tokens.len(),
        });
    }
    None
}

/// A range at `tokens[i..]`: "20 and 40", "20 to 40", "20-40", "$20 - $40"; lower bound first
/// whatever the order typed; with `needs_currency`, one side must carry a currency.
fn range(tokens: &[&str], i: usize, needs_currency: bool) -> Option<(f64, f64, usize)> {
    let first = tokens.get(i)?;
    // One token: "20-40", "$20-$40".
    if let Some((a, b)) = first.split_once('-')
        && let (Some((lo, s1)), Some((hi, s2))) = (price(a), price(b))
    {
        let currency_word = after_number(tokens, i + 1)?;
        if needs_currency && !(s1 || s2 || currency_word) {
            return None;
        }
        return Some((lo.min(hi), lo.max(hi), 1 + usize::from(currency_word)));
    }
    let (lo, used, s1) = price_at(tokens, i)?;
    let joiner = word(tokens.get(i + used)?);
    if !["and", "to", "-", "–"].contains(&joiner.as_str()) {
        return None;
    }
    let (hi, used2, s2) = price_at(tokens, i + used + 1)?;
    if needs_currency && !(s1 || s2) {
        return None;
    }
    Some((lo.min(hi), lo.max(hi), used + 1 + used2))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn read(q: &str) -> Option<(Option<f64>, Option<f64>, String, String)> {
        price_phrase(q).map(|p| {
            // Last exactly when nothing of the query follows it.
            assert_eq!(
                p.ends_query,
                q.trim_end().ends_with(p.phrase.as_str()),
                "{q}"
            );
            (p.min, p.max, p.phrase, p.rest)
        })
    }

    #[test]
    fn budgets_are_read_and_taken_out_of_the_words() {
        // (query, min, max, the phrase as typed, the words left)
        type Case<'a> = (&'a str, Option<f64>, Option<f64>, &'a str, &'a str);
        let cases: &[Case] = &[
            ("tents under 300", None, Some(300.0), "under 300", "tents"),
            ("Tents UNDER $300", None, Some(300.0), "UNDER $300", "Tents"),
            (
                "lamp over 40 dollars",
                Some(40.0),
                None,
                "over 40 dollars",
                "lamp",
            ),
            (
                "boots less than 99.99",
                None,
                Some(99.99),
                "less than 99.99",
                "boots",
            ),
            (
                "gift for under 50",
                None,
                Some(50.0),
                "for under 50",
                "gift",
            ),
            (
                "under 1,299 laptop",
                None,
                Some(1299.0),
                "under 1,299",
                "laptop",
            ),
            (
                "boots between 100 and 50",
                Some(50.0),
                Some(100.0),
                "between 100 and 50",
                "boots",
            ),
            (
                "mugs from 10 to 20",
                Some(10.0),
                Some(20.0),
                "from 10 to 20",
                "mugs",
            ),
            ("mugs $10-$20", Some(10.0), Some(20.0), "$10-$20", "mugs"),
            (
                "mugs 10-20 euros",
                Some(10.0),
                Some(20.0),
                "10-20 euros",
                "mugs",
            ),
            ("under 50", None, Some(50.0), "under 50", ""),
            (
                "iphone 5 case under €20",
                None,
                Some(20.0),
                "under €20",
                "iphone 5 case",
            ),
        ];
        for (q, min, max, phrase, rest) in cases {
            assert_eq!(
                read(q),
                Some((*min, *max, phrase.to_string(), rest.to_string())),
                "{q}"
            );
        }
    }

    /// Numbers that are not budgets, and price words that are not before one.
    #[test]
    fn quantities_and_words_stay_words() {
        for q in [
            "under armour shoes",
            "over the knee snow boots",
            "tv over 50 inch",
            "tent for up to 4 people",
            "16 gb memory card",
            "iphone 5",
            "mugs 10-20",
            "levis 505",
            "seagate 2tb hard disk",
            "max 2 players",
            "under 50gb",
            "between friends",
            "",
        ] {
            assert_eq!(read(q), None, "{q}");
        }
    }
}
