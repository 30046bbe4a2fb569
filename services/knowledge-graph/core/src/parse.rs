//! Line parsers for the formats `soukctl kg load` reads. Each returns `Ok(None)` for lines to
//! skip (blank, comments) and an error whose message is the reason, for the caller to prefix
//! with file and line.
use crate::{KgError, Triple};

/// `head<TAB>relation<TAB>tail`. Lines starting with `#` and blank lines are skipped.
///
/// # Errors
/// Wrong column count, an empty or oversized field.
pub fn tsv_line(line: &str) -> Result<Option<Triple>, KgError> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.trim().is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let fields: Vec<&str> = line.split('\t').collect();
    if fields.len() != 3 {
        return Err(KgError::InvalidInput(format!(
            "expected 3 tab-separated columns (head, relation, tail), found {}",
            fields.len()
        )));
    }
    Triple::new(fields[0].trim(), fields[1].trim(), fields[2].trim()).map(Some)
}

/// One N-Triples statement: `<s> <p> <o> .` where the object may be an IRI, a blank node
/// (`_:b0`) or a literal (`"text"`, with an optional `@lang` or `^^<type>`). Entities keep
/// their IRI without angle brackets; a literal keeps its lexical form.
///
/// # Errors
/// A term that does not parse or a missing final dot.
pub fn ntriples_line(line: &str) -> Result<Option<Triple>, KgError> {
    let rest = line.trim();
    if rest.is_empty() || rest.starts_with('#') {
        return Ok(None);
    }
    let (subject, rest) = nt_term(rest, "subject")?;
    let (predicate, rest) = nt_term(rest, "predicate")?;
    let (object, rest) = nt_term(rest, "object")?;
    if rest.trim() != "." {
        return Err(KgError::InvalidInput(
            "N-Triples statement must end with ' .'".to_string(),
        ));
    }
    Triple::new(subject, predicate, object).map(Some)
}

fn nt_term<'a>(input: &'a str, what: &str) -> Result<(String, &'a str), KgError> {
    let input = input.trim_start();
    let bad = |why: &str| KgError::InvalidInput(format!("N-Triples {what}: {why}"));
    if let Some(rest) = input.strip_prefix('<') {
        let end = rest.find('>').ok_or_else(|| bad("unterminated IRI"))?;
        Ok((rest[..end].to_string(), &rest[end + 1..]))
    } else if let Some(rest) = input.strip_prefix("_:") {
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        if end == 0 {
            return Err(bad("empty blank node label"));
        }
        Ok((format!("_:{}", &rest[..end]), &rest[end..]))
    } else if let Some(rest) = input.strip_prefix('"') {
        if what != "object" {
            return Err(bad("a literal can only be the object"));
        }
        let mut value = String::new();
        let mut chars = rest.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, 't')) => value.push('\t'),
                    Some((_, other)) => value.push(other),
                    None => return Err(bad("dangling escape")),
                },
                '"' => {
                    let mut after = &rest[i + 1..];
                    if let Some(tagged) = after.strip_prefix('@') {
                        let end = tagged.find(char::is_whitespace).unwrap_or(tagged.len());
                        after = &tagged[end..];
                    } else if let Some(typed) = after.strip_prefix("^^<") {
                        let end = typed
                            .find('>')
                            .ok_or_else(|| bad("unterminated datatype IRI"))?;
                        after = &typed[end + 1..];
                    }
                    return Ok((value, after));
                }
                other => value.push(other),
            }
        }
        Err(bad("unterminated literal"))
    } else {
        Err(bad("expected <IRI>, _:blank or \"literal\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsv_accepts_three_columns_and_skips_comments() {
        let t = tsv_line("item:a\tbrand\tbrand:x\r").unwrap().unwrap();
        assert_eq!(
            (t.head.as_str(), t.relation.as_str(), t.tail.as_str()),
            ("item:a", "brand", "brand:x")
        );
        assert_eq!(tsv_line("# comment").unwrap(), None);
        assert_eq!(tsv_line("   ").unwrap(), None);
    }

    #[test]
    fn tsv_rejects_wrong_columns_and_empty_fields() {
        assert!(
            tsv_line("a\tb")
                .unwrap_err()
                .to_string()
                .contains("found 2")
        );
        assert!(
            tsv_line("a\tb\tc\td")
                .unwrap_err()
                .to_string()
                .contains("found 4")
        );
        assert!(
            tsv_line("a\t\tc")
                .unwrap_err()
                .to_string()
                .contains("relation is empty")
        );
        let long = "x".repeat(1025);
        assert!(
            tsv_line(&format!("{long}\tr\tt"))
                .unwrap_err()
                .to_string()
                .contains("1025 bytes")
        );
    }

    #[test]
    fn ntriples_parses_iris_blank_nodes_and_literals() {
        let t = ntriples_line("<http://e/a> <http://r/b> \"caf\\\"e\"@en .")
            .unwrap()
            .unwrap();
        assert_eq!(t.head, "http://e/a");
        assert_eq!(t.tail, "caf\"e");
        let t = ntriples_line("_:b1 <p> <o> .").unwrap().unwrap();
        assert_eq!(t.head, "_:b1");
        assert!(ntriples_line("<a> <b> <c>").is_err(), "missing dot");
        assert!(ntriples_line("<a <b> <c> .").is_err(), "broken IRI");
        assert!(
            ntriples_line("\"lit\" <b> <c> .").is_err(),
            "literal subject"
        );
    }
}
