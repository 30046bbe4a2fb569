//! Protobuf wire bytes straight to proto3 JSON, driven by the message's descriptor: what
//! `DynamicMessage::decode` followed by its serde serializer writes (field names in
//! camelCase, enums by name, 64-bit integers as strings, non-finite floats as strings, bytes
//! in base64, default values left out), without building the dynamic message. That path
//! allocates a value per field and a map per message; this one reads each field once and
//! writes it into one string, from a [`JsonPlan`] compiled once per reply type
//! (BENCHMARKS.md "Session 44"; `cargo run --release -p souk-shared --example json_cost`).
//!
//! Well-known types (`google.protobuf.*`) have their own JSON forms and are not written here:
//! a plan for a type that reaches one is [`Unsupported::WellKnownType`], and the caller takes
//! the dynamic path.
use std::collections::HashMap;
use std::fmt::Write as _;

use base64::Engine as _;
use prost_reflect::{Kind, MessageDescriptor};

/// Nesting deeper than prost's own decoding limit is refused.
const MAX_DEPTH: usize = 100;

/// Why a message was not written.
#[derive(Debug, PartialEq, Eq)]
pub enum Unsupported {
    /// A `google.protobuf` type (Timestamp, Struct, wrappers...), written by the dynamic path.
    WellKnownType,
    /// Bytes that are not a message of the type (the dynamic path says what is wrong).
    Malformed(&'static str),
}

/// One field's value as it sits on the wire.
#[derive(Clone, Copy)]
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

fn varint(bytes: &mut &[u8]) -> Result<u64, Unsupported> {
    let mut value = 0u64;
    for i in 0..10 {
        let (&byte, rest) = bytes
            .split_first()
            .ok_or(Unsupported::Malformed("varint cut short"))?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err(Unsupported::Malformed("varint longer than 10 bytes"))
}

fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], Unsupported> {
    if bytes.len() < n {
        return Err(Unsupported::Malformed("field cut short"));
    }
    let (head, rest) = bytes.split_at(n);
    *bytes = rest;
    Ok(head)
}

fn fixed<const N: usize>(bytes: &mut &[u8]) -> Result<[u8; N], Unsupported> {
    let mut out = [0; N];
    out.copy_from_slice(take(bytes, N)?);
    Ok(out)
}

/// The next (field number, value) of a message's bytes.
fn next_field<'a>(bytes: &mut &'a [u8]) -> Result<(u32, Wire<'a>), Unsupported> {
    let key = varint(bytes)?;
    let number = u32::try_from(key >> 3).map_err(|_| Unsupported::Malformed("field number"))?;
    if number == 0 {
        return Err(Unsupported::Malformed("field number 0"));
    }
    let value = match key & 7 {
        0 => Wire::Varint(varint(bytes)?),
        1 => Wire::Fixed64(u64::from_le_bytes(fixed(bytes)?)),
        2 => {
            let n =
                usize::try_from(varint(bytes)?).map_err(|_| Unsupported::Malformed("length"))?;
            Wire::Bytes(take(bytes, n)?)
        }
        5 => Wire::Fixed32(u32::from_le_bytes(fixed(bytes)?)),
        _ => return Err(Unsupported::Malformed("group or unknown wire type")),
    };
    Ok((number, value))
}

/// A field's type, with messages and enums as indices into the plan.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Type {
    Int32,
    Sint32,
    Uint32,
    Int64,
    Sint64,
    Uint64,
    Bool,
    Float,
    Double,
    Fixed32,
    Sfixed32,
    Fixed64,
    Sfixed64,
    String,
    Bytes,
    Enum(usize),
    Message(usize),
}

impl Type {
    /// Written as numbers in one length-delimited run when packed.
    fn packable(self) -> bool {
        !matches!(self, Type::String | Type::Bytes | Type::Message(_))
    }
}

#[derive(Debug)]
enum Shape {
    /// One value; `presence`: written even when it is the default (proto3 `optional`, oneof
    /// members, messages).
    Single {
        presence: bool,
    },
    List,
    Map {
        key: Type,
        value: Type,
    },
}

#[derive(Debug)]
struct FieldPlan {
    number: u32,
    /// `"jsonName":`, escaped.
    key: String,
    ty: Type,
    shape: Shape,
}

#[derive(Debug, Default)]
struct MessagePlan {
    fields: Vec<FieldPlan>,
}

impl MessagePlan {
    fn field(&self, number: u32) -> Option<usize> {
        self.fields.iter().position(|f| f.number == number)
    }
}

#[derive(Debug, Default)]
struct EnumPlan {
    /// (number, its name as a JSON string).
    names: Vec<(i32, String)>,
}

/// How to write one message type (and every type it holds) as JSON.
#[derive(Debug)]
pub struct JsonPlan {
    messages: Vec<MessagePlan>,
    enums: Vec<EnumPlan>,
}

struct Compiler {
    plan: JsonPlan,
    message_index: HashMap<String, usize>,
    enum_index: HashMap<String, usize>,
}

impl Compiler {
    fn message(&mut self, desc: &MessageDescriptor) -> Result<usize, Unsupported> {
        if let Some(&i) = self.message_index.get(desc.full_name()) {
            return Ok(i);
        }
        if desc.full_name().starts_with("google.protobuf.") {
            return Err(Unsupported::WellKnownType);
        }
        let index = self.plan.messages.len();
        self.plan.messages.push(MessagePlan::default());
        self.message_index
            .insert(desc.full_name().to_string(), index);
        let mut fields = Vec::new();
        for field in desc.fields() {
            let kind = field.kind();
            let shape = if field.is_map() {
                let Kind::Message(entry) = &kind else {
                    return Err(Unsupported::Malformed("map field without an entry type"));
                };
                Shape::Map {
                    key: self.ty(&entry.map_entry_key_field().kind())?,
                    value: self.ty(&entry.map_entry_value_field().kind())?,
                }
            } else if field.is_list() {
                Shape::List
            } else {
                Shape::Single {
                    presence: field.supports_presence(),
                }
            };
            let ty = match shape {
                Shape::Map { .. } => Type::Bytes,
                _ => self.ty(&kind)?,
            };
            let mut key = String::new();
            escape(field.json_name(), &mut key);
            key.push(':');
            fields.push(FieldPlan {
                number: field.number(),
                key,
                ty,
                shape,
            });
        }
        self.plan.messages[index].fields = fields;
        Ok(index)
    }

    fn ty(&mut self, kind: &Kind) -> Result<Type, Unsupported> {
        Ok(match kind {
            Kind::Int32 => Type::Int32,
            Kind::Sint32 => Type::Sint32,
            Kind::Uint32 => Type::Uint32,
            Kind::Int64 => Type::Int64,
            Kind::Sint64 => Type::Sint64,
            Kind::Uint64 => Type::Uint64,
            Kind::Bool => Type::Bool,
            Kind::Float => Type::Float,
            Kind::Double => Type::Double,
            Kind::Fixed32 => Type::Fixed32,
            Kind::Sfixed32 => Type::Sfixed32,
            Kind::Fixed64 => Type::Fixed64,
            Kind::Sfixed64 => Type::Sfixed64,
            Kind::String => Type::String,
            Kind::Bytes => Type::Bytes,
            Kind::Message(m) => Type::Message(self.message(m)?),
            Kind::Enum(e) => {
                if e.full_name().starts_with("google.protobuf.") {
                    return Err(Unsupported::WellKnownType);
                }
                if let Some(&i) = self.enum_index.get(e.full_name()) {
                    return Ok(Type::Enum(i));
                }
                let names = e
                    .values()
                    .map(|v| {
                        let mut name = String::new();
                        escape(v.name(), &mut name);
                        (v.number(), name)
                    })
                    .collect();
                self.plan.enums.push(EnumPlan { names });
                let i = self.plan.enums.len() - 1;
                self.enum_index.insert(e.full_name().to_string(), i);
                Type::Enum(i)
            }
        })
    }
}

/// Writes `text` as a JSON string.
fn escape(text: &str, out: &mut String) {
    out.push('"');
    let mut start = 0;
    for (i, b) in text.bytes().enumerate() {
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&text[start..i]);
        if escaped.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escaped);
        }
        start = i + 1;
    }
    out.push_str(&text[start..]);
    out.push('"');
}

fn zigzag32(v: u32) -> i32 {
    ((v >> 1) as i32) ^ -((v & 1) as i32)
}

fn zigzag64(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn wrong() -> Unsupported {
    Unsupported::Malformed("wire type does not match the field")
}

/// Whether a scalar value is its type's default (left out unless the field has presence).
fn is_default(ty: Type, value: Wire<'_>) -> bool {
    match value {
        Wire::Varint(v) => match ty {
            Type::Int32 | Type::Enum(_) => v as i32 == 0,
            Type::Sint32 | Type::Uint32 => v as u32 == 0,
            _ => v == 0,
        },
        Wire::Fixed32(v) => match ty {
            Type::Float => f32::from_bits(v) == 0.0,
            _ => v == 0,
        },
        Wire::Fixed64(v) => match ty {
            Type::Double => f64::from_bits(v) == 0.0,
            _ => v == 0,
        },
        Wire::Bytes(b) => b.is_empty(),
    }
}

macro_rules! float {
    ($value:expr, $out:expr) => {{
        let f = $value;
        if f.is_finite() {
            $out.push_str(ryu::Buffer::new().format_finite(f));
        } else if f.is_nan() {
            $out.push_str("\"NaN\"");
        } else if f < 0.0 {
            $out.push_str("\"-Infinity\"");
        } else {
            $out.push_str("\"Infinity\"");
        }
    }};
}

impl JsonPlan {
    /// The plan for messages of type `desc`.
    ///
    /// # Errors
    /// When `desc` reaches a well-known type.
    pub fn new(desc: &MessageDescriptor) -> Result<Self, Unsupported> {
        let mut compiler = Compiler {
            plan: JsonPlan {
                messages: Vec::new(),
                enums: Vec::new(),
            },
            message_index: HashMap::new(),
            enum_index: HashMap::new(),
        };
        compiler.message(desc)?;
        Ok(compiler.plan)
    }

    /// Writes the message `bytes` as proto3 JSON to `out`.
    ///
    /// # Errors
    /// Bytes that are not a message of the plan's type.
    pub fn write(&self, bytes: &[u8], out: &mut String) -> Result<(), Unsupported> {
        self.message(0, &[bytes], out, 0)
    }

    fn scalar(&self, ty: Type, value: Wire<'_>, out: &mut String) -> Result<(), Unsupported> {
        match (ty, value) {
            (Type::Int32, Wire::Varint(v)) => {
                let _ = write!(out, "{}", v as i32);
            }
            (Type::Sint32, Wire::Varint(v)) => {
                let _ = write!(out, "{}", zigzag32(v as u32));
            }
            (Type::Uint32, Wire::Varint(v)) => {
                let _ = write!(out, "{}", v as u32);
            }
            (Type::Int64, Wire::Varint(v)) => {
                let _ = write!(out, "\"{}\"", v as i64);
            }
            (Type::Sint64, Wire::Varint(v)) => {
                let _ = write!(out, "\"{}\"", zigzag64(v));
            }
            (Type::Uint64, Wire::Varint(v)) => {
                let _ = write!(out, "\"{v}\"");
            }
            (Type::Bool, Wire::Varint(v)) => out.push_str(if v != 0 { "true" } else { "false" }),
            (Type::Enum(e), Wire::Varint(v)) => {
                let number = v as i32;
                match self.enums[e].names.iter().find(|(n, _)| *n == number) {
                    Some((_, name)) => out.push_str(name),
                    None => {
                        let _ = write!(out, "{number}");
                    }
                }
            }
            (Type::Fixed32, Wire::Fixed32(v)) => {
                let _ = write!(out, "{v}");
            }
            (Type::Sfixed32, Wire::Fixed32(v)) => {
                let _ = write!(out, "{}", v as i32);
            }
            (Type::Float, Wire::Fixed32(v)) => float!(f32::from_bits(v), out),
            (Type::Fixed64, Wire::Fixed64(v)) => {
                let _ = write!(out, "\"{v}\"");
            }
            (Type::Sfixed64, Wire::Fixed64(v)) => {
                let _ = write!(out, "\"{}\"", v as i64);
            }
            (Type::Double, Wire::Fixed64(v)) => float!(f64::from_bits(v), out),
            (Type::String, Wire::Bytes(b)) => {
                let text = std::str::from_utf8(b)
                    .map_err(|_| Unsupported::Malformed("string not UTF-8"))?;
                escape(text, out);
            }
            (Type::Bytes, Wire::Bytes(b)) => {
                out.push('"');
                base64::engine::general_purpose::STANDARD.encode_string(b, out);
                out.push('"');
            }
            _ => return Err(wrong()),
        }
        Ok(())
    }

    /// The value of `ty` a map entry without one holds.
    fn default_scalar(&self, ty: Type, out: &mut String) {
        match ty {
            Type::String | Type::Bytes => out.push_str("\"\""),
            Type::Bool => out.push_str("false"),
            Type::Int64 | Type::Sint64 | Type::Sfixed64 | Type::Uint64 | Type::Fixed64 => {
                out.push_str("\"0\"")
            }
            Type::Float | Type::Double => out.push_str("0.0"),
            Type::Enum(e) => match self.enums[e].names.iter().find(|(n, _)| *n == 0) {
                Some((_, name)) => out.push_str(name),
                None => out.push('0'),
            },
            Type::Message(_) => out.push_str("{}"),
            _ => out.push('0'),
        }
    }

    /// A message whose bytes come in `parts` (a singular message field sent more than once
    /// is the merge of its occurrences, which reading them one after another gives).
    fn message(
        &self,
        index: usize,
        parts: &[&[u8]],
        out: &mut String,
        depth: usize,
    ) -> Result<(), Unsupported> {
        if depth > MAX_DEPTH {
            return Err(Unsupported::Malformed("nested too deep"));
        }
        let plan = &self.messages[index];
        // (field's place in the plan, value), grouped by field below; unknown fields skipped.
        let mut wire: Vec<(usize, Wire<'_>)> = Vec::new();
        for part in parts {
            let mut bytes = *part;
            while !bytes.is_empty() {
                let (number, value) = next_field(&mut bytes)?;
                if let Some(field) = plan.field(number) {
                    wire.push((field, value));
                }
            }
        }
        if !wire.is_sorted_by_key(|(f, _)| *f) {
            wire.sort_by_key(|(f, _)| *f);
        }
        out.push('{');
        let mut first = true;
        let mut rest = wire.as_slice();
        while let Some(&(field, _)) = rest.first() {
            let n = rest.iter().take_while(|(f, _)| *f == field).count();
            let (group, after) = rest.split_at(n);
            rest = after;
            let field = &plan.fields[field];
            let values = || group.iter().map(|(_, v)| *v);
            if let Shape::Single { presence } = field.shape
                && !matches!(field.ty, Type::Message(_))
            {
                // The last value sent wins (a packed run counts, per the spec).
                let Some(last) = self.last(field.ty, group[n - 1].1)? else {
                    continue;
                };
                if !presence && is_default(field.ty, last) {
                    continue;
                }
                self.key(field, &mut first, out);
                self.scalar(field.ty, last, out)?;
                continue;
            }
            self.key(field, &mut first, out);
            match field.shape {
                Shape::Single { .. } => {
                    let Type::Message(m) = field.ty else {
                        return Err(wrong());
                    };
                    let parts = values().map(bytes_of).collect::<Result<Vec<_>, _>>()?;
                    self.message(m, &parts, out, depth + 1)?;
                }
                Shape::List => {
                    out.push('[');
                    let mut first_item = true;
                    let mut item = |out: &mut String| {
                        if !first_item {
                            out.push(',');
                        }
                        first_item = false;
                    };
                    if let Type::Message(m) = field.ty {
                        for value in values() {
                            item(out);
                            self.message(m, &[bytes_of(value)?], out, depth + 1)?;
                        }
                    } else {
                        for value in values() {
                            match (value, field.ty.packable()) {
                                (Wire::Bytes(mut run), true) => {
                                    while !run.is_empty() {
                                        item(out);
                                        let element = unpack(field.ty, &mut run)?;
                                        self.scalar(field.ty, element, out)?;
                                    }
                                }
                                (value, _) => {
                                    item(out);
                                    self.scalar(field.ty, value, out)?;
                                }
                            }
                        }
                    }
                    out.push(']');
                }
                Shape::Map { key, value } => self.map(key, value, values(), out, depth)?,
            }
        }
        out.push('}');
        Ok(())
    }

    fn key(&self, field: &FieldPlan, first: &mut bool, out: &mut String) {
        if !*first {
            out.push(',');
        }
        *first = false;
        out.push_str(&field.key);
    }

    /// A singular scalar's value from the last one sent: itself, or the last of a packed run
    /// (`None` for an empty run).
    fn last<'a>(&self, ty: Type, value: Wire<'a>) -> Result<Option<Wire<'a>>, Unsupported> {
        match (value, ty.packable()) {
            (Wire::Bytes(mut run), true) => {
                let mut last = None;
                while !run.is_empty() {
                    last = Some(unpack(ty, &mut run)?);
                }
                Ok(last)
            }
            (value, _) => Ok(Some(value)),
        }
    }

    /// A map field's entries as one JSON object; a key sent again replaces its entry.
    fn map<'a>(
        &self,
        key_ty: Type,
        value_ty: Type,
        entries: impl Iterator<Item = Wire<'a>>,
        out: &mut String,
        depth: usize,
    ) -> Result<(), Unsupported> {
        // (key as a JSON string, value's JSON)
        let mut written: Vec<(String, String)> = Vec::new();
        for entry in entries {
            let mut bytes = bytes_of(entry)?;
            let (mut key, mut value) = (None, Vec::new());
            while !bytes.is_empty() {
                match next_field(&mut bytes)? {
                    (1, v) => key = Some(v),
                    (2, v) => value.push(v),
                    _ => {}
                }
            }
            let mut key_text = String::new();
            match (key, key_ty) {
                (Some(k), Type::String) => self.scalar(key_ty, k, &mut key_text)?,
                (Some(k), _) => {
                    let mut bare = String::new();
                    self.scalar(key_ty, k, &mut bare)?;
                    escape(bare.trim_matches('"'), &mut key_text);
                }
                (None, Type::String) => key_text.push_str("\"\""),
                (None, Type::Bool) => key_text.push_str("\"false\""),
                (None, _) => key_text.push_str("\"0\""),
            }
            let mut value_text = String::new();
            match (value_ty, value.last()) {
                (Type::Message(m), _) => {
                    let parts = value
                        .into_iter()
                        .map(bytes_of)
                        .collect::<Result<Vec<_>, _>>()?;
                    self.message(m, &parts, &mut value_text, depth + 1)?;
                }
                (ty, Some(&v)) => self.scalar(ty, v, &mut value_text)?,
                (ty, None) => self.default_scalar(ty, &mut value_text),
            }
            match written.iter_mut().find(|(k, _)| *k == key_text) {
                Some(slot) => slot.1 = value_text,
                None => written.push((key_text, value_text)),
            }
        }
        out.push('{');
        for (i, (key, value)) in written.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(key);
            out.push(':');
            out.push_str(value);
        }
        out.push('}');
        Ok(())
    }
}

/// The next element of a packed run of `ty`.
fn unpack<'a>(ty: Type, run: &mut &[u8]) -> Result<Wire<'a>, Unsupported> {
    Ok(match ty {
        Type::Fixed32 | Type::Sfixed32 | Type::Float => {
            Wire::Fixed32(u32::from_le_bytes(fixed(run)?))
        }
        Type::Fixed64 | Type::Sfixed64 | Type::Double => {
            Wire::Fixed64(u64::from_le_bytes(fixed(run)?))
        }
        _ => Wire::Varint(varint(run)?),
    })
}

fn bytes_of(value: Wire<'_>) -> Result<&[u8], Unsupported> {
    match value {
        Wire::Bytes(b) => Ok(b),
        _ => Err(Unsupported::Malformed("message is not length-delimited")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::collections::HashMap;

    use prost::Message;
    use prost_reflect::{DescriptorPool, DynamicMessage, MapKey, Value};

    use super::*;

    /// `bytes` of type `desc` as JSON, through a plan compiled for this one call.
    fn write(desc: &MessageDescriptor, bytes: &[u8], out: &mut String) -> Result<(), Unsupported> {
        JsonPlan::new(desc)?.write(bytes, out)
    }

    /// xorshift64*: enough to draw values.
    struct Draw(u64);

    impl Draw {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn one<T: Copy>(&mut self, of: &[T]) -> T {
            of[self.below(of.len())]
        }
    }

    const STRINGS: &[&str] = &["", "a", "trail shoes", "é\"\\\n\t\u{0}🎒", "\u{7f}\u{2028}"];

    fn scalar_value(kind: &Kind, d: &mut Draw) -> Value {
        let any = d.next();
        match kind {
            Kind::Double => Value::F64(d.one(&[
                0.0,
                -0.0,
                1.0,
                0.1,
                -2.25e300,
                5e-324,
                f64::NAN,
                f64::INFINITY,
                f64::NEG_INFINITY,
                any as f64 / 7.0,
            ])),
            Kind::Float => Value::F32(d.one(&[
                0.0,
                -0.0,
                1.0,
                0.45811993,
                -3.4e38,
                f32::NAN,
                f32::INFINITY,
                f32::NEG_INFINITY,
                (any % 1000) as f32 / 7.0,
            ])),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                Value::I32(d.one(&[0, 1, -1, i32::MIN, i32::MAX, any as i32]))
            }
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
                Value::I64(d.one(&[0, 1, -1, i64::MIN, i64::MAX, any as i64]))
            }
            Kind::Uint32 | Kind::Fixed32 => Value::U32(d.one(&[0, 1, u32::MAX, any as u32])),
            Kind::Uint64 | Kind::Fixed64 => Value::U64(d.one(&[0, 1, u64::MAX, any])),
            Kind::Bool => Value::Bool(any.is_multiple_of(2)),
            Kind::String => Value::String(d.one(STRINGS).to_string()),
            Kind::Bytes => Value::Bytes(any.to_le_bytes()[..d.below(9)].to_vec().into()),
            Kind::Enum(e) => {
                let known: Vec<i32> = e.values().map(|v| v.number()).collect();
                Value::EnumNumber(if d.below(5) == 0 { 77 } else { d.one(&known) })
            }
            Kind::Message(m) => Value::Message(random_message(m, d, 4)),
        }
    }

    fn value(kind: &Kind, d: &mut Draw, depth: usize) -> Value {
        match kind {
            Kind::Message(m) => Value::Message(random_message(m, d, depth + 1)),
            other => scalar_value(other, d),
        }
    }

    fn map_key(kind: &Kind, d: &mut Draw) -> MapKey {
        match scalar_value(kind, d) {
            Value::String(s) => MapKey::String(s),
            Value::Bool(b) => MapKey::Bool(b),
            Value::I32(v) => MapKey::I32(v),
            Value::I64(v) => MapKey::I64(v),
            Value::U32(v) => MapKey::U32(v),
            Value::U64(v) => MapKey::U64(v),
            other => panic!("no map key {other:?}"),
        }
    }

    /// A message of `desc` with about half its fields set, lists and maps of 0-3, nested
    /// messages down to depth 4.
    fn random_message(desc: &MessageDescriptor, d: &mut Draw, depth: usize) -> DynamicMessage {
        let mut message = DynamicMessage::new(desc.clone());
        for field in desc.fields() {
            let nested = matches!(field.kind(), Kind::Message(_));
            if d.below(2) == 0 || (nested && depth >= 4) {
                continue;
            }
            let kind = field.kind();
            let v = if field.is_map() {
                let Kind::Message(entry) = &kind else {
                    unreachable!()
                };
                let (k, v) = (entry.map_entry_key_field(), entry.map_entry_value_field());
                let entries: HashMap<MapKey, Value> = (0..d.below(4))
                    .map(|_| (map_key(&k.kind(), d), value(&v.kind(), d, depth)))
                    .collect();
                Value::Map(entries)
            } else if field.is_list() {
                Value::List((0..d.below(4)).map(|_| value(&kind, d, depth)).collect())
            } else {
                value(&kind, d, depth)
            };
            message.set_field(&field, v);
        }
        message
    }

    fn pool() -> DescriptorPool {
        let mut pool = DescriptorPool::decode(souk_proto::FILE_DESCRIPTOR_SET).unwrap();
        pool.decode_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .unwrap();
        pool
    }

    /// Every souk message type (and health's), drawn at random 200 times each: the direct
    /// writer's JSON is the dynamic message's JSON, value for value.
    #[test]
    fn every_message_is_written_as_the_dynamic_message_writes_it() {
        let pool = pool();
        let mut d = Draw(0x9E37_79B9_7F4A_7C15);
        let mut types = 0;
        for desc in pool.all_messages() {
            if desc.full_name().starts_with("google.protobuf.") || desc.is_map_entry() {
                continue;
            }
            types += 1;
            for n in 0..200 {
                let message = random_message(&desc, &mut d, 0);
                let bytes = message.encode_to_vec();
                let mut fast = String::new();
                write(&desc, &bytes, &mut fast)
                    .unwrap_or_else(|e| panic!("{} #{n}: {e:?}", desc.full_name()));
                let fast: serde_json::Value = serde_json::from_str(&fast)
                    .unwrap_or_else(|e| panic!("{} #{n}: {e}: {fast}", desc.full_name()));
                let decoded = DynamicMessage::decode(desc.clone(), bytes.as_slice()).unwrap();
                // As text, as the gateway sent it (a Value would widen f32 to f64).
                let expected: serde_json::Value =
                    serde_json::from_str(&serde_json::to_string(&decoded).unwrap()).unwrap();
                assert_eq!(fast, expected, "{} #{n}", desc.full_name());
            }
        }
        assert!(types > 80, "{types} message types");
    }

    /// What prost itself sends may repeat a field or pack a list differently from
    /// prost-reflect: the same JSON for a ranking written by the generated types, and for
    /// wire bytes with a singular field sent twice (the last wins, messages merge).
    #[test]
    fn generated_messages_and_repeated_fields_read_as_protobuf_says() {
        use souk_proto::ranker::v1 as rk;
        let pool = pool();
        let desc = pool
            .get_message_by_name("souk.ranker.v1.RankResponse")
            .unwrap();
        let response = rk::RankResponse {
            items: vec![rk::RankedItem {
                id: "p1".into(),
                score: 0.5,
                reasons: vec!["because".into()],
                ..Default::default()
            }],
            candidates: 3,
            words_matched: Some(false),
            ..Default::default()
        };
        let mut bytes = response.encode_to_vec();
        // candidates (3) again as 9, and model_version (4) twice.
        bytes.extend([3 << 3, 9, (4 << 3) | 2, 1, b'a', (4 << 3) | 2, 1, b'b']);
        let mut fast = String::new();
        write(&desc, &bytes, &mut fast).unwrap();
        let decoded = DynamicMessage::decode(desc.clone(), bytes.as_slice()).unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&fast).unwrap(),
            serde_json::from_str::<serde_json::Value>(&serde_json::to_string(&decoded).unwrap())
                .unwrap()
        );
        assert!(fast.contains(r#""candidates":9"#), "{fast}");
        assert!(fast.contains(r#""modelVersion":"b""#), "{fast}");
        assert!(
            fast.contains(r#""wordsMatched":false"#),
            "presence kept: {fast}"
        );
        // A default value sent explicitly (the last of two) is left out, as proto3 says.
        let mut zero = response.encode_to_vec();
        zero.extend([3 << 3, 0]);
        let mut fast = String::new();
        write(&desc, &zero, &mut fast).unwrap();
        assert!(!fast.contains("candidates"), "{fast}");
        let decoded = DynamicMessage::decode(desc.clone(), zero.as_slice()).unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&fast).unwrap(),
            serde_json::from_str::<serde_json::Value>(&serde_json::to_string(&decoded).unwrap())
                .unwrap()
        );
        for broken in [&bytes[..bytes.len() - 1], &[0x08][..], &[0x0b, 0x00][..]] {
            assert!(
                matches!(
                    write(&desc, broken, &mut String::new()),
                    Err(Unsupported::Malformed(_))
                ),
                "{broken:?}"
            );
        }
    }
}
