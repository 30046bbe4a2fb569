//! Reading load files into batches, with every bad line reported as `file:line: reason`.
use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use souk_kg_core::{Triple, parse};
use souk_proto::ranker::v1 as rk;
use souk_ranker_core::pins::{Boost, PinRule, Pins, Standing};
use souk_ranker_core::synonyms::{SynonymRule, Synonyms};

/// A line that could not be used.
#[derive(Debug, Clone)]
pub struct LineError {
    pub file: PathBuf,
    pub line: u64,
    pub reason: String,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.reason)
    }
}

/// A file's rows, each parsed or the reason it could not be.
pub type Rows<T> = Box<dyn Iterator<Item = Result<T, LineError>> + Send>;

/// Triple file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TripleFormat {
    /// head<TAB>relation<TAB>tail (a header row `head<TAB>relation<TAB>tail` is skipped)
    Tsv,
    /// head,relation,tail (RFC 4180 quoting; a header row `head,relation,tail` is skipped)
    Csv,
    /// N-Triples: <s> <p> <o> .
    Nt,
}

impl TripleFormat {
    /// From the file extension: .tsv/.txt -> TSV, .csv -> CSV, .nt -> N-Triples.
    pub fn from_path(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "tsv" | "txt" | "tab" => Some(Self::Tsv),
            "csv" => Some(Self::Csv),
            "nt" | "ntriples" => Some(Self::Nt),
            _ => None,
        }
    }
}

/// Counts bytes read, for the progress bar.
pub struct Counting<R> {
    inner: R,
    pub read: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

/// The UTF-8 byte-order mark that Excel and other Windows tools write at the start of a text
/// file: not part of the first line's text.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// A file read from its start, or from past its byte-order mark: the bytes read to look for
/// the mark go first. Not a seek back: a pipe (`/dev/stdin`, `<(zcat feed.csv.gz)`) cannot.
pub type Opened = std::io::Chain<std::io::Cursor<Vec<u8>>, File>;

/// Opens `path` for reading with a byte counter, past a leading byte-order mark (which would
/// otherwise become part of the first field: an entity `\u{feff}item:p1` that no one can name).
/// A pipe reads as a file does (its size is 0: no progress bar).
///
/// # Errors
/// When the file cannot be opened or read.
pub fn open(path: &Path) -> anyhow::Result<(Counting<Opened>, u64)> {
    let failed = |e: std::io::Error| anyhow::anyhow!("{}: {e}", path.display());
    let mut file = File::open(path).map_err(failed)?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut head = Vec::with_capacity(BOM.len());
    (&mut file)
        .take(BOM.len() as u64)
        .read_to_end(&mut head)
        .map_err(failed)?;
    if head == BOM {
        head.clear();
    }
    Ok((
        Counting {
            inner: std::io::Cursor::new(head).chain(file),
            read: Default::default(),
        },
        size,
    ))
}

/// Every triple of a file, with line numbers; bad lines come back as errors.
pub fn triples<R: Read + Send + 'static>(
    path: &Path,
    reader: R,
    format: TripleFormat,
) -> Rows<Triple> {
    let file = path.to_path_buf();
    match format {
        TripleFormat::Tsv | TripleFormat::Nt => {
            let parse_line = if format == TripleFormat::Tsv {
                parse::tsv_line
            } else {
                parse::ntriples_line
            };
            Box::new(
                BufReader::new(reader)
                    .lines()
                    .enumerate()
                    .filter_map(move |(i, line)| {
                        let at = |reason: String| LineError {
                            file: file.clone(),
                            line: i as u64 + 1,
                            reason,
                        };
                        match line {
                            Err(e) => Some(Err(at(format!("cannot read: {e}")))),
                            Ok(line) if i == 0 && is_triple_header(line.split('\t')) => None,
                            Ok(line) => match parse_line(&line) {
                                Ok(Some(t)) => Some(Ok(t)),
                                Ok(None) => None,
                                Err(e) => Some(Err(at(e.to_string()))),
                            },
                        }
                    }),
            )
        }
        TripleFormat::Csv => Box::new(CsvLines::new(reader).enumerate().filter_map(
            move |(i, (line, record))| {
                let at = |reason: String| LineError {
                    file: file.clone(),
                    line,
                    reason,
                };
                let record = match record {
                    Ok(r) => r,
                    Err(reason) => return Some(Err(at(reason))),
                };
                if i == 0 && is_triple_header(record.iter()) {
                    return None;
                }
                if record.len() != 3 {
                    return Some(Err(at(format!(
                        "expected 3 columns (head, relation, tail), found {}",
                        record.len()
                    ))));
                }
                Some(
                    Triple::new(record[0].trim(), record[1].trim(), record[2].trim())
                        .map_err(|e| at(e.to_string())),
                )
            },
        )),
    }
}

/// A triple file's optional header row: `head`, `relation`, `tail` in any case. Read as a
/// triple it would join two entities named "head" and "tail".
fn is_triple_header<'a>(fields: impl Iterator<Item = &'a str>) -> bool {
    fields
        .map(|f| f.trim().to_ascii_lowercase())
        .eq(["head", "relation", "tail"])
}

/// Column positions of a CSV header, by lower-cased name.
struct Columns(BTreeMap<String, usize>);

impl Columns {
    fn new(headers: &csv::StringRecord) -> Self {
        Self(
            headers
                .iter()
                .enumerate()
                .map(|(i, h)| (h.trim().to_ascii_lowercase(), i))
                .collect(),
        )
    }

    fn require(&self, names: &[&str]) -> Result<(), String> {
        let missing: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| !self.0.contains_key(*n))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("header lacks column(s): {}", missing.join(", ")))
        }
    }

    fn get<'r>(&self, record: &'r csv::StringRecord, name: &str) -> &'r str {
        self.0
            .get(name)
            .and_then(|&i| record.get(i))
            .unwrap_or("")
            .trim()
    }
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "" | "true" | "1" | "yes" | "y" => Ok(true),
        "false" | "0" | "no" | "n" => Ok(false),
        other => Err(format!("in_stock {other:?} is not true/false")),
    }
}

/// A price cell: a decimal number >= 0.
fn price(id: &str, text: &str) -> Result<f64, String> {
    let price: f64 = text
        .parse()
        .map_err(|_| format!("item {id:?}: price {text:?} is not a number"))?;
    if !price.is_finite() || price < 0.0 {
        return Err(format!(
            "item {id:?}: price must be finite and >= 0, got {text}"
        ));
    }
    Ok(price)
}

/// An attributes cell: `key=value` pairs separated by `;`, trimmed (`key=` gives an empty
/// value: a catalog row drops it, an update removes the attribute; `=value` is refused).
fn attribute_pairs(
    id: &str,
    text: &str,
) -> Result<std::collections::HashMap<String, String>, String> {
    let mut attributes = std::collections::HashMap::new();
    for pair in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("item {id:?}: attribute {pair:?} is not key=value"))?;
        if k.trim().is_empty() {
            // The ranker would drop it from a catalog row without a word.
            return Err(format!("item {id:?}: attribute {pair:?} has no name"));
        }
        // The ranker reads names without case: two of one name would leave it to guess.
        let names = attributes.keys().map(String::as_str).chain([k]);
        souk_ranker_core::item::one_attribute_per_name(id, names).map_err(|e| e.to_string())?;
        attributes.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(attributes)
}

/// Parses one catalog row (see kg-data/README.md).
/// A catalog's category column (`Outdoor > Camping > Tents`) as its levels, trimmed, empty
/// levels dropped.
pub(crate) fn category_path(text: &str) -> Vec<String> {
    text.split('>')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(String::from)
        .collect()
}

fn catalog_row(columns: &Columns, record: &csv::StringRecord) -> Result<rk::Item, String> {
    let id = columns.get(record, "id");
    if id.is_empty() {
        return Err("id is empty".into());
    }
    let title = columns.get(record, "title");
    if title.is_empty() {
        return Err(format!("item {id:?}: title is empty"));
    }
    let price = price(id, columns.get(record, "price"))?;
    let category = category_path(columns.get(record, "category"));
    let attributes = attribute_pairs(id, columns.get(record, "attributes"))?;
    Ok(rk::Item {
        id: id.to_string(),
        title: title.to_string(),
        description: columns.get(record, "description").to_string(),
        category,
        brand: columns.get(record, "brand").to_string(),
        price,
        attributes,
        in_stock: parse_bool(columns.get(record, "in_stock"))
            .map_err(|e| format!("item {id:?}: {e}"))?,
    })
}

/// One row of an item-update CSV: `id` and any of `price`, `in_stock`, `attributes`; an
/// empty cell leaves that field as it is.
fn item_update_row(
    columns: &Columns,
    record: &csv::StringRecord,
) -> Result<rk::ItemUpdate, String> {
    let id = columns.get(record, "id");
    if id.is_empty() {
        return Err("id is empty".into());
    }
    let price = match columns.get(record, "price") {
        "" => None,
        text => Some(price(id, text)?),
    };
    let in_stock = match columns.get(record, "in_stock") {
        "" => None,
        text => Some(parse_bool(text).map_err(|e| format!("item {id:?}: {e}"))?),
    };
    let attributes = attribute_pairs(id, columns.get(record, "attributes"))?;
    if price.is_none() && in_stock.is_none() && attributes.is_empty() {
        return Err(format!(
            "item {id:?}: nothing to change (price, in_stock and attributes are empty)"
        ));
    }
    Ok(rk::ItemUpdate {
        id: id.to_string(),
        price,
        in_stock,
        attributes,
    })
}

/// Item updates of a CSV with an `id` column and any of `price`, `in_stock`, `attributes`
/// (kg-data/README.md).
pub fn item_updates<R: Read + Send + 'static>(path: &Path, reader: R) -> Rows<rk::ItemUpdate> {
    csv_rows(path, reader, &["id"], item_update_row)
}

/// CSV rows parsed by `parse`, each numbered by the line it starts on (header = line 1).
fn csv_rows<R: Read + Send + 'static, T: Send + 'static>(
    path: &Path,
    reader: R,
    required: &'static [&'static str],
    parse: fn(&Columns, &csv::StringRecord) -> Result<T, String>,
) -> Rows<T> {
    let file = path.to_path_buf();
    let mut records = CsvLines::new(reader);
    let columns = match records.next() {
        Some((_, Ok(headers))) => Columns::new(&headers),
        Some((line, Err(reason))) => {
            return Box::new(std::iter::once(Err(LineError {
                file,
                line,
                reason: format!("bad CSV header: {reason}"),
            })));
        }
        None => Columns::new(&csv::StringRecord::new()),
    };
    if let Err(reason) = columns.require(required) {
        return Box::new(std::iter::once(Err(LineError {
            file,
            line: 1,
            reason,
        })));
    }
    Box::new(records.map(move |(line, record)| {
        let at = |reason: String| LineError {
            file: file.clone(),
            line,
            reason,
        };
        parse(&columns, &record.map_err(&at)?).map_err(at)
    }))
}

/// A CSV file's records, each with the line it starts on as an editor numbers them (one more
/// than the `\n`s before it), or why it cannot be read. csv's own record position is where
/// its reader stood before the record: before the blank lines it skips, and in a file with
/// CRLF line ends (Excel's) before the `\n` ending the record above, so it names the line
/// above. Here the line is counted back from where the record ends: the line breaks inside
/// its quoted fields, and its own `\n` when it has one (`LineBreaks` says where they are).
struct CsvLines<R> {
    reader: csv::Reader<LineBreaks<R>>,
    record: csv::ByteRecord,
}

impl<R: Read> CsvLines<R> {
    fn new(reader: R) -> Self {
        let reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(LineBreaks {
                inner: reader,
                read: 0,
                breaks: VecDeque::new(),
            });
        Self {
            reader,
            record: csv::ByteRecord::new(),
        }
    }
}

impl<R: Read> Iterator for CsvLines<R> {
    type Item = (u64, Result<csv::StringRecord, String>);

    fn next(&mut self) -> Option<Self::Item> {
        let before = self.reader.position().clone();
        match self.reader.read_byte_record(&mut self.record) {
            Ok(true) => {}
            Ok(false) => return None,
            // Only the reader's own failure: the csv crate reads no further after it.
            Err(e) => return Some((before.line(), Err(format!("bad CSV: {e}")))),
        }
        let after = self.reader.position().clone();
        // Whether the record's own `\n` ended it; the breaks before it are of no later record.
        let end = after.byte();
        let breaks = &mut self.reader.get_mut().breaks;
        while breaks.front().is_some_and(|&at| at + 1 < end) {
            breaks.pop_front();
        }
        let ended = breaks.front().is_some_and(|&at| at + 1 == end);
        if ended {
            breaks.pop_front();
        }
        // The lines the reader passed: blank ones it skipped, the `\n` of a CRLF above, the
        // record's own; those inside quoted fields are counted only when some are left over
        // (not in the common case of one line a record).
        let passed = after
            .line()
            .saturating_sub(before.line())
            .saturating_sub(u64::from(ended));
        let line = if passed == 0 {
            before.line()
        } else {
            let inside = memchr::memchr_iter(b'\n', self.record.as_slice()).count() as u64;
            before.line() + passed.saturating_sub(inside)
        };
        let record = csv::StringRecord::from_byte_record(self.record.clone())
            .map_err(|e| format!("bad CSV: {e}"));
        Some((line, record))
    }
}

/// A reader that notes the offset of each `\n` it passes on, for [`CsvLines`] (which drops
/// those it has passed: only the csv reader's read-ahead is held).
struct LineBreaks<R> {
    inner: R,
    read: u64,
    breaks: VecDeque<u64>,
}

impl<R: Read> Read for LineBreaks<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.breaks
            .extend(memchr::memchr_iter(b'\n', &buf[..n]).map(|i| self.read + i as u64));
        self.read += n as u64;
        Ok(n)
    }
}

/// Quoted strings (`'...'` or `"..."`) in order of appearance: the elements of a Python-list
/// string such as `['footwear', "women's footwear"]`.
fn quoted_strings(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(['\'', '"']) {
        let quote = rest[start..].chars().next().unwrap_or('"');
        let body = &rest[start + 1..];
        match body.find(quote) {
            Some(end) => {
                out.push(&body[..end]);
                rest = &body[end + 1..];
            }
            None => break,
        }
    }
    out
}

/// `key`/`value` pairs of a specification string, in either the Python form
/// `[{'key': 'Type', 'value': 'Bellies'}]` or the Ruby form
/// `{"product_specification"=>[{"key"=>"Type", "value"=>"Bellies"}]}`. Entries without a key
/// are skipped.
fn specification_pairs(text: &str) -> Vec<(String, String)> {
    let strings = quoted_strings(text);
    let mut out = Vec::new();
    let mut i = 0;
    while i + 3 < strings.len() {
        if strings[i] == "key" && strings[i + 2] == "value" {
            out.push((
                strings[i + 1].trim().to_string(),
                strings[i + 3].trim().to_string(),
            ));
            i += 4;
        } else {
            i += 1;
        }
    }
    out
}

/// Attributes kept per Flipkart item, and the longest key or value kept.
const MAX_ATTRIBUTES: usize = 24;
const MAX_ATTRIBUTE_CHARS: usize = 80;

/// One row of the Flipkart export (`../shared/datasets/catalog/flipkart-1k.csv` and the full
/// 20k-product crawl it comes from): `pid` is the id, the category tree is a Python-list string
/// whose last element often repeats the product name (dropped), the brand falls back to the
/// specification's `Brand`, the price is the discounted price (what a shopper pays).
fn flipkart_row(columns: &Columns, record: &csv::StringRecord) -> Result<rk::Item, String> {
    let id = match columns.get(record, "pid") {
        "" => columns.get(record, "uniq_id"),
        pid => pid,
    };
    if id.is_empty() {
        return Err("pid and uniq_id are both empty".into());
    }
    let title = columns.get(record, "product_name");
    if title.is_empty() {
        return Err(format!("item {id:?}: product_name is empty"));
    }
    let price_text = match columns.get(record, "discounted_price") {
        "" => columns.get(record, "retail_price"),
        p => p,
    };
    let price: f64 = price_text.parse().map_err(|_| {
        format!("item {id:?}: discounted_price/retail_price {price_text:?} is not a number")
    })?;
    if !price.is_finite() || price < 0.0 {
        return Err(format!(
            "item {id:?}: price must be finite and >= 0, got {price_text}"
        ));
    }
    let tree = columns.get(record, "product_category_tree");
    let mut category: Vec<String> = quoted_strings(tree)
        .into_iter()
        .flat_map(|s| s.split(">>"))
        .map(|c| c.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|c| !c.is_empty())
        .collect();
    if category.len() > 1
        && category
            .last()
            .is_some_and(|last| last.eq_ignore_ascii_case(title) || category.len() > 4)
    {
        category.pop();
    }
    let specs = specification_pairs(columns.get(record, "product_specifications"));
    let mut brand = columns.get(record, "brand").to_string();
    if brand.is_empty()
        && let Some((_, b)) = specs.iter().find(|(k, _)| k.eq_ignore_ascii_case("brand"))
    {
        brand = b.clone();
    }
    let attributes = specs
        .into_iter()
        .filter(|(k, v)| {
            !k.is_empty()
                && !v.is_empty()
                && !k.eq_ignore_ascii_case("brand")
                && k.chars().count() <= MAX_ATTRIBUTE_CHARS
                && v.chars().count() <= MAX_ATTRIBUTE_CHARS
        })
        .take(MAX_ATTRIBUTES)
        .collect();
    Ok(rk::Item {
        id: id.to_string(),
        title: title.to_string(),
        description: columns.get(record, "description").to_string(),
        category,
        brand,
        price,
        attributes,
        in_stock: true,
    })
}

/// Items of a catalog CSV: souk's own columns (see kg-data/README.md), or a Flipkart export
/// (recognised by its `product_name` and `product_category_tree` columns).
pub fn catalog<R: Read + Send + 'static>(path: &Path, reader: R) -> Rows<rk::Item> {
    let mut buffered = std::io::BufReader::new(reader);
    let flipkart = std::io::BufRead::fill_buf(&mut buffered).is_ok_and(|head| {
        let first = head.split(|&b| b == b'\n').next().unwrap_or(&[]);
        let first = String::from_utf8_lossy(first).to_ascii_lowercase();
        first.contains("product_name") && first.contains("product_category_tree")
    });
    if flipkart {
        csv_rows(
            path,
            buffered,
            &[
                "product_name",
                "product_category_tree",
                "pid",
                "retail_price",
            ],
            flipkart_row,
        )
    } else {
        csv_rows(path, buffered, &["id", "title", "price"], catalog_row)
    }
}

fn event_row(columns: &Columns, record: &csv::StringRecord) -> Result<rk::Interaction, String> {
    let user_id = columns.get(record, "user_id");
    let item_id = columns.get(record, "item_id");
    if user_id.is_empty() {
        return Err("user_id is empty".into());
    }
    if item_id.is_empty() {
        return Err("item_id is empty".into());
    }
    let kind_text = columns.get(record, "kind");
    let kind = match souk_ranker_core::item::InteractionKind::parse(kind_text) {
        Some(souk_ranker_core::item::InteractionKind::View) => rk::InteractionKind::View,
        Some(souk_ranker_core::item::InteractionKind::Click) => rk::InteractionKind::Click,
        Some(souk_ranker_core::item::InteractionKind::Cart) => rk::InteractionKind::Cart,
        Some(souk_ranker_core::item::InteractionKind::Purchase) => rk::InteractionKind::Purchase,
        Some(souk_ranker_core::item::InteractionKind::Rating) => rk::InteractionKind::Rating,
        None => {
            return Err(format!(
                "kind {kind_text:?} is not view, click, cart, purchase or rating"
            ));
        }
    };
    let value_text = columns.get(record, "value");
    let value = if value_text.is_empty() {
        1.0
    } else {
        value_text
            .parse::<f32>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| format!("value {value_text:?} is not a number"))?
    };
    let ts_text = columns.get(record, "timestamp_ms");
    let timestamp_ms = if ts_text.is_empty() {
        0
    } else {
        let t = ts_text.parse::<i64>().map_err(|_| {
            format!("timestamp_ms {ts_text:?} is not an integer (Unix milliseconds)")
        })?;
        // The ranker's own check (seconds or microseconds written for milliseconds), caught
        // here with the line.
        souk_ranker_core::item::check_event_ms(t, souk_ranker_core::item::now_ms())?;
        t
    };
    Ok(rk::Interaction {
        user_id: user_id.to_string(),
        item_id: item_id.to_string(),
        kind: kind as i32,
        value,
        timestamp_ms,
    })
}

/// Events of an events CSV.
pub fn events<R: Read + Send + 'static>(path: &Path, reader: R) -> Rows<rk::Interaction> {
    csv_rows(path, reader, &["user_id", "item_id", "kind"], event_row)
}

/// One item of a shown list, from a feedback log (`train fusion --feedback`).
#[derive(Debug, Clone, PartialEq)]
pub struct ShownItem {
    pub line: u64,
    pub request_id: String,
    /// 1 = shown first.
    pub position: u32,
    pub item_id: String,
    pub clicked: bool,
    /// Empty for a recommendation or an item's page.
    pub query: String,
    /// The item whose page showed the list (`Rank`'s `item_id`); empty otherwise.
    pub page_item: String,
    /// The signal values `Rank` returned for it (`all_signals`): dense, bm25, cf, kg,
    /// popularity.
    pub signals: [f64; 5],
}

/// The signal columns of a feedback log, in the fusion's weight order.
pub const SIGNAL_COLUMNS: [&str; 5] = ["dense", "bm25", "cf", "kg", "popularity"];

fn feedback_row(columns: &Columns, record: &csv::StringRecord) -> Result<ShownItem, String> {
    let request_id = columns.get(record, "request_id");
    if request_id.is_empty() {
        return Err("request_id is empty".into());
    }
    let item_id = columns.get(record, "item_id");
    if item_id.is_empty() {
        return Err("item_id is empty".into());
    }
    let position_text = columns.get(record, "position");
    let position = position_text
        .parse::<u32>()
        .ok()
        .filter(|p| *p >= 1)
        .ok_or_else(|| format!("position {position_text:?} is not a whole number from 1"))?;
    let clicked = match columns.get(record, "clicked").to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" => true,
        "0" | "false" | "no" => false,
        other => return Err(format!("clicked {other:?} is not 1/0 or true/false")),
    };
    let mut signals = [0.0; 5];
    for (value, name) in signals.iter_mut().zip(SIGNAL_COLUMNS) {
        let text = columns.get(record, name);
        *value = text
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| format!("{name} {text:?} is not a number"))?;
    }
    Ok(ShownItem {
        line: record.position().map(|p| p.line()).unwrap_or(0),
        request_id: request_id.to_string(),
        position,
        item_id: item_id.to_string(),
        clicked,
        query: columns.get(record, "query").to_string(),
        page_item: columns.get(record, "page_item").to_string(),
        signals,
    })
}

/// Rows of a feedback log: `request_id,position,item_id,clicked,query,dense,bm25,cf,kg,popularity`
/// and optionally `page_item` (`query` may be left out: recommendations and item pages only).
pub fn feedback<R: Read + Send + 'static>(path: &Path, reader: R) -> Rows<ShownItem> {
    csv_rows(
        path,
        reader,
        &[
            "request_id",
            "position",
            "item_id",
            "clicked",
            "dense",
            "bm25",
            "cf",
            "kg",
            "popularity",
        ],
        feedback_row,
    )
}

/// A synonyms file (`soukctl synonyms load`): one synonym a line, `sofa, couch, settee`
/// (equivalent phrases) or `blendtec, blend tec => blender` (phrases read as the
/// replacement); blank lines and `#` comments are skipped. Each synonym is checked as the
/// ranker checks them ([`souk_ranker_core::synonyms::Synonyms::new`]), so a fault is
/// reported with its line before anything is sent.
///
/// # Errors
/// The first line that cannot be read or checked, as `file:line: reason`.
pub fn synonyms(path: &Path, text: &str) -> Result<SynonymsFile, LineError> {
    let at = |line: usize, reason: String| LineError {
        file: path.to_path_buf(),
        line: line as u64,
        reason,
    };
    let mut rules = Vec::new();
    let mut lines = Vec::new();
    for (line, content) in rule_lines(text) {
        let (left, replacement) = match content.split_once("=>") {
            Some((left, right)) => {
                let right = right.trim();
                if right.contains("=>") {
                    return Err(at(line, "more than one `=>`".into()));
                }
                if right.contains(',') {
                    return Err(at(
                        line,
                        format!("one replacement after `=>`, not a list: {right:?}"),
                    ));
                }
                if right.is_empty() {
                    return Err(at(line, "nothing after `=>`".into()));
                }
                (left, Some(right.to_string()))
            }
            None => (content, None),
        };
        let phrases: Vec<String> = left.split(',').map(|p| p.trim().to_string()).collect();
        if phrases.iter().any(String::is_empty) {
            return Err(at(
                line,
                "an empty phrase (two commas in a row, or one at an end)".into(),
            ));
        }
        rules.push(SynonymRule {
            phrases,
            replacement,
        });
        lines.push(line);
    }
    match Synonyms::new(rules) {
        Ok(checked) => Ok(SynonymsFile { checked, lines }),
        Err(error) => {
            let line = error.rule.map_or(0, |r| lines[r]);
            let reason = match error.named_by {
                Some(other) if Some(other) != error.rule => {
                    format!("{} (already on line {})", error.reason, lines[other])
                }
                Some(_) => format!("{} (twice on this line)", error.reason),
                None => error.reason,
            };
            Err(at(line, reason))
        }
    }
}

/// A rules file's lines that hold a rule (synonyms, pins): each numbered from 1 and without
/// its `#` comment, trimmed; blank and comment-only lines are skipped.
fn rule_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().filter_map(|(i, raw)| {
        let content = raw.split_once('#').map_or(raw, |(before, _)| before).trim();
        (!content.is_empty()).then_some((i + 1, content))
    })
}

/// Reads and checks the synonyms file at `path` (see [`synonyms`]).
///
/// # Errors
/// When it cannot be read, or its first bad line as `file:line: reason`.
pub fn read_synonyms(path: &Path) -> anyhow::Result<SynonymsFile> {
    read_rules(path, synonyms)
}

/// Reads the rules file at `path` whole and checks it with `check` (a file of the shop's
/// rules is small: synonyms, pins).
fn read_rules<T>(
    path: &Path,
    check: impl FnOnce(&Path, &str) -> Result<T, LineError>,
) -> anyhow::Result<T> {
    // Through `open`, so that a byte-order mark is skipped here as in the loads.
    let (mut reader, _) = open(path)?;
    let mut text = String::new();
    reader
        .read_to_string(&mut text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    check(path, &text).map_err(|e| anyhow::anyhow!("{e}"))
}

/// A synonyms file as read: its synonyms, checked and indexed as the ranker would, and the
/// line each was on.
#[derive(Debug, Clone)]
pub struct SynonymsFile {
    pub checked: Synonyms,
    pub lines: Vec<usize>,
}

impl SynonymsFile {
    /// The synonyms as `SetSynonyms` takes them.
    pub fn messages(&self) -> Vec<rk::Synonym> {
        self.checked
            .rules()
            .iter()
            .map(|rule| rk::Synonym {
                phrases: rule.phrases.clone(),
                replacement: rule.replacement.clone(),
            })
            .collect()
    }
}

/// A pins file (`soukctl pins load`): one rule a line, `tent => p007, p012, -p300` (the
/// search, then the items to show first for it, in order, and with a `-` the items to hide
/// from it), or `category:Tents => p007` for a category's page (see [`CATEGORY_RULE`]), or
/// `* => -p300, in-stock +0.05` for every ranking (hides and boosts only; see
/// [`EVERYWHERE_RULE`]), or `contains:tent => brand:Acme +0.1` for every search holding
/// the words (hides and boosts only; see [`CONTAINS_RULE`]); `@FROM..UNTIL` after the search schedules its rule
/// (`tent @2026-03-01..2026-04-01 => p007`, see [`parse_schedule`]; an `@` inside a word or
/// before no time is the search's own: `t@ble`); `redirect:ADDRESS` among a search's
/// entries sends it to another page (`returns => redirect:/help/returns`, see [`REDIRECT`]);
/// blank lines and `#` comments are skipped. A boost is a condition and a signed amount:
/// `brand:Trailhound +0.2`, `category:Tent Pegs -0.3`, `color=green|olive +0.1`,
/// `in-stock +0.1`, `price:..50 +0.05` (`price:20..`, `price:20..50`); conditions joined by
/// `&` must all hold (`brand:Acme & in-stock +0.2`), `|` lists the values one may take (see
/// [`parse_boost`]). Each rule is checked as the ranker
/// checks them ([`souk_ranker_core::pins::Pins::new`]), so a fault is reported with its line
/// before anything is sent. `banner:TEXT` as a line's last entry gives its rule a banner
/// (the rest of the line; see [`BANNER`]). A `\` before an ASCII punctuation character
/// makes it plain text (see [`ESCAPE`]: `brand:Mast \& Harbour +0.2`, `p\,1`,
/// `redirect:/help\#returns`), and [`pin_line`] writes every rule `SetPins` takes so (texts
/// without leading or trailing spaces), so that this reads it back as itself.
///
/// # Errors
/// The first line that cannot be read or checked, as `file:line: reason`.
pub fn pins(path: &Path, text: &str) -> Result<PinsFile, LineError> {
    let at = |line: usize, reason: String| LineError {
        file: path.to_path_buf(),
        line: line as u64,
        reason,
    };
    let mut rules = Vec::new();
    let mut lines = Vec::new();
    for (line, content) in escaped_rule_lines(text) {
        let at = |line: usize, reason: String| at(line, shown(&reason));
        let content = content.map_err(|reason| at(line, reason))?;
        let content = content.as_str();
        let Some((query, items)) = content.split_once("=>") else {
            return Err(at(
                line,
                "expected `search => id, id, ...` (no `=>` on this line)".into(),
            ));
        };
        if items.contains("=>") {
            return Err(at(line, "more than one `=>`".into()));
        }
        // A banner runs to the end of the line, commas and all.
        let (items, banner) = split_banner(items);
        let banner = match banner.map(str::trim) {
            Some("") => return Err(at(line, "`banner:` without a text".into())),
            Some(text) => text.to_string(),
            None => String::new(),
        };
        let (mut pinned, mut hidden, mut boosts) = (Vec::new(), Vec::new(), Vec::new());
        let mut redirect = String::new();
        // A rule that only shows a banner has no other entry.
        let entries = (!items.trim().is_empty() || banner.is_empty())
            .then(|| items.split(',').map(str::trim))
            .into_iter()
            .flatten();
        for id in entries {
            if let Some(url) = strip_prefix_ignoring_case(id, REDIRECT) {
                if !redirect.is_empty() {
                    return Err(at(
                        line,
                        "a second `redirect:` (a search goes to one page)".into(),
                    ));
                }
                redirect = url.trim().to_string();
                if redirect.is_empty() {
                    return Err(at(line, "`redirect:` without an address".into()));
                }
                continue;
            }
            if let Some((condition, amount)) = boost_parts(id) {
                boosts.push(parse_boost(condition, amount).map_err(|e| at(line, e))?);
                continue;
            }
            let (list, id) = match id.strip_prefix('-') {
                Some(rest) => (&mut hidden, rest.trim()),
                None => (&mut pinned, id),
            };
            if id.is_empty() {
                return Err(at(
                    line,
                    "an empty id (nothing after `=>` or `-`, two commas in a row, or one at an end)"
                        .into(),
                ));
            }
            list.push(id.to_string());
        }
        let (query, starts_ms, ends_ms) = match schedule_split(query) {
            Some((query, times)) => {
                let (starts, ends) = parse_schedule(times).map_err(|e| at(line, e))?;
                (query, starts, ends)
            }
            None => (query, None, None),
        };
        let everywhere = query.trim() == EVERYWHERE_RULE;
        let contained = strip_prefix_ignoring_case(query.trim(), CONTAINS_RULE);
        let (query, category) = match strip_prefix_ignoring_case(query.trim(), CATEGORY_RULE) {
            _ if everywhere => (String::new(), String::new()),
            Some(category) => (String::new(), category.trim().to_string()),
            None => (contained.unwrap_or(query).trim().to_string(), String::new()),
        };
        rules.push(PinRule {
            query: plain(&query),
            category: plain(&category),
            items: pinned.iter().map(|id| plain(id)).collect(),
            hidden: hidden.iter().map(|id| plain(id)).collect(),
            boosts: boosts.into_iter().map(plain_boost).collect(),
            everywhere,
            contains: contained.is_some(),
            starts_ms,
            ends_ms,
            redirect: plain(&redirect),
            banner: plain(&banner),
        });
        lines.push(line);
    }
    match Pins::new(rules) {
        Ok(checked) => Ok(PinsFile { checked, lines }),
        Err(error) => {
            let line = error.rule.map_or(0, |r| lines[r]);
            let reason = match error.named_by {
                Some(other) => format!("{} (on line {})", error.reason, lines[other]),
                None => error.reason,
            };
            Err(at(line, reason))
        }
    }
}

/// How a pins file makes a character plain text: `\` before an ASCII punctuation character
/// (`Mast \& Harbour`, `redirect:/help\#returns`, `banner: Our \#1 tent`, `p\,1`); a `\`
/// before anything else is itself.
pub const ESCAPE: char = '\\';

/// Where an escaped character stands while a line is read: `\p` becomes this plus `p` (a
/// character of the last private-use plane), so that the grammar's splits pass over it; the
/// rule's texts then read it back as `p` ([`plain`]). A line holding one of these itself is
/// refused.
const ESCAPED_BASE: u32 = 0x10_FF00;

/// `c` as an escaped character stands while its line is read (see [`ESCAPED_BASE`]).
fn masked(c: char) -> char {
    char::from_u32(ESCAPED_BASE + c as u32).unwrap_or(c)
}

/// The plain character an escaped one stands for, if `c` is one.
fn unmasked(c: char) -> Option<char> {
    let code = (c as u32).checked_sub(ESCAPED_BASE)?;
    u8::try_from(code)
        .ok()
        .filter(u8::is_ascii_punctuation)
        .map(char::from)
}

/// `line` with each `\p` (`p` ASCII punctuation) as the character standing for it.
///
/// # Errors
/// A line holding a character kept for that.
fn mask_escapes(line: &str) -> Result<String, String> {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if unmasked(c).is_some() {
            return Err(format!(
                "character U+{:X} is kept for escapes in this file; write it in a rule with `SetPins`",
                c as u32
            ));
        }
        match chars.peek() {
            Some(&p) if c == ESCAPE && p.is_ascii_punctuation() => {
                out.push(masked(p));
                chars.next();
            }
            _ => out.push(c),
        }
    }
    Ok(out)
}

/// A rule's text as read: each escaped character as itself.
fn plain(text: &str) -> String {
    text.chars().map(|c| unmasked(c).unwrap_or(c)).collect()
}

/// A text with escaped characters written back as the file had them (`\#`), for a fault's
/// reason.
fn shown(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match unmasked(c) {
            Some(p) => {
                out.push(ESCAPE);
                out.push(p);
            }
            None => out.push(c),
        }
    }
    out
}

/// A boost as read, its names and values each as [`plain`].
fn plain_boost(boost: Boost) -> Boost {
    let all = |values: Vec<String>| values.iter().map(|v| plain(v)).collect();
    Boost {
        category: plain(&boost.category),
        brands: all(boost.brands),
        attributes: boost
            .attributes
            .into_iter()
            .map(|(name, values)| (plain(&name), all(values)))
            .collect(),
        ..boost
    }
}

/// A pins file's lines that hold a rule, as [`rule_lines`], each with its escapes masked
/// first (so an escaped `#` begins no comment), or why it cannot be read.
fn escaped_rule_lines(text: &str) -> impl Iterator<Item = (usize, Result<String, String>)> {
    text.lines().enumerate().filter_map(|(i, raw)| {
        let content = match mask_escapes(raw) {
            Ok(masked) => {
                let content = masked
                    .split_once('#')
                    .map_or(masked.as_str(), |(before, _)| before);
                Ok(content.trim().to_string())
            }
            Err(reason) => Err(reason),
        };
        match content {
            Ok(content) if content.is_empty() => None,
            content => Some((i + 1, content)),
        }
    })
}

/// A rule's entries and its banner (see [`BANNER`]): the first entry that begins with
/// `banner:` and the rest of the line after it.
fn split_banner(entries: &str) -> (&str, Option<&str>) {
    let starts = std::iter::once(0).chain(entries.match_indices(',').map(|(i, _)| i + 1));
    for start in starts {
        let entry = entries[start..].trim_start();
        if let Some(text) = strip_prefix_ignoring_case(entry, BANNER) {
            let before = entries[..start].trim_end().trim_end_matches(',');
            return (before, Some(text));
        }
    }
    (entries, None)
}

/// A rule's target and its schedule (see [`SCHEDULE`]), when it has one: the last `@` that
/// begins a word and is followed by a time or `..` (`tent @2026-03-01..`, `tent @..1700000000000`),
/// so an `@` inside a search ("t@ble", "email @home") stays the search's.
fn schedule_split(target: &str) -> Option<(&str, &str)> {
    target.match_indices(SCHEDULE).rev().find_map(|(at, _)| {
        let (before, times) = (&target[..at], &target[at + SCHEDULE.len_utf8()..]);
        let begins_word = before.is_empty() || before.ends_with(char::is_whitespace);
        let a_time = times
            .trim_start()
            .starts_with(|c: char| c.is_ascii_digit() || c == '.');
        (begins_word && a_time).then_some((before, times))
    })
}

/// A boost's condition and amount, when `text` is one: words, then a number written with
/// its sign (`brand:Acme +0.2`).
fn boost_parts(text: &str) -> Option<(&str, f32)> {
    let (condition, amount) = text.rsplit_once(char::is_whitespace)?;
    if !amount.starts_with(['+', '-']) {
        return None;
    }
    let amount: f32 = amount.parse().ok()?;
    Some((condition.trim(), amount))
}

/// A boost's conditions (see [`pins`]) as a [`Boost`] moving scores by `amount` (checked
/// with its rule by `Pins::new`).
///
/// # Errors
/// A condition that is none of `brand:`, `category:`, `price:`, `in-stock` or `name=value`,
/// or one given twice.
pub fn parse_boost(conditions: &str, amount: f32) -> Result<Boost, String> {
    let mut boost = Boost {
        amount,
        ..Boost::default()
    };
    let values =
        |list: &str| -> Vec<String> { list.split('|').map(|v| v.trim().to_string()).collect() };
    for condition in conditions.split('&').map(str::trim) {
        let twice = || {
            format!("boost `{conditions}`: `{condition}` is a second condition on the same field")
        };
        if let Some(brands) = strip_prefix_ignoring_case(condition, "brand:") {
            if !boost.brands.is_empty() {
                return Err(twice());
            }
            boost.brands = values(brands);
        } else if let Some(category) = strip_prefix_ignoring_case(condition, CATEGORY_RULE) {
            if !boost.category.is_empty() {
                return Err(twice());
            }
            boost.category = category.trim().to_string();
        } else if let Some(range) = strip_prefix_ignoring_case(condition, "price:") {
            if boost.min_price.is_some() || boost.max_price.is_some() {
                return Err(twice());
            }
            let bad = || {
                format!(
                    "boost `{conditions}`: price range `{range}`: expected `LO..HI`, `LO..` or `..HI`"
                )
            };
            let (lo, hi) = range.split_once("..").ok_or_else(bad)?;
            let bound = |b: &str| -> Result<Option<f64>, String> {
                match b.trim() {
                    "" => Ok(None),
                    b => b.parse().map(Some).map_err(|_| bad()),
                }
            };
            (boost.min_price, boost.max_price) = (bound(lo)?, bound(hi)?);
        } else if condition.eq_ignore_ascii_case("in-stock") {
            boost.in_stock = true;
        } else if let Some((name, listed)) = condition.split_once('=') {
            boost
                .attributes
                .push((name.trim().to_string(), values(listed)));
        } else {
            return Err(format!(
                "boost `{conditions}`: unknown condition `{condition}` (brand:NAME, category:NAME, price:LO..HI, in-stock or NAME=VALUE)"
            ));
        }
    }
    Ok(boost)
}

/// A boost as a pins file writes it (see [`pins`]).
fn boost_text(boost: &rk::Boost) -> String {
    let mut parts = Vec::new();
    if let Some(when) = &boost.when {
        let values = |values: &[String]| -> String {
            let values: Vec<String> = values.iter().map(|v| escaped(v, Field::Value)).collect();
            values.join("|")
        };
        if !when.category.is_empty() {
            parts.push(format!(
                "{CATEGORY_RULE}{}",
                escaped(&when.category, Field::Value)
            ));
        }
        if !when.brands.is_empty() {
            parts.push(format!("brand:{}", values(&when.brands)));
        }
        for a in &when.attributes {
            parts.push(format!(
                "{}={}",
                escaped(&a.name, Field::AttributeName),
                values(&a.values)
            ));
        }
        if when.in_stock_only {
            parts.push("in-stock".into());
        }
        if when.min_price.is_some() || when.max_price.is_some() {
            let bound = |b: Option<f64>| b.map(|b| b.to_string()).unwrap_or_default();
            parts.push(format!(
                "price:{}..{}",
                bound(when.min_price),
                bound(when.max_price)
            ));
        }
    }
    format!("{} {:+}", parts.join(" & "), boost.amount)
}

/// How a pins file's line names a category's page instead of a search: `category:Tents`.
pub const CATEGORY_RULE: &str = "category:";

/// How a pins file's line names the rule for every ranking: `* => -p300, in-stock +0.05`.
pub const EVERYWHERE_RULE: &str = "*";

/// How a pins file's line names every search containing words: `contains:tent =>
/// brand:Trailhound +0.1`.
pub const CONTAINS_RULE: &str = "contains:";

/// How a pins file's line gives its rule a banner, as its last entry (the rest of the line,
/// commas and all): `tent => p007, banner: Free shipping on tents, this week only`.
pub const BANNER: &str = "banner:";

/// How a pins file's line sends its search to another page: `returns =>
/// redirect:/help/returns` (see [`souk_ranker_core::pins::PinRule::redirect`]).
pub const REDIRECT: &str = "redirect:";

/// How a pins file's line gives its rule a schedule, after the search: `tent
/// @2026-03-01..2026-04-01 => p007` (see [`parse_schedule`]).
pub const SCHEDULE: char = '@';

/// A schedule as a pins file writes it (`2026-03-01..2026-04-01`): from the first time
/// (included) until the second (not included), each a UTC day (`2026-03-01`), a UTC minute
/// (`2026-03-01T09:30`) or ms since the Unix epoch; either may be left out
/// (`2026-03-01..`, `..2026-04-01`). Checked with its rule by `Pins::new`.
///
/// # Errors
/// No `..`, neither end given, or a time that is none of those forms.
pub fn parse_schedule(text: &str) -> Result<(Option<i64>, Option<i64>), String> {
    let bad = || {
        format!(
            "schedule `@{}`: expected `@FROM..UNTIL`, each a UTC day (2026-03-01), minute (2026-03-01T09:30) or ms since 1970, either left out",
            text.trim()
        )
    };
    let (from, until) = text.split_once("..").ok_or_else(bad)?;
    let time = |t: &str| -> Result<Option<i64>, String> {
        match t.trim() {
            "" => Ok(None),
            t => utc_ms(t).map(Some).ok_or_else(bad),
        }
    };
    match (time(from)?, time(until)?) {
        (None, None) => Err(bad()),
        times => Ok(times),
    }
}

/// A time as a pins file's schedules write it (`2026-03-01`, `2026-03-01T09:30` UTC, or ms
/// since 1970), as ms since the Unix epoch: `soukctl rank --rules-at`.
///
/// # Errors
/// A text that is none of those forms.
pub fn parse_time(text: &str) -> Result<i64, String> {
    utc_ms(text.trim()).ok_or_else(|| {
        format!(
            "{text:?}: expected a UTC day (2026-03-01), minute (2026-03-01T09:30) or ms since 1970"
        )
    })
}

/// `2026-03-01`, `2026-03-01T09:30` (UTC) or a number of ms, as ms since the Unix epoch.
fn utc_ms(text: &str) -> Option<i64> {
    if let Ok(ms) = text.parse::<i64>() {
        return Some(ms);
    }
    let (day, minute) = match text.split_once(['T', 't', ' ']) {
        Some((day, minute)) => (day, Some(minute)),
        None => (text, None),
    };
    let mut parts = day.splitn(3, '-');
    let (year, month, date) = (parts.next()?, parts.next()?, parts.next()?);
    if year.len() != 4 || month.len() != 2 || date.len() != 2 {
        return None;
    }
    let (year, month, date): (i64, u32, u32) =
        (year.parse().ok()?, month.parse().ok()?, date.parse().ok()?);
    let days = days_from_civil(year, month, date);
    // A date that does not exist (2026-02-30) reads back as another.
    if civil_from_days(days) != (year, month, date) {
        return None;
    }
    let minutes = match minute {
        None => 0,
        Some(hm) => {
            let (h, m) = hm.split_once(':')?;
            let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
            if !(0..24).contains(&h) || !(0..60).contains(&m) || hm.len() != 5 {
                return None;
            }
            h * 60 + m
        }
    };
    Some((days * 1_440 + minutes) * 60_000)
}

/// A time as a pins file writes it: a UTC day, or minute, or else its ms.
fn utc_text(ms: i64) -> String {
    if ms.rem_euclid(60_000) != 0 {
        return ms.to_string();
    }
    let minutes = ms.div_euclid(60_000);
    let (year, month, date) = civil_from_days(minutes.div_euclid(1_440));
    let minute = minutes.rem_euclid(1_440);
    match minute {
        0 => format!("{year:04}-{month:02}-{date:02}"),
        m => format!("{year:04}-{month:02}-{date:02}T{:02}:{:02}", m / 60, m % 60),
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, date: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let of_era = year.rem_euclid(400);
    let from_march = (i64::from(month) + 9) % 12;
    let of_year = (153 * from_march + 2) / 5 + i64::from(date) - 1;
    let of_era_days = of_era * 365 + of_era / 4 - of_era / 100 + of_year;
    era * 146_097 + of_era_days - 719_468
}

/// The date of a day counted from 1970-01-01 (the inverse of [`days_from_civil`]).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let of_era = days.rem_euclid(146_097);
    let year_of_era = (of_era - of_era / 1_460 + of_era / 36_524 - of_era / 146_096) / 365;
    let of_year = of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let from_march = (5 * of_year + 2) / 153;
    let date = (of_year - (153 * from_march + 2) / 5 + 1) as u32;
    let month = if from_march < 10 {
        from_march + 3
    } else {
        from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, date)
}

/// `text` without `prefix`, in any case, if it begins with it.
fn strip_prefix_ignoring_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// Where a text stands in a pins file's line, for [`escaped`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// A search's own words, before `=>`.
    Search,
    /// After `category:` or `contains:`, before `=>`.
    Words,
    /// An entry after `=>`: an id (pinned or hidden) or a redirect's address.
    Entry,
    /// A boost's category, brand or attribute value.
    Value,
    /// A boost's attribute name.
    AttributeName,
    /// A banner (the rest of the line).
    Banner,
}

/// `text` as a pins file writes it in `field`, each character that the file's grammar would
/// read there escaped (see [`ESCAPE`]), and no other: `pins load` reads back the text itself.
fn escaped(text: &str, field: Field) -> String {
    let lower = text.to_ascii_lowercase();
    // A prefix that would give the text another meaning (`category:` before a search's
    // words, `banner:` before an id): its colon.
    let prefix_colon = match field {
        Field::Search => [CATEGORY_RULE, CONTAINS_RULE].as_slice(),
        Field::Entry => [REDIRECT, BANNER].as_slice(),
        _ => [].as_slice(),
    }
    .iter()
    .find(|prefix| lower.starts_with(*prefix))
    .map(|prefix| prefix.len() - 1);
    let mut out = String::with_capacity(text.len() + 2);
    let mut before: Option<char> = None;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let after = chars.peek().map(|&(_, c)| c);
        let begins_word = before.is_none_or(char::is_whitespace);
        let special = match c {
            ESCAPE | '#' => true,
            // `=>` ends the target anywhere; an attribute's name ends at its `=`.
            '=' => after == Some('>') || field == Field::AttributeName,
            // A value follows its attribute's `=`.
            '>' => i == 0,
            ',' => matches!(field, Field::Entry | Field::Value | Field::AttributeName),
            '&' | '|' => matches!(field, Field::Value | Field::AttributeName),
            ':' => field == Field::AttributeName || prefix_colon == Some(i),
            // A schedule begins at an `@` that begins a word.
            SCHEDULE => matches!(field, Field::Search | Field::Words) && begins_word,
            // An id's leading `-` hides it; ` +3` or ` -3` ending it reads as a boost.
            '-' | '+' => field == Field::Entry && begins_word,
            '*' => field == Field::Search && text == EVERYWHERE_RULE,
            _ => false,
        };
        if special {
            out.push(ESCAPE);
        }
        out.push(c);
        before = Some(c);
    }
    out
}

/// A rule's line as a pins file writes it (`soukctl pins list`): `tent => p007, -p300`,
/// `category:Tents => p007`, `* => in-stock +0.05`, `tent @2026-03-01..2026-04-01 => p9`,
/// `jackets => brand:Mast \& Harbour +0.2` (a character the grammar would read escaped).
pub fn pin_line(rule: &rk::PinRule) -> String {
    let hidden = rule
        .hidden
        .iter()
        .map(|id| format!("-{}", escaped(id, Field::Entry)));
    let boosts = rule.boosts.iter().map(boost_text);
    let ids: Vec<String> = rule
        .items
        .iter()
        .map(|id| escaped(id, Field::Entry))
        .chain(hidden)
        .chain(boosts)
        .collect();
    let target = match rule.category.as_str() {
        _ if rule.everywhere => EVERYWHERE_RULE.to_string(),
        "" if rule.contains => format!("{CONTAINS_RULE}{}", escaped(&rule.query, Field::Words)),
        "" => escaped(&rule.query, Field::Search),
        category => format!("{CATEGORY_RULE}{}", escaped(category, Field::Words)),
    };
    let schedule = match (rule.starts_ms, rule.ends_ms) {
        (None, None) => String::new(),
        (from, until) => format!(
            " {SCHEDULE}{}..{}",
            from.map(utc_text).unwrap_or_default(),
            until.map(utc_text).unwrap_or_default()
        ),
    };
    let redirect = (!rule.redirect.is_empty())
        .then(|| format!("{REDIRECT}{}", escaped(&rule.redirect, Field::Entry)));
    let banner = (!rule.banner.is_empty())
        .then(|| format!("{BANNER} {}", escaped(&rule.banner, Field::Banner)));
    let entries: Vec<String> = redirect.into_iter().chain(ids).chain(banner).collect();
    format!("{target}{schedule} => {}", entries.join(", "))
}

/// Where a scheduled rule stands at `now_ms`, as `pins list` notes it after its line
/// (`in force now`, `ended`, `starts later`); `None` for a standing rule.
pub fn schedule_note(rule: &rk::PinRule, now_ms: i64) -> Option<&'static str> {
    let window = PinRule {
        starts_ms: rule.starts_ms,
        ends_ms: rule.ends_ms,
        ..PinRule::default()
    };
    window.standing_at(now_ms).map(|standing| match standing {
        Standing::InForce => "in force now",
        Standing::Ended => "ended",
        Standing::StartsLater => "starts later",
    })
}

/// What `pins list` writes after a rule's line, as a comment: how many rankings it applied
/// to (`applied`, as `GetPins` counts them; `None` from a ranker that does not count) and,
/// for a scheduled rule, where it stands at `now_ms` (`applied to 1,204 rankings; in force
/// now`).
pub fn pin_note(rule: &rk::PinRule, now_ms: i64, applied: Option<u64>) -> String {
    let count = applied.map(|n| match n {
        1 => "applied to 1 ranking".to_string(),
        n => format!("applied to {} rankings", thousands(n)),
    });
    count
        .into_iter()
        .chain(schedule_note(rule, now_ms).map(str::to_string))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `n` with a comma between thousands: `1,204`.
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Reads and checks the pins file at `path` (see [`pins`]).
///
/// # Errors
/// When it cannot be read, or its first bad line as `file:line: reason`.
pub fn read_pins(path: &Path) -> anyhow::Result<PinsFile> {
    read_rules(path, pins)
}

/// A pins file as read: its rules, checked as the ranker would, and the line each was on.
#[derive(Debug, Clone)]
pub struct PinsFile {
    pub checked: Pins,
    pub lines: Vec<usize>,
}

impl PinsFile {
    /// The rules as `SetPins` takes them.
    pub fn messages(&self) -> Vec<rk::PinRule> {
        self.checked.rules().iter().map(rk::PinRule::from).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors<T>(it: Rows<T>) -> Vec<String> {
        it.filter_map(Result::err).map(|e| e.to_string()).collect()
    }

    /// `text` damaged a few times over: bytes changed, dropped or repeated, a separator,
    /// quote or rule token put in, the end cut off (mid-character too).
    fn damaged(text: &[u8], rng: &mut souk_ranker_core::rng::XorShift) -> Vec<u8> {
        const TOKENS: &[&[u8]] = &[
            b"\"",
            b",",
            b"\t",
            b"\n",
            b"\r\n",
            b"=>",
            b",,",
            b"#",
            b"@",
            b"@2026-02-30..",
            b"..",
            b"-",
            b"|",
            b"&",
            b";",
            b"=",
            b"redirect:",
            b"category:",
            b"contains:",
            b"* =>",
            b"NaN",
            b"inf",
            b"-1e400",
            b"99999999999999999999",
            b"\0",
            b"\xff\xfe",
            b"\xc3",
            b"\xe2\x82",
            b"['a', \"b",
            b"{\"product_specification\"=>[{\"key\"=>",
            b"<",
            b">",
        ];
        let mut out = text.to_vec();
        let mut pick = |n: usize| (rng.unit() * n as f64) as usize;
        for _ in 0..1 + pick(4) {
            let at = pick(out.len() + 1);
            match pick(7) {
                0 if at < out.len() => out[at] = pick(256) as u8,
                1 => {
                    let end = (at + pick(40)).min(out.len());
                    out.drain(at..end);
                }
                2 => {
                    let end = (at + pick(40)).min(out.len());
                    let copy = out[at..end].to_vec();
                    out.splice(at..at, copy);
                }
                3 => out.truncate(at),
                4 => {
                    let token = TOKENS[pick(TOKENS.len())];
                    out.splice(at..at, token.iter().copied());
                }
                // A long run of one token (a field of quotes or separators, a huge name).
                _ => {
                    let token = TOKENS[pick(TOKENS.len())];
                    let run = token.repeat(1 + pick(2_000));
                    out.splice(at..at, run);
                }
            }
        }
        out
    }

    /// Damaged copies of the demo's files (and of Flipkart's catalog where the datasets are
    /// present) through every reader, many times over: each row is read or refused naming
    /// the file and a line inside it, nothing panics, and the rules files (synonyms, pins)
    /// are refused at a line too. A slice of 24 rows under the header is damaged each time,
    /// so the damage lands in few rows and most of them still come through.
    #[test]
    fn damaged_files_are_refused_by_line_and_never_panic() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let read = |path: &Path| std::fs::read(path).unwrap();
        let mut files: Vec<(&str, Vec<u8>)> = [
            "products.csv",
            "events.csv",
            "triples.tsv",
            "synonyms.txt",
            "pins.txt",
        ]
        .iter()
        .map(|name| (*name, read(&root.join("kg-data").join(name))))
        .collect();
        files.push((
            "clicks.csv",
            b"request_id,position,item_id,clicked,query,page_item,dense,bm25,cf,kg,popularity\n\
              r1,1,p00110,1,sleeping bag,,0.71,0.52,0,0.1,0.3\n\
              r1,2,p00107,0,sleeping bag,,0.64,0.52,0.2,0,0.1\n\
              r2,1,p00030,0,,p00141,0.5,0,0.4,0.6,0.2\n"
                .to_vec(),
        ));
        let flipkart = root.join("../shared/datasets/catalog/flipkart-1k.csv");
        if flipkart.is_file() {
            files.push(("flipkart.csv", read(&flipkart)));
        } else {
            eprintln!(
                "skipped Flipkart's catalog: {} is absent",
                flipkart.display()
            );
        }
        let mut rng = souk_ranker_core::rng::XorShift::new(7);
        let (mut read_rows, mut refused) = (0usize, 0usize);
        for round in 0..400 {
            for (name, text) in &files {
                // Flipkart's quoted descriptions hold line breaks: it is damaged whole (one
                // round in 20: a thousand rows).
                let whole = *name == "flipkart.csv";
                if whole && round % 20 != 0 {
                    continue;
                }
                let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
                let from = 1 + (rng.unit() * lines.len().saturating_sub(25) as f64) as usize;
                let slice: Vec<u8> = if whole {
                    text.clone()
                } else {
                    std::iter::once(lines[0])
                        .chain(lines.iter().skip(from).take(24).copied())
                        .collect::<Vec<_>>()
                        .join(&b'\n')
                };
                let damaged = damaged(&slice, &mut rng);
                let path = Path::new(name);
                // Lines as an editor numbers them: a CSV reader ends a record at a lone
                // carriage return too, but a row is named by the `\n`s before it.
                let most = damaged.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
                let within = |e: &LineError| {
                    assert_eq!(e.file, path);
                    assert!(
                        (1..=most).contains(&e.line),
                        "round {round}, {name}: line {} of {most}: {e}",
                        e.line
                    );
                    assert!(!e.reason.is_empty());
                };
                let mut tally = |rows: Vec<Result<(), LineError>>| {
                    for row in rows {
                        match row {
                            Ok(()) => read_rows += 1,
                            Err(e) => {
                                within(&e);
                                refused += 1;
                            }
                        }
                    }
                };
                let cursor = std::io::Cursor::new(damaged.clone());
                match *name {
                    "products.csv" | "flipkart.csv" => {
                        tally(catalog(path, cursor).map(|r| r.map(drop)).collect())
                    }
                    "events.csv" => tally(events(path, cursor).map(|r| r.map(drop)).collect()),
                    "clicks.csv" => tally(feedback(path, cursor).map(|r| r.map(drop)).collect()),
                    "triples.tsv" => {
                        tally(
                            triples(path, cursor, TripleFormat::Tsv)
                                .map(|r| r.map(drop))
                                .collect(),
                        );
                        // Read as the other formats: every row refused, each by its line.
                        for format in [TripleFormat::Csv, TripleFormat::Nt] {
                            let cursor = std::io::Cursor::new(damaged.clone());
                            for row in triples(path, cursor, format) {
                                if let Err(e) = row {
                                    within(&e);
                                }
                            }
                        }
                    }
                    _ => {
                        let text = String::from_utf8_lossy(&damaged);
                        let checked = if *name == "pins.txt" {
                            pins(path, &text).map(drop)
                        } else {
                            synonyms(path, &text).map(drop)
                        };
                        tally(vec![checked]);
                    }
                }
            }
        }
        assert!(
            read_rows > 10 * refused,
            "most rows survive a little damage: {read_rows} read, {refused} refused"
        );
        assert!(refused > 0, "the damage is seen: {read_rows} read");
    }

    /// Rules files of lines built from their own grammar's pieces in random order (a
    /// schedule's `@` before a multi-byte letter, a `=>` at the end, a boost's sign alone...):
    /// each file is read or refused at one of its lines, and nothing panics.
    #[test]
    fn rules_files_of_random_pieces_are_refused_by_line_and_never_panic() {
        const PIECES: &[&str] = &[
            "tent",
            "sleeping bag",
            " ",
            "  ",
            "@",
            "@2026-03-01",
            "2026-03-01T09:30",
            "..",
            "=>",
            ",",
            "-",
            "-p1",
            "p2",
            "redirect:",
            "/help",
            "https://",
            "category:",
            "contains:",
            "*",
            "+0.1",
            "-2",
            "brand:",
            "color=",
            "|",
            "&",
            "in-stock",
            "price:",
            "é",
            "\u{fffd}",
            "#",
            "\t",
            "\u{0}",
            "ß",
            "🎒",
        ];
        let mut rng = souk_ranker_core::rng::XorShift::new(3);
        let mut pick = |n: usize| (rng.unit() * n as f64) as usize;
        let (mut read, mut refused) = (0, 0);
        for _ in 0..3_000 {
            let lines = 1 + pick(3);
            let text: Vec<String> = (0..lines)
                .map(|_| {
                    (0..1 + pick(12))
                        .map(|_| PIECES[pick(PIECES.len())])
                        .collect()
                })
                .collect();
            let text = text.join("\n");
            for (name, result) in [
                ("pins.txt", pins(Path::new("pins.txt"), &text).map(drop)),
                (
                    "synonyms.txt",
                    synonyms(Path::new("synonyms.txt"), &text).map(drop),
                ),
            ] {
                match result {
                    Ok(()) => read += 1,
                    Err(e) => {
                        assert!((1..=lines as u64).contains(&e.line), "{name} {text:?}: {e}");
                        refused += 1;
                    }
                }
            }
        }
        assert!(read > 0 && refused > 0, "{read} read, {refused} refused");
    }

    #[test]
    fn tsv_errors_name_file_and_line() {
        let data = "a\tr\tb\n\nbad line\nc\t\td\n";
        let errs = errors(triples(
            Path::new("t.tsv"),
            data.as_bytes(),
            TripleFormat::Tsv,
        ));
        assert_eq!(errs.len(), 2);
        assert!(errs[0].starts_with("t.tsv:3: expected 3"), "{}", errs[0]);
        assert!(
            errs[1].starts_with("t.tsv:4: relation is empty"),
            "{}",
            errs[1]
        );
    }

    #[test]
    fn csv_triples_skip_the_header() {
        let data = "head,relation,tail\n\"a, inc\",r,b\nx,y\n";
        let all: Vec<_> = triples(Path::new("t.csv"), data.as_bytes(), TripleFormat::Csv).collect();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].as_ref().unwrap().head, "a, inc");
        assert!(
            all[1]
                .as_ref()
                .unwrap_err()
                .to_string()
                .starts_with("t.csv:3:")
        );
    }

    /// An error names the line an editor shows: blank lines and names quoted over two lines
    /// count (the record's index would say line 3 and 4 here, not 5 and 7).
    #[test]
    fn csv_triples_name_their_physical_line() {
        let data = "a,r,b\n\n\"two\nlines\",r,b\nx,y\n\n,r,b\n";
        let errors: Vec<String> = triples(Path::new("t.csv"), data.as_bytes(), TripleFormat::Csv)
            .filter_map(Result::err)
            .map(|e| e.to_string())
            .collect();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors[0].starts_with("t.csv:3: head contains a control"),
            "{}",
            errors[0]
        );
        assert!(
            errors[1].starts_with("t.csv:5: expected 3"),
            "{}",
            errors[1]
        );
        assert!(
            errors[2].starts_with("t.csv:7: head is empty"),
            "{}",
            errors[2]
        );
    }

    /// The same for the catalog, events and updates files, with Excel's CRLF line ends too
    /// (csv's own record position names the line above in such a file: the header's line
    /// for the first row).
    #[test]
    fn csv_rows_name_their_physical_line() {
        for end in ["\n", "\r\n"] {
            let data = [
                "user_id,item_id,kind",
                "u1,p1,view",
                "",
                "u2,,view",
                "\"u3\",p1,\"not",
                "a kind\"",
                "u4,p1,cart",
                "u5,p1,sneeze",
            ]
            .join(end);
            let errors: Vec<String> = events(Path::new("e.csv"), std::io::Cursor::new(data))
                .filter_map(Result::err)
                .map(|e| e.to_string())
                .collect();
            let lines: Vec<&str> = errors.iter().filter_map(|e| e.split(':').nth(1)).collect();
            assert_eq!(lines, ["4", "5", "8"], "{end:?}: {errors:?}");
        }
    }

    #[test]
    fn tsv_triples_skip_a_header_on_the_first_line_only() {
        let data = "Head\tRelation\tTail\r\na\tr\tb\nhead\trelation\ttail\n";
        let all: Vec<Triple> = triples(Path::new("t.tsv"), data.as_bytes(), TripleFormat::Tsv)
            .collect::<Result<_, _>>()
            .unwrap();
        let heads: Vec<&str> = all.iter().map(|t| t.head.as_str()).collect();
        assert_eq!(heads, ["a", "head"], "a later row with those names is data");
    }

    /// A byte-order mark (Excel's "CSV UTF-8", Notepad) is not part of the first field, in
    /// every format the loads read through `open`, and in the rules files.
    #[test]
    fn a_byte_order_mark_is_not_part_of_the_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, [BOM, text.as_bytes()].concat()).unwrap();
            path
        };
        for (name, format, text) in [
            ("t.tsv", TripleFormat::Tsv, "item:p1\tbrand\tbrand:a\n"),
            (
                "h.tsv",
                TripleFormat::Tsv,
                "head\trelation\ttail\nitem:p1\tbrand\tbrand:a\n",
            ),
            ("t.csv", TripleFormat::Csv, "item:p1,brand,brand:a\n"),
            ("t.nt", TripleFormat::Nt, "<item:p1> <brand> <brand:a> .\n"),
        ] {
            let path = file(name, text);
            let (reader, size) = open(&path).unwrap();
            assert_eq!(size, (BOM.len() + text.len()) as u64);
            let all: Vec<Triple> = triples(&path, reader, format)
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(all.len(), 1, "{name}");
            assert_eq!(all[0].head, "item:p1", "{name}");
        }
        let path = file("e.csv", "user_id,item_id,kind\nu1,p1,click\n");
        let (reader, _) = open(&path).unwrap();
        let events: Vec<rk::Interaction> = events(&path, reader).collect::<Result<_, _>>().unwrap();
        assert_eq!(
            events[0].user_id, "u1",
            "the header's first column is found"
        );
        let path = file("s.txt", "backpack, rucksack\n");
        let read = read_synonyms(&path).unwrap();
        assert_eq!(read.messages()[0].phrases[0], "backpack");
        // A file without one is read from its first byte.
        let path = dir.path().join("plain.tsv");
        std::fs::write(&path, "ite\tr\tb\n").unwrap();
        let (reader, _) = open(&path).unwrap();
        let all: Vec<Triple> = triples(&path, reader, TripleFormat::Tsv)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(all[0].head, "ite");
    }

    /// A pipe (`/dev/stdin`, `<(zcat events.csv.gz)`) cannot seek: looking for a byte-order
    /// mark must not need to go back (it did for a day: "Illegal seek").
    #[test]
    fn a_pipe_reads_as_a_file_does() {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in [
            (
                "plain",
                "user_id,item_id,kind\nu1,p1,click\n".as_bytes().to_vec(),
            ),
            (
                "bom",
                [BOM, b"user_id,item_id,kind\nu1,p1,click\n"].concat(),
            ),
        ] {
            let fifo = dir.path().join(name);
            let made = std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap();
            assert!(made.success());
            let writer = {
                let fifo = fifo.clone();
                std::thread::spawn(move || std::fs::write(fifo, text).unwrap())
            };
            let (reader, size) = open(&fifo).unwrap();
            assert_eq!(size, 0, "a pipe has no size");
            let read: Vec<rk::Interaction> =
                events(&fifo, reader).collect::<Result<_, _>>().unwrap();
            writer.join().unwrap();
            assert_eq!(read.len(), 1, "{name}");
            assert_eq!(read[0].user_id, "u1", "{name}");
        }
    }

    #[test]
    fn flipkart_rows_map_to_items() {
        let data = "uniq_id,product_name,product_category_tree,pid,retail_price,discounted_price,description,brand,product_specifications\n\
            u1,aw bellies,\"['footwear', 'womens footwear', 'aw bellies']\",SHOE1,999.0,499.0,nice,,\"[{'key': 'Brand', 'value': 'AW'}, {'key': 'Type', 'value': 'Bellies'}, {'value': 'no key'}]\"\n\
            u2,tee,\"[\"\"Clothing >> Men's >> T-Shirts\"\"]\",TEE2,100,,,Acme,\"{\"\"product_specification\"\"=>[{\"\"key\"\"=>\"\"Fit\"\", \"\"value\"\"=>\"\"Slim\"\"}]}\"\n\
            u3,broken,\"[]\",BAD3,n/a,,,,\n";
        let rows: Vec<_> = catalog(Path::new("f.csv"), data.as_bytes()).collect();
        let shoe = rows[0].as_ref().unwrap();
        assert_eq!(shoe.id, "SHOE1");
        assert_eq!(
            shoe.category,
            vec!["footwear", "womens footwear"],
            "the name is not a category"
        );
        assert_eq!(
            shoe.brand, "AW",
            "brand from the specification when the column is empty"
        );
        assert_eq!(shoe.price, 499.0);
        assert_eq!(shoe.attributes.len(), 1);
        assert_eq!(
            shoe.attributes.get("Type").map(String::as_str),
            Some("Bellies")
        );
        let tee = rows[1].as_ref().unwrap();
        assert_eq!(tee.category, vec!["Clothing", "Men's", "T-Shirts"]);
        assert_eq!(tee.price, 100.0, "retail price when no discount");
        assert_eq!(tee.attributes.get("Fit").map(String::as_str), Some("Slim"));
        assert!(
            rows[2]
                .as_ref()
                .unwrap_err()
                .to_string()
                .starts_with("f.csv:4: item \"BAD3\"")
        );
    }

    #[test]
    fn the_real_flipkart_sample_loads_every_row() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/datasets/catalog/flipkart-1k.csv");
        let Ok(file) = std::fs::File::open(&path) else {
            eprintln!("skipped: {} not found", path.display());
            return;
        };
        let rows: Vec<_> = catalog(&path, file).collect();
        let errors: Vec<String> = rows
            .iter()
            .filter_map(|r| r.as_ref().err())
            .map(ToString::to_string)
            .collect();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(rows.len(), 1002);
        let items: Vec<&rk::Item> = rows.iter().filter_map(|r| r.as_ref().ok()).collect();
        let branded = items.iter().filter(|i| !i.brand.is_empty()).count();
        assert!(branded >= 628, "the brand column has 628 values: {branded}");
        assert!(items.iter().all(|i| !i.category.is_empty()));
    }

    #[test]
    fn item_update_rows_take_any_of_the_fields_and_report() {
        let data = "id,price,in_stock,attributes\n\
                    p1,9.99,,\n\
                    p2,,false,color=red; size=\n\
                    p3,,,\n\
                    p4,cheap,,\n\
                    p5,,maybe,\n\
                    p6,,,color\n\
                    p7,,,=red\n\
                    ,1,,\n";
        let rows: Vec<_> = item_updates(Path::new("u.csv"), data.as_bytes()).collect();
        let p1 = rows[0].as_ref().unwrap();
        assert_eq!(
            (p1.price, p1.in_stock, p1.attributes.len()),
            (Some(9.99), None, 0)
        );
        let p2 = rows[1].as_ref().unwrap();
        assert_eq!((p2.price, p2.in_stock), (None, Some(false)));
        assert_eq!(p2.attributes.get("color").map(String::as_str), Some("red"));
        assert_eq!(p2.attributes.get("size").map(String::as_str), Some(""));
        let errors: Vec<String> = rows[2..]
            .iter()
            .map(|r| r.as_ref().unwrap_err().to_string())
            .collect();
        assert_eq!(
            errors,
            [
                "u.csv:4: item \"p3\": nothing to change (price, in_stock and attributes are empty)",
                "u.csv:5: item \"p4\": price \"cheap\" is not a number",
                "u.csv:6: item \"p5\": in_stock \"maybe\" is not true/false",
                "u.csv:7: item \"p6\": attribute \"color\" is not key=value",
                "u.csv:8: item \"p7\": attribute \"=red\" has no name",
                "u.csv:9: id is empty",
            ]
        );
        let missing: Vec<_> =
            item_updates(Path::new("u.csv"), "sku,price\nx,1\n".as_bytes()).collect();
        assert!(
            missing[0].as_ref().unwrap_err().to_string().contains("id"),
            "{:?}",
            missing[0]
        );
    }

    #[test]
    fn catalog_rows_parse_and_report() {
        let data = "id,title,price,category,attributes,in_stock\n\
                    p1,Tent,99.5,Outdoor > Tents,color=green; size=2,true\n\
                    p2,Stove,cheap,,,\n\
                    p3,Lamp,5,,color,\n\
                    p4,Mug,5,,=red,\n\
                    p5,Cap,5,,Color=red; color=blue,\n\
                    p6,Hat,5,,size=M;size=L,\n";
        let rows: Vec<_> = catalog(Path::new("c.csv"), data.as_bytes()).collect();
        let p1 = rows[0].as_ref().unwrap();
        assert_eq!(p1.category, vec!["Outdoor", "Tents"]);
        assert_eq!(p1.attributes.get("size").map(String::as_str), Some("2"));
        assert_eq!(
            rows[1].as_ref().unwrap_err().to_string(),
            "c.csv:3: item \"p2\": price \"cheap\" is not a number"
        );
        assert!(
            rows[2]
                .as_ref()
                .unwrap_err()
                .to_string()
                .starts_with("c.csv:4: item \"p3\": attribute")
        );
        assert_eq!(
            rows[3].as_ref().unwrap_err().to_string(),
            "c.csv:5: item \"p4\": attribute \"=red\" has no name",
            "the ranker would drop it without a word"
        );
        // One attribute given twice, in any case: which value was meant is for the file to say.
        assert_eq!(
            rows[4].as_ref().unwrap_err().to_string(),
            "c.csv:6: item \"p5\": attributes \"Color\" and \"color\" are one attribute \
             (names are read without case or extra spaces); give it once"
        );
        assert_eq!(
            rows[5].as_ref().unwrap_err().to_string(),
            "c.csv:7: item \"p6\": attribute \"size\" is given twice; give it once"
        );
        let missing = errors(catalog(Path::new("c.csv"), "id,name\n".as_bytes()));
        assert_eq!(
            missing,
            vec!["c.csv:1: header lacks column(s): title, price"]
        );
    }

    #[test]
    fn events_parse_kind_value_and_time() {
        let data = "user_id,item_id,kind,value,timestamp_ms\nu1,p1,purchase,,1788238930000\n\
             u1,p1,teleport,,\nu1,p1,view,,1788238930000000\nu1,p1,view,,1788238930\n";
        let rows: Vec<_> = events(Path::new("e.csv"), data.as_bytes()).collect();
        let e = rows[0].as_ref().unwrap();
        assert_eq!(
            (e.kind, e.value, e.timestamp_ms),
            (rk::InteractionKind::Purchase as i32, 1.0, 1_788_238_930_000)
        );
        assert!(
            rows[1]
                .as_ref()
                .unwrap_err()
                .to_string()
                .contains("e.csv:3: kind \"teleport\"")
        );
        let micro = rows[2].as_ref().unwrap_err().to_string();
        assert!(
            micro.contains("e.csv:4: timestamp_ms 1788238930000000"),
            "{micro}"
        );
        let seconds = rows[3].as_ref().unwrap_err().to_string();
        assert!(
            seconds.contains("e.csv:5: timestamp_ms 1788238930 would be in 1970-1973"),
            "{seconds}"
        );
    }

    #[test]
    fn feedback_rows_parse_and_report() {
        let text = "request_id,position,item_id,clicked,query,dense,bm25,cf,kg,popularity\n\
                    r1,1,p1,0,tent,0.8,0.5,0,0,0.2\n\
                    r1,2,p2,true,tent,0.7,1,0.1,0.3,0.9\n\
                    ,1,p3,0,,0,0,0,0,0\n\
                    r2,0,p3,0,,0,0,0,0,0\n\
                    r2,1,p3,maybe,,0,0,0,0,0\n\
                    r2,1,p3,1,,0,0,NaN,0,0\n";
        let rows: Vec<_> = feedback(Path::new("f.csv"), text.as_bytes()).collect();
        let ok: Vec<&ShownItem> = rows.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[1].line, 3);
        assert!(ok[1].clicked && ok[1].position == 2 && ok[1].query == "tent");
        assert_eq!(ok[1].signals, [0.7, 1.0, 0.1, 0.3, 0.9]);
        let errs: Vec<String> = rows
            .into_iter()
            .filter_map(Result::err)
            .map(|e| e.to_string())
            .collect();
        assert_eq!(
            errs,
            vec![
                "f.csv:4: request_id is empty",
                "f.csv:5: position \"0\" is not a whole number from 1",
                "f.csv:6: clicked \"maybe\" is not 1/0 or true/false",
                "f.csv:7: cf \"NaN\" is not a number",
            ]
        );
        let missing = errors(feedback(
            Path::new("f.csv"),
            "request_id,position\n".as_bytes(),
        ));
        assert_eq!(missing.len(), 1);
        assert!(
            missing[0].starts_with("f.csv:1: header lacks column(s): item_id, clicked"),
            "{missing:?}"
        );
    }

    /// A pins file as an admin writes it; each fault named with its line.
    #[test]
    fn a_pins_file_is_read_and_its_faults_named_by_line() {
        let path = Path::new("pins.txt");
        let read = pins(
            path,
            "# spring\n\ntent => p007 , p012, - p300  # the promoted tent first\nhiking boots=>p020\nlamp => -p007\nCategory: Desk Lamps => p031, -p032\nstove => brand:Acme|Bigtop +0.25, color = green|olive & in-stock & price:..50.5 -0.1, category:Pegs -1\n * => -p666, in-stock +0.05\n",
        )
        .unwrap();
        assert_eq!(read.lines, [3, 4, 5, 6, 7, 8]);
        let messages = read.messages();
        assert_eq!(
            messages,
            [
                rk::PinRule {
                    query: "tent".into(),
                    items: vec!["p007".into(), "p012".into()],
                    hidden: vec!["p300".into()],
                    ..Default::default()
                },
                rk::PinRule {
                    query: "hiking boots".into(),
                    items: vec!["p020".into()],
                    ..Default::default()
                },
                rk::PinRule {
                    query: "lamp".into(),
                    hidden: vec!["p007".into()],
                    ..Default::default()
                },
                rk::PinRule {
                    category: "Desk Lamps".into(),
                    items: vec!["p031".into()],
                    hidden: vec!["p032".into()],
                    ..Default::default()
                },
                rk::PinRule {
                    query: "stove".into(),
                    boosts: vec![
                        rk::Boost {
                            when: Some(rk::Filters {
                                brands: vec!["Acme".into(), "Bigtop".into()],
                                ..Default::default()
                            }),
                            amount: 0.25,
                        },
                        rk::Boost {
                            when: Some(rk::Filters {
                                attributes: vec![rk::AttributeFilter {
                                    name: "color".into(),
                                    values: vec!["green".into(), "olive".into()],
                                }],
                                in_stock_only: true,
                                max_price: Some(50.5),
                                ..Default::default()
                            }),
                            amount: -0.1,
                        },
                        rk::Boost {
                            when: Some(rk::Filters {
                                category: "Pegs".into(),
                                ..Default::default()
                            }),
                            amount: -1.0,
                        },
                    ],
                    ..Default::default()
                },
                rk::PinRule {
                    hidden: vec!["p666".into()],
                    boosts: vec![rk::Boost {
                        when: Some(rk::Filters {
                            in_stock_only: true,
                            ..Default::default()
                        }),
                        amount: 0.05,
                    }],
                    everywhere: true,
                    ..Default::default()
                },
            ]
        );
        // `pins list` writes each rule as a line this reader takes back.
        let listed: Vec<String> = messages.iter().map(pin_line).collect();
        assert_eq!(listed[0], "tent => p007, p012, -p300");
        assert_eq!(listed[3], "category:Desk Lamps => p031, -p032");
        assert_eq!(
            listed[4],
            "stove => brand:Acme|Bigtop +0.25, color=green|olive & in-stock & price:..50.5 -0.1, category:Pegs -1"
        );
        assert_eq!(listed[5], "* => -p666, in-stock +0.05");
        assert_eq!(pins(path, &listed.join("\n")).unwrap().messages(), messages);
        assert!(pins(path, "# nothing\n").unwrap().messages().is_empty());
        for (text, want) in [
            ("tent p007", "pins.txt:1: expected `search => id, id, ...`"),
            ("a => b => c", "pins.txt:1: more than one `=>`"),
            ("tent => p1,, p2", "pins.txt:1: an empty id"),
            ("\ntent =>", "pins.txt:2: an empty id"),
            (
                "the => p1",
                "pins.txt:1: query \"the\" has no word that search reads",
            ),
            ("tent => p1, p1", "pins.txt:1: item \"p1\" is pinned twice"),
            ("tent => p1, -", "pins.txt:1: an empty id"),
            (
                "tent => p1, -p1",
                "pins.txt:1: item \"p1\" is both pinned and hidden",
            ),
            (
                "tent => p1\n# x\nTents => p2",
                "pins.txt:3: query \"Tents\" has a rule already (on line 1)",
            ),
            (
                "category:Tents => p1\ncategory: tents => p2",
                "pins.txt:2: category \"tents\" has a rule already (on line 1)",
            ),
            (
                "category: => p1",
                "pins.txt:1: names no query and no category",
            ),
            (
                "* => -p1\n* => in-stock +0.1",
                "pins.txt:2: every ranking has a rule already (on line 1)",
            ),
            (
                "contains:tent => p1",
                "pins.txt:1: the rule for any search with \"tent\" pins an item",
            ),
            (
                "* => p1",
                "pins.txt:1: the rule for every ranking pins an item (pins are set per search",
            ),
            (
                "tent => size:big +0.1",
                "pins.txt:1: boost `size:big`: unknown condition `size:big`",
            ),
            (
                "tent => brand:a & brand:b +0.1",
                "pins.txt:1: boost `brand:a & brand:b`: `brand:b` is a second condition on the same field",
            ),
            (
                "tent => price:cheap +0.1",
                "pins.txt:1: boost `price:cheap`: price range `cheap`: expected",
            ),
            (
                "tent => brand:a +2",
                "pins.txt:1: boost 0: amount 2; it moves a score by -1..1, not 0",
            ),
            ("tent => in-stock +0", "pins.txt:1: boost 0: amount 0;"),
        ] {
            let error = pins(path, text).unwrap_err().to_string();
            assert!(error.starts_with(want), "{text:?}: {error}");
        }
    }

    /// A rule's schedule in a pins file: UTC days or minutes (or ms), either end open, read
    /// and written back the same; faults named by line.
    #[test]
    fn a_pins_files_redirects_are_read_and_written_back() {
        let path = Path::new("pins.txt");
        let text = "returns => redirect:/help/returns\nblack friday @2026-11-27..2026-11-30 => Redirect: https://shop.example/sale , p1, -p2\nt@ble => p3\nemail @home => p4\n";
        let rules = pins(path, text).unwrap().messages();
        let read: Vec<(&str, &str, Option<i64>)> = rules
            .iter()
            .map(|r| (r.query.as_str(), r.redirect.as_str(), r.starts_ms))
            .collect();
        assert_eq!(
            read,
            [
                ("returns", "/help/returns", None),
                (
                    "black friday",
                    "https://shop.example/sale",
                    Some(1_795_737_600_000)
                ),
                ("t@ble", "", None),
                ("email @home", "", None),
            ],
            "an `@` before no time is the search's"
        );
        assert_eq!(
            (rules[1].items.as_slice(), rules[1].hidden.as_slice()),
            (&["p1".to_string()][..], &["p2".to_string()][..])
        );
        let listed: Vec<String> = rules.iter().map(pin_line).collect();
        assert_eq!(listed[0], "returns => redirect:/help/returns");
        assert_eq!(
            listed[1],
            "black friday @2026-11-27..2026-11-30 => redirect:https://shop.example/sale, p1, -p2"
        );
        assert_eq!(pins(path, &listed.join("\n")).unwrap().messages(), rules);
        // A banner is the rest of its line, commas and all; alone, or after other entries.
        let text = "tent => p1, -p2, Banner: Free shipping, this week only\n* => banner:{\"sale\": 1}  # data\n";
        let rules = pins(path, text).unwrap().messages();
        assert_eq!(rules[0].banner, "Free shipping, this week only");
        assert_eq!((rules[0].items.len(), rules[0].hidden.len()), (1, 1));
        assert_eq!(rules[1].banner, "{\"sale\": 1}");
        assert!(rules[1].everywhere && rules[1].hidden.is_empty());
        let listed: Vec<String> = rules.iter().map(pin_line).collect();
        assert_eq!(
            listed[0],
            "tent => p1, -p2, banner: Free shipping, this week only"
        );
        assert_eq!(pins(path, &listed.join("\n")).unwrap().messages(), rules);
        for (text, want) in [
            (
                "tent => p1, banner:",
                "pins.txt:1: `banner:` without a text",
            ),
            (
                "returns => redirect:/a, redirect:/b",
                "pins.txt:1: a second `redirect:` (a search goes to one page)",
            ),
            (
                "returns => redirect: ",
                "pins.txt:1: `redirect:` without an address",
            ),
            (
                "\ncategory:Tents => redirect:/tents",
                "pins.txt:2: the rule for category \"Tents\" redirects; a redirect answers one search (a query's own rule)",
            ),
            (
                "returns => redirect:help",
                "pins.txt:1: redirect \"help\": expected a path on the shop's site (/help/returns) or an http(s) URL",
            ),
        ] {
            let error = pins(path, text).unwrap_err().to_string();
            assert_eq!(error, want, "{text}");
        }
    }

    #[test]
    fn a_pins_files_escapes_write_what_the_grammar_would_read() {
        let path = Path::new("pins.txt");
        let text = r"jackets => brand:Mast \& Harbour +0.2, size=S\|M +0.1, p\,1, \-p2, -p\#3, Model \+3
returns\#policy => redirect:/help\#returns  # the anchor is the address's
tent => banner: Our \#1 tent \=> now 20% off
deals \@2026 => p4
contains\:x => p5, C:\path
";
        let rules = pins(path, text).unwrap().messages();
        let when = rules[0].boosts[0].when.as_ref().unwrap();
        assert_eq!(when.brands, ["Mast & Harbour"]);
        let size = &rules[0].boosts[1].when.as_ref().unwrap().attributes[0];
        assert_eq!(
            (size.name.as_str(), size.values.as_slice()),
            ("size", &["S|M".to_string()][..])
        );
        assert_eq!(rules[0].items, ["p,1", "-p2", "Model +3"]);
        assert_eq!(rules[0].hidden, ["p#3"]);
        assert_eq!(
            (rules[1].query.as_str(), rules[1].redirect.as_str()),
            ("returns#policy", "/help#returns")
        );
        assert_eq!(rules[2].banner, "Our #1 tent => now 20% off");
        assert_eq!(
            (rules[3].query.as_str(), rules[3].starts_ms),
            ("deals @2026", None)
        );
        // A `\` before a letter is itself.
        assert_eq!(
            (rules[4].query.as_str(), rules[4].contains),
            ("contains:x", false)
        );
        assert_eq!(rules[4].items, ["p5", r"C:\path"]);
        let listed: Vec<String> = rules.iter().map(pin_line).collect();
        assert_eq!(
            listed[0],
            r"jackets => p\,1, \-p2, Model \+3, -p\#3, brand:Mast \& Harbour +0.2, size=S\|M +0.1"
        );
        assert_eq!(listed[1], r"returns\#policy => redirect:/help\#returns");
        assert_eq!(listed[4], r"contains\:x => p5, C:\\path");
        assert_eq!(pins(path, &listed.join("\n")).unwrap().messages(), rules);
        // A fault names the text as written, escapes and all.
        let error = pins(path, "x => brand:A\\&B & nope +0.1")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(r"unknown condition `nope`") && error.contains(r"A\&B"),
            "{error}"
        );
        let error = pins(path, "x => p1\u{10ff23}").unwrap_err().to_string();
        assert!(
            error.starts_with("pins.txt:1: character U+10FF23 is kept"),
            "{error}"
        );
    }

    /// Rules made of texts full of the grammar's own characters, each set the ranker takes:
    /// `pins list`'s lines read back (`pins load`) as the same rules, field for field.
    #[test]
    fn every_rule_set_pins_takes_is_written_back_as_itself() {
        const PIECES: &[&str] = &[
            "a",
            "tent",
            "Mast",
            "p1",
            " ",
            ",",
            "#",
            "=>",
            "=",
            ">",
            "&",
            "|",
            "@",
            "@2026-03-01",
            "..",
            "-",
            "+3",
            " -0.5",
            "\\",
            "\\#",
            ":",
            "category:",
            "contains:",
            "redirect:",
            "banner:",
            "brand:",
            "in-stock",
            "price:",
            "*",
            "é",
            "🎒",
            "/",
            "%20",
        ];
        let mut rng = souk_ranker_core::rng::XorShift::new(11);
        let mut pick = |n: usize| (rng.unit() * n as f64) as usize;
        let text = |pick: &mut dyn FnMut(usize) -> usize, no_space: bool| -> String {
            let t: String = (0..1 + pick(5))
                .map(|_| PIECES[pick(PIECES.len())])
                .collect();
            let t = if no_space { t.replace(' ', "") } else { t };
            let t = t.trim().to_string();
            if t.is_empty() { "x".into() } else { t }
        };
        let (mut taken, mut refused) = (0, 0);
        for _ in 0..4_000 {
            let mut rules = Vec::new();
            for _ in 0..1 + pick(3) {
                let kind = pick(4);
                let mut rule = PinRule {
                    everywhere: kind == 3,
                    contains: kind == 2,
                    ..PinRule::default()
                };
                match kind {
                    0 | 2 => rule.query = text(&mut pick, false),
                    1 => rule.category = text(&mut pick, false),
                    _ => {}
                }
                if kind < 2 {
                    rule.items = (0..pick(3)).map(|_| text(&mut pick, false)).collect();
                }
                rule.hidden = (0..pick(2)).map(|_| text(&mut pick, false)).collect();
                for _ in 0..pick(3) {
                    let mut boost = Boost {
                        amount: [0.25, -0.1, 1.0][pick(3)],
                        ..Boost::default()
                    };
                    match pick(3) {
                        0 => {
                            boost.brands =
                                (0..1 + pick(2)).map(|_| text(&mut pick, false)).collect()
                        }
                        1 => boost.category = text(&mut pick, false),
                        _ => {
                            boost.attributes = vec![(
                                text(&mut pick, false),
                                (0..1 + pick(2)).map(|_| text(&mut pick, false)).collect(),
                            )]
                        }
                    }
                    rule.boosts.push(boost);
                }
                if kind == 0 && pick(3) == 0 {
                    rule.redirect = format!("/{}", text(&mut pick, true));
                }
                if pick(3) == 0 {
                    rule.banner = text(&mut pick, false);
                }
                if pick(4) == 0 {
                    rule.starts_ms = Some(1_795_737_600_000 + 60_000 * pick(3) as i64);
                }
                rules.push(rule);
            }
            let Ok(checked) = Pins::new(rules.clone()) else {
                refused += 1;
                continue;
            };
            taken += 1;
            let messages: Vec<rk::PinRule> =
                checked.rules().iter().map(rk::PinRule::from).collect();
            let listed: Vec<String> = messages.iter().map(pin_line).collect();
            let file = listed.join("\n");
            let read = match pins(Path::new("pins.txt"), &file) {
                Ok(read) => read,
                Err(e) => panic!("{rules:?}\nwritten as\n{file}\nrefused: {e}"),
            };
            assert_eq!(read.checked.rules(), rules.as_slice(), "written as\n{file}");
        }
        assert!(
            taken > 500 && refused > 0,
            "{taken} taken, {refused} refused"
        );
    }

    #[test]
    fn a_pins_files_schedules_are_read_as_utc_times() {
        let path = Path::new("pins.txt");
        let read = pins(
            path,
            "tent => p1\ntent @2026-03-01..2026-04-01 => p2\n* @2026-11-27T09:30.. => brand:Acme +0.2\ncategory:Tents @..1000 => p3\nContains: tent pegs @5.. => -p4\n",
        )
        .unwrap();
        let rules = read.messages();
        let times: Vec<(Option<i64>, Option<i64>)> =
            rules.iter().map(|r| (r.starts_ms, r.ends_ms)).collect();
        assert_eq!(
            times,
            [
                (None, None),
                (Some(1_772_323_200_000), Some(1_775_001_600_000)),
                (Some(1_795_771_800_000), None),
                (None, Some(1_000)),
                (Some(5), None),
            ]
        );
        assert!(rules[4].contains && rules[4].query == "tent pegs");
        assert_eq!(rules[1].query, "tent");
        assert!(rules[2].everywhere);
        assert_eq!(rules[3].category, "Tents");
        let listed: Vec<String> = rules.iter().map(pin_line).collect();
        assert_eq!(listed[1], "tent @2026-03-01..2026-04-01 => p2");
        assert_eq!(listed[2], "* @2026-11-27T09:30.. => brand:Acme +0.2");
        assert_eq!(listed[3], "category:Tents @..1000 => p3");
        assert_eq!(listed[4], "contains:tent pegs @5.. => -p4");
        assert_eq!(pins(path, &listed.join("\n")).unwrap().messages(), rules);
        let notes: Vec<Option<&str>> = rules
            .iter()
            .map(|r| schedule_note(r, 1_773_000_000_000))
            .collect();
        assert_eq!(
            notes,
            [
                None,
                Some("in force now"),
                Some("starts later"),
                Some("ended"),
                Some("in force now")
            ]
        );
        assert_eq!(schedule_note(&rules[1], 1_775_001_600_000), Some("ended"));
        let at = 1_773_000_000_000;
        assert_eq!(
            pin_note(&rules[0], at, None),
            "",
            "a standing rule, not counted"
        );
        assert_eq!(pin_note(&rules[0], at, Some(1)), "applied to 1 ranking");
        assert_eq!(
            pin_note(&rules[1], at, Some(1_204_000)),
            "applied to 1,204,000 rankings; in force now"
        );
        assert_eq!(
            pin_note(&rules[2], at, Some(0)),
            "applied to 0 rankings; starts later"
        );
        assert_eq!(pin_note(&rules[3], at, None), "ended");
        assert_eq!(parse_time(" 2026-11-27T09:30 "), Ok(1_795_771_800_000));
        assert_eq!(parse_time("1700000000000"), Ok(1_700_000_000_000));
        assert!(
            parse_time("next friday")
                .unwrap_err()
                .contains("expected a UTC day")
        );
        for (day, ms) in [
            ("1970-01-01", 0),
            ("2000-02-29", 951_782_400_000),
            ("1969-12-31", -86_400_000),
        ] {
            assert_eq!(utc_ms(day), Some(ms), "{day}");
            assert_eq!(utc_text(ms), day);
        }
        for (text, want) in [
            (
                "tent @2026-02-30.. => p1",
                "pins.txt:1: schedule `@2026-02-30..`: expected `@FROM..UNTIL`",
            ),
            ("tent @.. => p1", "pins.txt:1: schedule `@..`: expected"),
            (
                "tent @2026-03-01 => p1",
                "pins.txt:1: schedule `@2026-03-01`",
            ),
            ("tent @2026-03-01T24:00.. => p1", "pins.txt:1: schedule"),
            (
                "tent @2026-04-01..2026-03-01 => p1",
                "pins.txt:1: ends at 1772323200000 ms, not after it starts (1775001600000 ms)",
            ),
            (
                "tent @2026-03-01..2026-04-01 => p1\ntent @2026-03-31.. => p2",
                "pins.txt:2: query \"tent\" has a scheduled rule already for part of that time (on line 1)",
            ),
        ] {
            let error = pins(path, text).unwrap_err().to_string();
            assert!(error.starts_with(want), "{text:?}: {error}");
        }
    }

    /// A synonyms file as an admin writes it; each fault named with its line.
    #[test]
    fn a_synonyms_file_is_read_and_its_faults_named_by_line() {
        let path = Path::new("syn.txt");
        let read = synonyms(
            path,
            "# shop\n\nsofa, couch , settee  # all alike\nblendtec, blend tec => blender\n",
        )
        .unwrap();
        assert_eq!(read.lines, [3, 4]);
        assert_eq!(
            read.messages(),
            [
                rk::Synonym {
                    phrases: vec!["sofa".into(), "couch".into(), "settee".into()],
                    replacement: None,
                },
                rk::Synonym {
                    phrases: vec!["blendtec".into(), "blend tec".into()],
                    replacement: Some("blender".into()),
                },
            ]
        );
        assert!(synonyms(path, "# nothing\n").unwrap().messages().is_empty());
        for (text, want) in [
            ("a => b => c", "syn.txt:1: more than one `=>`"),
            ("sofa,, couch", "syn.txt:1: an empty phrase"),
            (
                "\ntv => television, telly",
                "syn.txt:2: one replacement after `=>`",
            ),
            ("tv =>", "syn.txt:1: nothing after `=>`"),
            ("sofa", "syn.txt:1: \"sofa\" alone"),
            (
                "sofa, couch\n# x\nsettee, Sofas",
                "syn.txt:3: \"Sofas\" is named by two synonyms (already on line 1)",
            ),
            (
                "tv, the",
                "syn.txt:1: \"the\" has no word that search reads",
            ),
        ] {
            let error = synonyms(path, text).unwrap_err().to_string();
            assert!(error.starts_with(want), "{text:?}: {error}");
        }
    }
}
