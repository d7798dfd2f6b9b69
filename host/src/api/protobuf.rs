//! Decoding of Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`) into Kubernetes JSON.

// Typed Go clients such as kubectl send protobuf bodies: the magic `k8s\0`,
// then a `runtime.Unknown` envelope holding the object's apiVersion, kind and
// its protobuf encoding. The server works on JSON, so `decode` turns such a
// body into the JSON a Go client would have sent for the same object.
//
// The wire format carries only field numbers, so decoding is driven by a
// table (`protobuf_schema.json`, written by `gen_protobuf_schema.py`) giving,
// per message, each field's JSON name and type, plus the message of each
// top-level (apiVersion, kind).
//
// The JSON follows Go's encoding of the decoded object:
// * absent fields are left out; present ones are kept, zero or not
//   (`replicas: 0`), except plain (non-pointer) Go scalars tagged
//   `omitempty`, which Go's protobuf encoder always writes and Go's JSON
//   encoder drops when zero (`omitEmpty` in the table);
// * fields embedded with `json:",inline"` are merged into their parent;
// * `bytes` become base64, maps become objects, keys follow Go's struct order;
// * apimachinery's special types get their JSON forms: `Time` and
//   `MicroTime` as RFC 3339 (an empty one is `null`), `Duration` as a Go
//   duration string, `Quantity` as its string, `IntOrString` as a number or
//   string, `RawExtension`/`FieldsV1` as the JSON they hold.

use base64::Engine as _;
use chrono::Datelike as _;
use serde_json::{Map, Number, Value};
use std::collections::HashMap;
use std::sync::OnceLock;

/// The media type of Kubernetes protobuf bodies.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

const MAGIC: &[u8] = b"k8s\x00";

/// Deeper nesting than any Kubernetes type needs; bounds recursion on hostile input.
const MAX_DEPTH: usize = 100;

/// Why a protobuf body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum ProtobufError {
    /// The body does not start with the `k8s\0` magic.
    #[error("protobuf body does not start with the Kubernetes protobuf magic \"k8s\\x00\"")]
    MissingMagic,
    /// The envelope has no apiVersion or kind.
    #[error("protobuf body does not name its apiVersion and kind")]
    MissingTypeMeta,
    /// The kind has no entry in the schema table.
    #[error("protobuf is not supported for {api_version} {kind}; send JSON")]
    UnsupportedKind {
        /// apiVersion named by the envelope.
        api_version: String,
        /// kind named by the envelope.
        kind: String,
    },
    /// The envelope declares a content encoding (compression) we do not handle.
    #[error("protobuf body with content encoding {0:?} is not supported; send JSON")]
    UnsupportedEncoding(String),
    /// The bytes are not a valid encoding of the declared message.
    #[error("malformed protobuf body at {path}: {reason}")]
    Malformed {
        /// Where in the object the problem was found.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Messages are nested deeper than any Kubernetes object allows.
    #[error("protobuf body is nested too deeply")]
    TooDeep,
    /// The built-in schema table could not be loaded (a build defect).
    #[error("protobuf schema table is invalid: {0}")]
    Schema(String),
}

/// Decode a `application/vnd.kubernetes.protobuf` body (the `k8s\0` magic + runtime.Unknown envelope) into Kubernetes JSON, with apiVersion and kind set from the envelope.
pub fn decode(body: &[u8]) -> Result<Value, ProtobufError> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or(ProtobufError::MissingMagic)?;
    let envelope = Envelope::parse(rest)?;
    if !envelope.content_encoding.is_empty() {
        return Err(ProtobufError::UnsupportedEncoding(
            envelope.content_encoding,
        ));
    }
    if envelope.api_version.is_empty() || envelope.kind.is_empty() {
        return Err(ProtobufError::MissingTypeMeta);
    }
    let schema = schema()?;
    let name = schema
        .kinds
        .get(&(envelope.api_version.clone(), envelope.kind.clone()))
        .or_else(|| schema.any_version_kinds.get(&envelope.kind))
        .ok_or_else(|| ProtobufError::UnsupportedKind {
            api_version: envelope.api_version.clone(),
            kind: envelope.kind.clone(),
        })?;
    let decoder = Decoder { schema };
    let body = decoder.object(name, envelope.raw, &envelope.kind, 0)?;
    // kind, then apiVersion: the key order of Go's TypeMeta
    let mut out = Map::new();
    out.insert("kind".into(), Value::String(envelope.kind));
    out.insert("apiVersion".into(), Value::String(envelope.api_version));
    out.extend(body);
    Ok(Value::Object(out))
}

// ------------------------------------------------------------------ wire format

const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_FIXED32: u8 = 5;

/// A cursor over protobuf bytes; every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> Result<u64, &'static str> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let byte = *self.buf.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            if i == 9 && byte > 1 {
                return Err("varint overflows 64 bits");
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err("varint longer than 10 bytes")
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        let end = self.pos.checked_add(n).ok_or("length out of range")?;
        let bytes = self
            .buf
            .get(self.pos..end)
            .ok_or("length runs past the end of the data")?;
        self.pos = end;
        Ok(bytes)
    }

    fn len_delimited(&mut self) -> Result<&'a [u8], &'static str> {
        let n = self.varint()?;
        let n = usize::try_from(n).map_err(|_| "length out of range")?;
        self.take(n)
    }

    fn fixed32(&mut self) -> Result<u32, &'static str> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn fixed64(&mut self) -> Result<u64, &'static str> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// The next field's number and wire type.
    fn key(&mut self) -> Result<(u32, u8), &'static str> {
        let key = self.varint()?;
        let number = u32::try_from(key >> 3).map_err(|_| "field number out of range")?;
        if number == 0 {
            return Err("field number 0");
        }
        Ok((number, (key & 7) as u8))
    }

    fn skip(&mut self, wire_type: u8) -> Result<(), &'static str> {
        match wire_type {
            WIRE_VARINT => self.varint().map(drop),
            WIRE_FIXED64 => self.take(8).map(drop),
            WIRE_LEN => self.len_delimited().map(drop),
            WIRE_FIXED32 => self.take(4).map(drop),
            _ => Err("unsupported wire type (groups are not used by Kubernetes)"),
        }
    }
}

/// The `runtime.Unknown` envelope.
struct Envelope<'a> {
    api_version: String,
    kind: String,
    raw: &'a [u8],
    content_encoding: String,
}

impl<'a> Envelope<'a> {
    fn parse(buf: &'a [u8]) -> Result<Self, ProtobufError> {
        let bad = |reason: &str| ProtobufError::Malformed {
            path: "envelope".into(),
            reason: reason.into(),
        };
        let mut env = Envelope {
            api_version: String::new(),
            kind: String::new(),
            raw: &[],
            content_encoding: String::new(),
        };
        let mut r = Reader::new(buf);
        while !r.done() {
            let (number, wire_type) = r.key().map_err(bad)?;
            match (number, wire_type) {
                (1, WIRE_LEN) => {
                    let mut tm = Reader::new(r.len_delimited().map_err(bad)?);
                    while !tm.done() {
                        match tm.key().map_err(bad)? {
                            (1, WIRE_LEN) => {
                                env.api_version =
                                    utf8(tm.len_delimited().map_err(bad)?).map_err(bad)?
                            }
                            (2, WIRE_LEN) => {
                                env.kind = utf8(tm.len_delimited().map_err(bad)?).map_err(bad)?
                            }
                            (_, wt) => tm.skip(wt).map_err(bad)?,
                        }
                    }
                }
                (2, WIRE_LEN) => env.raw = r.len_delimited().map_err(bad)?,
                (3, WIRE_LEN) => {
                    env.content_encoding = utf8(r.len_delimited().map_err(bad)?).map_err(bad)?
                }
                (4, WIRE_LEN) => {
                    // contentType: informational only
                    r.len_delimited().map_err(bad)?;
                }
                (1..=4, _) => return Err(bad("wrong wire type for an envelope field")),
                (_, wt) => r.skip(wt).map_err(bad)?,
            }
        }
        Ok(env)
    }
}

fn utf8(bytes: &[u8]) -> Result<String, &'static str> {
    String::from_utf8(bytes.to_vec()).map_err(|_| "string is not valid UTF-8")
}

// ------------------------------------------------------------------ schema table

/// How a message appears in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repr {
    Object,
    Items,
    Time,
    MicroTime,
    Duration,
    Quantity,
    IntOrString,
    RawJson,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scalar {
    String,
    Bytes,
    Bool,
    Int32,
    Int64,
    Uint32,
    Uint64,
    Sint32,
    Sint64,
    Fixed32,
    Fixed64,
    Sfixed32,
    Sfixed64,
    Double,
    Float,
    Enum,
}

impl Scalar {
    fn parse(s: &str) -> Option<Scalar> {
        Some(match s {
            "string" => Scalar::String,
            "bytes" => Scalar::Bytes,
            "bool" => Scalar::Bool,
            "int32" => Scalar::Int32,
            "int64" => Scalar::Int64,
            "uint32" => Scalar::Uint32,
            "uint64" => Scalar::Uint64,
            "sint32" => Scalar::Sint32,
            "sint64" => Scalar::Sint64,
            "fixed32" => Scalar::Fixed32,
            "fixed64" => Scalar::Fixed64,
            "sfixed32" => Scalar::Sfixed32,
            "sfixed64" => Scalar::Sfixed64,
            "double" => Scalar::Double,
            "float" => Scalar::Float,
            "enum" => Scalar::Enum,
            _ => return None,
        })
    }

    /// The wire type of one unpacked value.
    fn wire_type(self) -> u8 {
        match self {
            Scalar::String | Scalar::Bytes => WIRE_LEN,
            Scalar::Fixed32 | Scalar::Sfixed32 | Scalar::Float => WIRE_FIXED32,
            Scalar::Fixed64 | Scalar::Sfixed64 | Scalar::Double => WIRE_FIXED64,
            _ => WIRE_VARINT,
        }
    }

    /// The JSON value of a missing map key or value.
    fn zero(self) -> Value {
        match self {
            Scalar::String | Scalar::Bytes => Value::String(String::new()),
            Scalar::Bool => Value::Bool(false),
            _ => Value::from(0),
        }
    }
}

#[derive(Debug)]
enum Type {
    Scalar(Scalar),
    Message(String),
}

#[derive(Debug)]
enum Kind {
    Single(Type),
    Map(Scalar, Type),
}

#[derive(Debug)]
struct Field {
    name: String,
    kind: Kind,
    repeated: bool,
    omit_empty: bool,
    inline: bool,
}

#[derive(Debug)]
struct Message {
    repr: Repr,
    fields: HashMap<u32, Field>,
    /// Field numbers in declaration order, which is Go's JSON key order.
    order: Vec<u32>,
}

#[derive(Debug)]
struct Schema {
    kinds: HashMap<(String, String), String>,
    any_version_kinds: HashMap<String, String>,
    messages: HashMap<String, Message>,
}

fn schema() -> Result<&'static Schema, ProtobufError> {
    static SCHEMA: OnceLock<Result<Schema, String>> = OnceLock::new();
    SCHEMA
        .get_or_init(|| Schema::parse(include_str!("protobuf_schema.json")))
        .as_ref()
        .map_err(|e| ProtobufError::Schema(e.clone()))
}

impl Schema {
    fn parse(text: &str) -> Result<Schema, String> {
        let doc: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let str_at = |v: &Value, i: usize| v.get(i).and_then(Value::as_str).map(str::to_owned);
        let mut kinds = HashMap::new();
        for k in doc["kinds"].as_array().ok_or("no kinds")? {
            let (Some(av), Some(kind), Some(msg)) = (str_at(k, 0), str_at(k, 1), str_at(k, 2))
            else {
                return Err(format!("bad kind entry {k}"));
            };
            kinds.insert((av, kind), msg);
        }
        let mut any_version_kinds = HashMap::new();
        for k in doc["anyVersionKinds"]
            .as_array()
            .ok_or("no anyVersionKinds")?
        {
            let (Some(kind), Some(msg)) = (str_at(k, 0), str_at(k, 1)) else {
                return Err(format!("bad anyVersionKinds entry {k}"));
            };
            any_version_kinds.insert(kind, msg);
        }
        let mut messages = HashMap::new();
        for (name, m) in doc["messages"].as_object().ok_or("no messages")? {
            let repr = match m.get("repr").and_then(Value::as_str) {
                None => Repr::Object,
                Some("items") => Repr::Items,
                Some("time") => Repr::Time,
                Some("microTime") => Repr::MicroTime,
                Some("duration") => Repr::Duration,
                Some("quantity") => Repr::Quantity,
                Some("intOrString") => Repr::IntOrString,
                Some("rawJson") => Repr::RawJson,
                Some(other) => return Err(format!("{name}: unknown repr {other}")),
            };
            let mut fields = HashMap::new();
            let mut order = Vec::new();
            if let Some(fs) = m.get("fields").and_then(Value::as_object) {
                for (number, f) in fs {
                    let number: u32 = number
                        .parse()
                        .map_err(|_| format!("{name}: bad field number {number}"))?;
                    let text = |key: &str| f.get(key).and_then(Value::as_str);
                    let flag = |key: &str| f.get(key).and_then(Value::as_bool).unwrap_or(false);
                    let ty = |s: &str| match Scalar::parse(s) {
                        Some(sc) => Type::Scalar(sc),
                        None => Type::Message(s.to_owned()),
                    };
                    let type_name =
                        text("type").ok_or_else(|| format!("{name}.{number}: no type"))?;
                    let kind = if type_name == "map" {
                        let key = text("key").and_then(Scalar::parse);
                        let value = text("value");
                        match (key, value) {
                            (Some(k), Some(v)) => Kind::Map(k, ty(v)),
                            _ => return Err(format!("{name}.{number}: bad map")),
                        }
                    } else {
                        Kind::Single(ty(type_name))
                    };
                    order.push(number);
                    fields.insert(
                        number,
                        Field {
                            name: text("name")
                                .ok_or_else(|| format!("{name}.{number}: no name"))?
                                .to_owned(),
                            kind,
                            repeated: flag("repeated"),
                            omit_empty: flag("omitEmpty"),
                            inline: flag("inline"),
                        },
                    );
                }
            }
            messages.insert(
                name.clone(),
                Message {
                    repr,
                    fields,
                    order,
                },
            );
        }
        // every referenced message must exist, so decoding never meets a dangling name
        for (name, m) in &messages {
            for f in m.fields.values() {
                let target = match &f.kind {
                    Kind::Single(Type::Message(t)) | Kind::Map(_, Type::Message(t)) => t,
                    _ => continue,
                };
                if !messages.contains_key(target) {
                    return Err(format!(
                        "{name}.{} refers to unknown message {target}",
                        f.name
                    ));
                }
            }
        }
        for target in kinds.values().chain(any_version_kinds.values()) {
            if !messages.contains_key(target) {
                return Err(format!("kind table refers to unknown message {target}"));
            }
        }
        Ok(Schema {
            kinds,
            any_version_kinds,
            messages,
        })
    }
}

// ------------------------------------------------------------------ decoding

/// Values gathered for one field while reading a message.
enum Slot {
    One(Value),
    Many(Vec<Value>),
    Entries(Map<String, Value>),
}

struct Decoder {
    schema: &'static Schema,
}

impl Decoder {
    fn message(&self, name: &str) -> Result<&'static Message, ProtobufError> {
        self.schema
            .messages
            .get(name)
            .ok_or_else(|| ProtobufError::Schema(format!("unknown message {name}")))
    }

    /// Decode `data` as message `name` into its JSON value.
    fn value(
        &self,
        name: &str,
        data: &[u8],
        path: &str,
        depth: usize,
    ) -> Result<Value, ProtobufError> {
        if depth > MAX_DEPTH {
            return Err(ProtobufError::TooDeep);
        }
        let message = self.message(name)?;
        let bad = |reason: String| ProtobufError::Malformed {
            path: path.to_owned(),
            reason,
        };
        match message.repr {
            Repr::Object => Ok(Value::Object(self.object(name, data, path, depth)?)),
            Repr::Items => {
                let mut obj = self.object(name, data, path, depth)?;
                Ok(obj
                    .remove("items")
                    .unwrap_or_else(|| Value::Array(Vec::new())))
            }
            Repr::Time | Repr::MicroTime => {
                if data.is_empty() {
                    // Go writes a zero time as an empty message and reads it back as the zero time
                    return Ok(Value::Null);
                }
                let f = raw_fields(data).map_err(|e| bad(e.into()))?;
                let seconds = f.varint(1).map_err(|e| bad(e.into()))?.unwrap_or(0) as i64;
                let nanos = f.varint(2).map_err(|e| bad(e.into()))?.unwrap_or(0) as i64 as i32;
                format_time(seconds, nanos, message.repr == Repr::MicroTime)
                    .map_err(|e| bad(e.into()))
            }
            Repr::Duration => {
                let f = raw_fields(data).map_err(|e| bad(e.into()))?;
                let nanos = f.varint(1).map_err(|e| bad(e.into()))?.unwrap_or(0) as i64;
                Ok(Value::String(go_duration(nanos)))
            }
            Repr::Quantity => {
                let f = raw_fields(data).map_err(|e| bad(e.into()))?;
                match f.bytes(1).map_err(|e| bad(e.into()))? {
                    Some(b) => Ok(Value::String(utf8(b).map_err(|e| bad(e.into()))?)),
                    None => Ok(Value::String("0".into())),
                }
            }
            Repr::IntOrString => {
                let f = raw_fields(data).map_err(|e| bad(e.into()))?;
                match f.varint(1).map_err(|e| bad(e.into()))?.unwrap_or(0) {
                    0 => {
                        let v = f.varint(2).map_err(|e| bad(e.into()))?.unwrap_or(0) as i64 as i32;
                        Ok(Value::from(v))
                    }
                    1 => {
                        let s = f.bytes(3).map_err(|e| bad(e.into()))?.unwrap_or_default();
                        Ok(Value::String(utf8(s).map_err(|e| bad(e.into()))?))
                    }
                    t => Err(bad(format!("IntOrString has unknown type {t}"))),
                }
            }
            Repr::RawJson => {
                let f = raw_fields(data).map_err(|e| bad(e.into()))?;
                match f.bytes(1).map_err(|e| bad(e.into()))? {
                    None | Some([]) => Ok(Value::Null),
                    Some(raw) => serde_json::from_slice(raw)
                        .map_err(|e| bad(format!("embedded object is not JSON ({e}); send JSON"))),
                }
            }
        }
    }

    /// Decode `data` as message `name` (an object-shaped message) into its JSON fields.
    fn object(
        &self,
        name: &str,
        data: &[u8],
        path: &str,
        depth: usize,
    ) -> Result<Map<String, Value>, ProtobufError> {
        if depth > MAX_DEPTH {
            return Err(ProtobufError::TooDeep);
        }
        let message = self.message(name)?;
        let mut slots: HashMap<u32, Slot> = HashMap::new();
        let mut r = Reader::new(data);
        while !r.done() {
            let (number, wire_type) = r.key().map_err(|e| malformed(path, e))?;
            let Some(field) = message.fields.get(&number) else {
                r.skip(wire_type).map_err(|e| malformed(path, e))?;
                continue;
            };
            let fpath = format!("{path}.{}", field.name);
            match &field.kind {
                Kind::Map(key_type, value_type) => {
                    if wire_type != WIRE_LEN {
                        return Err(malformed(&fpath, "wrong wire type for a map entry"));
                    }
                    let entry = r.len_delimited().map_err(|e| malformed(&fpath, e))?;
                    let (k, v) = self.map_entry(*key_type, value_type, entry, &fpath, depth)?;
                    match slots
                        .entry(number)
                        .or_insert_with(|| Slot::Entries(Map::new()))
                    {
                        Slot::Entries(m) => {
                            m.insert(k, v);
                        }
                        _ => return Err(shape_conflict(&fpath)),
                    }
                }
                Kind::Single(ty) => {
                    let mut values = Vec::new();
                    match ty {
                        Type::Scalar(sc) if wire_type == WIRE_LEN && sc.wire_type() != WIRE_LEN => {
                            if !field.repeated {
                                return Err(malformed(
                                    &fpath,
                                    "packed encoding for a singular field",
                                ));
                            }
                            let mut packed =
                                Reader::new(r.len_delimited().map_err(|e| malformed(&fpath, e))?);
                            while !packed.done() {
                                values.push(
                                    scalar(*sc, &mut packed).map_err(|e| malformed(&fpath, e))?,
                                );
                            }
                        }
                        Type::Scalar(sc) => {
                            if wire_type != sc.wire_type() {
                                return Err(malformed(&fpath, "wrong wire type for the field"));
                            }
                            values.push(scalar(*sc, &mut r).map_err(|e| malformed(&fpath, e))?);
                        }
                        Type::Message(target) => {
                            if wire_type != WIRE_LEN {
                                return Err(malformed(
                                    &fpath,
                                    "wrong wire type for a message field",
                                ));
                            }
                            let bytes = r.len_delimited().map_err(|e| malformed(&fpath, e))?;
                            values.push(self.value(target, bytes, &fpath, depth + 1)?);
                        }
                    }
                    if field.repeated {
                        match slots
                            .entry(number)
                            .or_insert_with(|| Slot::Many(Vec::new()))
                        {
                            Slot::Many(list) => list.extend(values),
                            _ => return Err(shape_conflict(&fpath)),
                        }
                    } else if let Some(v) = values.pop() {
                        // a singular field seen twice: the last scalar wins, messages merge
                        match (slots.remove(&number), v) {
                            (Some(Slot::One(Value::Object(mut old))), Value::Object(new)) => {
                                old.extend(new);
                                slots.insert(number, Slot::One(Value::Object(old)));
                            }
                            (_, v) => {
                                slots.insert(number, Slot::One(v));
                            }
                        }
                    }
                }
            }
        }

        let mut out = Map::new();
        for number in &message.order {
            let (Some(field), Some(slot)) = (message.fields.get(number), slots.remove(number))
            else {
                continue;
            };
            let value = match slot {
                Slot::One(v) => v,
                Slot::Many(list) => Value::Array(list),
                Slot::Entries(m) => Value::Object(m),
            };
            if field.inline {
                match value {
                    Value::Object(inner) => out.extend(inner),
                    _ => {
                        return Err(malformed(
                            &format!("{path}.{}", field.name),
                            "inline field is not an object",
                        ))
                    }
                }
                continue;
            }
            if field.omit_empty && is_zero(&value) {
                continue;
            }
            out.insert(field.name.clone(), value);
        }
        Ok(out)
    }

    fn map_entry(
        &self,
        key_type: Scalar,
        value_type: &Type,
        entry: &[u8],
        path: &str,
        depth: usize,
    ) -> Result<(String, Value), ProtobufError> {
        let mut key = None;
        let mut value = None;
        let mut r = Reader::new(entry);
        while !r.done() {
            let (number, wire_type) = r.key().map_err(|e| malformed(path, e))?;
            match number {
                1 => {
                    if wire_type != key_type.wire_type() {
                        return Err(malformed(path, "wrong wire type for a map key"));
                    }
                    key = Some(scalar(key_type, &mut r).map_err(|e| malformed(path, e))?);
                }
                2 => match value_type {
                    Type::Scalar(sc) => {
                        if wire_type != sc.wire_type() {
                            return Err(malformed(path, "wrong wire type for a map value"));
                        }
                        value = Some(scalar(*sc, &mut r).map_err(|e| malformed(path, e))?);
                    }
                    Type::Message(target) => {
                        if wire_type != WIRE_LEN {
                            return Err(malformed(path, "wrong wire type for a map value"));
                        }
                        let bytes = r.len_delimited().map_err(|e| malformed(path, e))?;
                        value = Some(self.value(target, bytes, path, depth + 1)?);
                    }
                },
                _ => r.skip(wire_type).map_err(|e| malformed(path, e))?,
            }
        }
        let key = match key.unwrap_or_else(|| key_type.zero()) {
            Value::String(s) => s,
            other => other.to_string(),
        };
        let value = match (value, value_type) {
            (Some(v), _) => v,
            (None, Type::Scalar(sc)) => sc.zero(),
            (None, Type::Message(target)) => self.value(target, &[], path, depth + 1)?,
        };
        Ok((key, value))
    }
}

fn malformed(path: &str, reason: &str) -> ProtobufError {
    ProtobufError::Malformed {
        path: path.to_owned(),
        reason: reason.to_owned(),
    }
}

fn shape_conflict(path: &str) -> ProtobufError {
    malformed(path, "field decoded with two different shapes")
}

/// Go's `omitempty` notion of an empty scalar.
fn is_zero(v: &Value) -> bool {
    match v {
        Value::String(s) => s.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::Null => true,
        _ => false,
    }
}

/// Read one scalar of type `sc` at the reader's position.
fn scalar(sc: Scalar, r: &mut Reader<'_>) -> Result<Value, &'static str> {
    Ok(match sc {
        Scalar::String => Value::String(utf8(r.len_delimited()?)?),
        Scalar::Bytes => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(r.len_delimited()?))
        }
        Scalar::Bool => Value::Bool(r.varint()? != 0),
        // negative int32 values are sign-extended to 64 bits on the wire
        Scalar::Int32 | Scalar::Enum => Value::from(r.varint()? as i64 as i32),
        Scalar::Int64 => Value::from(r.varint()? as i64),
        Scalar::Uint32 => Value::from(r.varint()? as u32),
        Scalar::Uint64 => Value::from(r.varint()?),
        Scalar::Sint32 => {
            let v = r.varint()? as u32;
            Value::from(((v >> 1) as i32) ^ -((v & 1) as i32))
        }
        Scalar::Sint64 => {
            let v = r.varint()?;
            Value::from(((v >> 1) as i64) ^ -((v & 1) as i64))
        }
        Scalar::Fixed32 => Value::from(r.fixed32()?),
        Scalar::Sfixed32 => Value::from(r.fixed32()? as i32),
        Scalar::Fixed64 => Value::from(r.fixed64()?),
        Scalar::Sfixed64 => Value::from(r.fixed64()? as i64),
        Scalar::Float => float(f64::from(f32::from_bits(r.fixed32()?)))?,
        Scalar::Double => float(f64::from_bits(r.fixed64()?))?,
    })
}

fn float(f: f64) -> Result<Value, &'static str> {
    Number::from_f64(f)
        .map(Value::Number)
        .ok_or("non-finite number")
}

/// The last occurrence of each field of a small message, for the special types.
struct RawFields<'a> {
    fields: HashMap<u32, (u8, RawValue<'a>)>,
}

#[derive(Clone, Copy)]
enum RawValue<'a> {
    Int(u64),
    Bytes(&'a [u8]),
}

fn raw_fields(data: &[u8]) -> Result<RawFields<'_>, &'static str> {
    let mut fields = HashMap::new();
    let mut r = Reader::new(data);
    while !r.done() {
        let (number, wire_type) = r.key()?;
        let value = match wire_type {
            WIRE_VARINT => RawValue::Int(r.varint()?),
            WIRE_LEN => RawValue::Bytes(r.len_delimited()?),
            WIRE_FIXED64 => RawValue::Int(r.fixed64()?),
            WIRE_FIXED32 => RawValue::Int(u64::from(r.fixed32()?)),
            _ => return Err("unsupported wire type"),
        };
        fields.insert(number, (wire_type, value));
    }
    Ok(RawFields { fields })
}

impl<'a> RawFields<'a> {
    fn varint(&self, number: u32) -> Result<Option<u64>, &'static str> {
        match self.fields.get(&number) {
            None => Ok(None),
            Some((WIRE_VARINT, RawValue::Int(v))) => Ok(Some(*v)),
            Some(_) => Err("wrong wire type for an integer field"),
        }
    }

    fn bytes(&self, number: u32) -> Result<Option<&'a [u8]>, &'static str> {
        match self.fields.get(&number) {
            None => Ok(None),
            Some((WIRE_LEN, RawValue::Bytes(b))) => Ok(Some(b)),
            Some(_) => Err("wrong wire type for a bytes field"),
        }
    }
}

/// Seconds of Go's zero `time.Time` (0001-01-01T00:00:00Z) since the Unix epoch.
const GO_ZERO_TIME_SECONDS: i64 = -62_135_596_800;

/// RFC 3339 in UTC, as metav1.Time (whole seconds) or metav1.MicroTime (6 fractional digits).
fn format_time(seconds: i64, nanos: i32, micro: bool) -> Result<Value, &'static str> {
    if !(0..1_000_000_000).contains(&nanos) {
        return Err("timestamp nanos out of range");
    }
    if seconds == GO_ZERO_TIME_SECONDS && (nanos == 0 || !micro) {
        return Ok(Value::Null);
    }
    // metav1.Time keeps whole seconds only when read from protobuf
    let nanos = if micro { nanos as u32 } else { 0 };
    let t = chrono::DateTime::from_timestamp(seconds, nanos).ok_or("timestamp out of range")?;
    if !(0..=9999).contains(&t.year()) {
        return Err("timestamp year outside 0000-9999");
    }
    let text = if micro {
        t.format("%Y-%m-%dT%H:%M:%S%.6fZ")
    } else {
        t.format("%Y-%m-%dT%H:%M:%SZ")
    };
    Ok(Value::String(text.to_string()))
}

/// Format nanoseconds like Go's `time.Duration.String` ("1h0m0s", "1.5s", "300ms").
fn go_duration(d: i64) -> String {
    if d == 0 {
        return "0s".into();
    }
    let mut u = d.unsigned_abs();
    let mut out = String::new();
    if u < 1_000_000_000 {
        // below one second: the largest unit of ns, µs, ms that fits, with a fraction
        let (unit, prec) = match u {
            0..=999 => ("ns", 0),
            1_000..=999_999 => ("µs", 3),
            _ => ("ms", 6),
        };
        let (whole, frac) = split_frac(u, prec);
        out.push_str(&whole.to_string());
        out.push_str(&frac);
        out.push_str(unit);
    } else {
        let (secs, frac) = split_frac(u, 9);
        u = secs;
        let mut parts = format!("{}{}s", u % 60, frac);
        u /= 60;
        if u > 0 {
            parts = format!("{}m{}", u % 60, parts);
            u /= 60;
            if u > 0 {
                parts = format!("{u}h{parts}");
            }
        }
        out.push_str(&parts);
    }
    if d < 0 {
        out.insert(0, '-');
    }
    out
}

/// Split `v` into `v / 10^prec` and the fraction as ".ddd" without trailing zeros ("" if none).
fn split_frac(v: u64, prec: u32) -> (u64, String) {
    let scale = 10u64.pow(prec);
    let frac = v % scale;
    if frac == 0 {
        return (v / scale, String::new());
    }
    let digits = format!("{frac:0width$}", width = prec as usize);
    (v / scale, format!(".{}", digits.trim_end_matches('0')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A minimal protobuf writer for building test bodies.
    #[derive(Default, Clone)]
    struct Enc(Vec<u8>);

    impl Enc {
        fn new() -> Self {
            Enc::default()
        }

        fn raw_varint(&mut self, mut v: u64) {
            while v >= 0x80 {
                self.0.push((v as u8) | 0x80);
                v >>= 7;
            }
            self.0.push(v as u8);
        }

        fn key(&mut self, field: u32, wire_type: u8) {
            self.raw_varint((u64::from(field) << 3) | u64::from(wire_type));
        }

        fn varint(mut self, field: u32, v: u64) -> Self {
            self.key(field, WIRE_VARINT);
            self.raw_varint(v);
            self
        }

        fn int(self, field: u32, v: i64) -> Self {
            self.varint(field, v as u64)
        }

        fn bytes(mut self, field: u32, b: &[u8]) -> Self {
            self.key(field, WIRE_LEN);
            self.raw_varint(b.len() as u64);
            self.0.extend_from_slice(b);
            self
        }

        fn str(self, field: u32, s: &str) -> Self {
            self.bytes(field, s.as_bytes())
        }

        fn msg(self, field: u32, m: Enc) -> Self {
            self.bytes(field, &m.0)
        }

        fn entry(self, field: u32, k: &str, v: &str) -> Self {
            self.msg(field, Enc::new().str(1, k).str(2, v))
        }

        fn entry_bytes(self, field: u32, k: &str, v: &[u8]) -> Self {
            self.msg(field, Enc::new().str(1, k).bytes(2, v))
        }

        fn entry_msg(self, field: u32, k: &str, v: Enc) -> Self {
            self.msg(field, Enc::new().str(1, k).msg(2, v))
        }
    }

    fn envelope(api_version: &str, kind: &str, raw: Enc) -> Vec<u8> {
        let unknown = Enc::new()
            .msg(1, Enc::new().str(1, api_version).str(2, kind))
            .msg(2, raw)
            .str(3, "")
            .str(4, "");
        let mut body = MAGIC.to_vec();
        body.extend_from_slice(&unknown.0);
        body
    }

    /// ObjectMeta as Go's encoder writes it: every plain field present, even when empty.
    fn meta(name: &str, namespace: &str) -> Enc {
        Enc::new()
            .str(1, name)
            .str(2, "")
            .str(3, namespace)
            .str(4, "")
            .str(5, "")
            .str(6, "")
            .int(7, 0)
            .msg(8, Enc::new())
    }

    fn quantity(s: &str) -> Enc {
        Enc::new().str(1, s)
    }

    #[test]
    fn schema_table_loads_and_covers_the_kubectl_kinds() {
        let s = schema().expect("schema parses");
        for (av, kind) in [
            ("v1", "Namespace"),
            ("v1", "ConfigMap"),
            ("v1", "Secret"),
            ("v1", "Service"),
            ("v1", "ServiceAccount"),
            ("v1", "ResourceQuota"),
            ("apps/v1", "Deployment"),
            ("batch/v1", "Job"),
            ("batch/v1", "CronJob"),
            ("rbac.authorization.k8s.io/v1", "Role"),
            ("rbac.authorization.k8s.io/v1", "RoleBinding"),
            ("rbac.authorization.k8s.io/v1", "ClusterRole"),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
            ("scheduling.k8s.io/v1", "PriorityClass"),
            ("policy/v1", "PodDisruptionBudget"),
            ("policy/v1", "Eviction"),
            ("networking.k8s.io/v1", "Ingress"),
            ("authentication.k8s.io/v1", "TokenRequest"),
            ("authorization.k8s.io/v1", "SelfSubjectAccessReview"),
            ("coordination.k8s.io/v1", "Lease"),
            ("discovery.k8s.io/v1", "EndpointSlice"),
            ("autoscaling/v2", "HorizontalPodAutoscaler"),
            ("storage.k8s.io/v1", "StorageClass"),
        ] {
            assert!(
                s.kinds.contains_key(&(av.to_owned(), kind.to_owned())),
                "{av} {kind}"
            );
        }
        assert!(s.any_version_kinds.contains_key("DeleteOptions"));
        let spec = &s.messages["k8s.io.api.core.v1.PodSpec"];
        assert_eq!(spec.fields[&2].name, "containers");
        assert_eq!(
            s.messages["k8s.io.api.core.v1.PodStatus"].fields[&6].name,
            "podIP"
        );
        assert_eq!(
            s.messages["k8s.io.api.core.v1.AWSElasticBlockStoreVolumeSource"].fields[&1].name,
            "volumeID"
        );
        assert!(s.messages["k8s.io.api.core.v1.Volume"].fields[&2].inline);
    }

    #[test]
    fn namespace_drops_go_zero_values() {
        let raw = Enc::new()
            .msg(1, meta("x", ""))
            .msg(2, Enc::new())
            .msg(3, Enc::new().str(1, ""));
        let got = decode(&envelope("v1", "Namespace", raw)).unwrap();
        assert_eq!(
            got,
            json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": "x", "creationTimestamp": null},
                "spec": {},
                "status": {}
            })
        );
        // kind and apiVersion come first, as Go writes them
        let keys: Vec<_> = got.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys[..2], ["kind".to_string(), "apiVersion".to_string()]);
    }

    #[test]
    fn configmap_with_data_binary_data_and_labels() {
        let raw = Enc::new()
            .msg(
                1,
                meta("cm", "default")
                    .entry(11, "app", "web")
                    .entry(12, "note", "n")
                    .str(14, "f1")
                    .str(14, "f2"),
            )
            .entry(2, "a", "1")
            .entry(2, "b", "")
            .entry_bytes(3, "bin", &[0, 1, 2, 255])
            .varint(4, 0);
        let got = decode(&envelope("v1", "ConfigMap", raw)).unwrap();
        assert_eq!(
            got,
            json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": "cm",
                    "namespace": "default",
                    "creationTimestamp": null,
                    "labels": {"app": "web"},
                    "annotations": {"note": "n"},
                    "finalizers": ["f1", "f2"]
                },
                "data": {"a": "1", "b": ""},
                "binaryData": {"bin": "AAEC/w=="},
                "immutable": false
            })
        );
    }

    #[test]
    fn deployment_with_zero_replicas_template_and_timestamp() {
        let selector = || Enc::new().entry(1, "app", "d");
        let container = Enc::new()
            .str(1, "busybox")
            .str(2, "busybox:1.36")
            .msg(
                6,
                Enc::new()
                    .str(1, "")
                    .int(2, 0)
                    .int(3, 80)
                    .str(4, "TCP")
                    .str(5, ""),
            )
            .msg(
                8,
                Enc::new().entry_msg(1, "cpu", quantity("500m")).entry_msg(
                    2,
                    "memory",
                    quantity("64Mi"),
                ),
            )
            .str(13, "")
            .str(14, "IfNotPresent")
            .varint(16, 0);
        let pod_spec = Enc::new()
            .msg(2, container)
            .str(3, "")
            .str(8, "")
            .varint(11, 0);
        let template = Enc::new()
            .msg(
                1,
                Enc::new()
                    .str(1, "")
                    .entry(11, "app", "d")
                    .msg(8, Enc::new()),
            )
            .msg(2, pod_spec);
        let spec = Enc::new()
            .int(1, 0)
            .msg(2, selector())
            .msg(3, template)
            .msg(4, Enc::new().str(1, ""))
            .int(5, 0)
            .varint(7, 0);
        let raw = Enc::new()
            .msg(
                1,
                meta("d", "ns1")
                    .msg(8, Enc::new().int(1, 1_704_164_645).int(2, 123))
                    .int(10, 0),
            )
            .msg(2, spec)
            .msg(3, Enc::new().int(1, 0).int(2, 0));
        let got = decode(&envelope("apps/v1", "Deployment", raw)).unwrap();
        assert_eq!(
            got,
            json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {
                    "name": "d",
                    "namespace": "ns1",
                    "creationTimestamp": "2024-01-02T03:04:05Z",
                    "deletionGracePeriodSeconds": 0
                },
                "spec": {
                    "replicas": 0,
                    "selector": {"matchLabels": {"app": "d"}},
                    "template": {
                        "metadata": {"labels": {"app": "d"}, "creationTimestamp": null},
                        "spec": {
                            "containers": [{
                                "name": "busybox",
                                "image": "busybox:1.36",
                                "ports": [{"containerPort": 80, "protocol": "TCP"}],
                                "resources": {
                                    "limits": {"cpu": "500m"},
                                    "requests": {"memory": "64Mi"}
                                },
                                "imagePullPolicy": "IfNotPresent"
                            }]
                        }
                    },
                    "strategy": {}
                },
                "status": {}
            })
        );
    }

    #[test]
    fn service_with_int_or_string_target_ports() {
        let port = |name: &str, port: i64, target: Enc| {
            Enc::new()
                .str(1, name)
                .str(2, "TCP")
                .int(3, port)
                .msg(4, target)
                .int(5, 0)
        };
        let spec = Enc::new()
            .msg(
                1,
                port("http", 80, Enc::new().int(1, 0).int(2, 8080).str(3, "")),
            )
            .msg(
                1,
                port("named", 81, Enc::new().int(1, 1).int(2, 0).str(3, "web")),
            )
            .entry(2, "app", "web")
            .str(3, "10.0.0.1")
            .str(4, "ClusterIP")
            .str(18, "10.0.0.1")
            .str(18, "fd00::1");
        let raw = Enc::new()
            .msg(1, meta("svc", ""))
            .msg(2, spec)
            .msg(3, Enc::new().msg(1, Enc::new()));
        let got = decode(&envelope("v1", "Service", raw)).unwrap();
        assert_eq!(
            got,
            json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "svc", "creationTimestamp": null},
                "spec": {
                    "ports": [
                        {"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080},
                        {"name": "named", "protocol": "TCP", "port": 81, "targetPort": "web"}
                    ],
                    "selector": {"app": "web"},
                    "clusterIP": "10.0.0.1",
                    "clusterIPs": ["10.0.0.1", "fd00::1"],
                    "type": "ClusterIP"
                },
                "status": {"loadBalancer": {}}
            })
        );
    }

    #[test]
    fn secret_bytes_are_base64() {
        let raw = Enc::new()
            .msg(1, meta("s", ""))
            .entry_bytes(2, "a", b"b")
            .entry_bytes(2, "empty", b"")
            .str(3, "Opaque")
            .entry(4, "plain", "text");
        let got = decode(&envelope("v1", "Secret", raw)).unwrap();
        assert_eq!(
            got,
            json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "s", "creationTimestamp": null},
                "data": {"a": "Yg==", "empty": ""},
                "type": "Opaque",
                "stringData": {"plain": "text"}
            })
        );
    }

    #[test]
    fn inline_fields_merge_into_their_parent() {
        let env = Enc::new().str(1, "K").msg(
            3,
            Enc::new().msg(4, Enc::new().msg(1, Enc::new().str(1, "sec")).str(2, "key")),
        );
        let volume = Enc::new().str(1, "cfg").msg(
            2,
            Enc::new().msg(19, Enc::new().msg(1, Enc::new().str(1, "cm")).int(3, 420)),
        );
        let probe = Enc::new()
            .msg(1, Enc::new().msg(1, Enc::new().str(1, "true")))
            .int(2, 0);
        let container = Enc::new().str(1, "c").msg(7, env).msg(10, probe);
        let pod = Enc::new()
            .msg(1, meta("p", ""))
            .msg(2, Enc::new().msg(1, volume).msg(2, container));
        let got = decode(&envelope("v1", "Pod", pod)).unwrap();
        assert_eq!(
            got["spec"],
            json!({
                "volumes": [{"name": "cfg", "configMap": {"name": "cm", "defaultMode": 420}}],
                "containers": [{
                    "name": "c",
                    "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "key"}}}],
                    // initialDelaySeconds is a plain int32 with omitempty: Go drops its 0
                    "livenessProbe": {"exec": {"command": ["true"]}}
                }]
            })
        );
    }

    #[test]
    fn packed_and_unpacked_repeated_scalars() {
        let mut packed = Vec::new();
        for v in [1000u64, 2000, 3] {
            let mut e = Enc::new();
            e.raw_varint(v);
            packed.extend_from_slice(&e.0);
        }
        let unpacked = Enc::new().int(4, 1000).int(4, 2000).int(4, 3);
        let packed = Enc::new().bytes(4, &packed);
        for sc in [unpacked, packed] {
            let pod = Enc::new().msg(2, Enc::new().msg(14, sc));
            let got = decode(&envelope("v1", "Pod", pod)).unwrap();
            assert_eq!(
                got["spec"]["securityContext"]["supplementalGroups"],
                json!([1000, 2000, 3])
            );
        }
    }

    #[test]
    fn negative_numbers_and_special_types() {
        // Event: count int32 (negative on purpose), eventTime MicroTime, series.lastObservedTime
        let raw = Enc::new()
            .msg(1, meta("e", ""))
            .int(8, -5)
            .msg(10, Enc::new().int(1, 1_704_164_645).int(2, 123_456_789));
        let got = decode(&envelope("v1", "Event", raw)).unwrap();
        assert_eq!(got["count"], json!(-5));
        assert_eq!(got["eventTime"], json!("2024-01-02T03:04:05.123456Z"));

        // Duration inside a Lease? No: HPA behavior has none; use the generic path directly.
        let d = Decoder {
            schema: schema().unwrap(),
        };
        let dur = Enc::new().int(1, 3_600_000_000_000);
        assert_eq!(
            d.value(
                "k8s.io.apimachinery.pkg.apis.meta.v1.Duration",
                &dur.0,
                "x",
                0
            )
            .unwrap(),
            json!("1h0m0s")
        );
        let raw_ext = Enc::new().str(1, r#"{"a":[1,2]}"#);
        assert_eq!(
            d.value(
                "k8s.io.apimachinery.pkg.runtime.RawExtension",
                &raw_ext.0,
                "x",
                0
            )
            .unwrap(),
            json!({"a": [1, 2]})
        );
        let not_json = Enc::new().bytes(1, &[0x0a, 0x01]);
        assert!(d
            .value(
                "k8s.io.apimachinery.pkg.runtime.RawExtension",
                &not_json.0,
                "x",
                0
            )
            .is_err());
    }

    #[test]
    fn go_duration_strings() {
        for (ns, want) in [
            (0, "0s"),
            (1, "1ns"),
            (1_500, "1.5µs"),
            (300_000_000, "300ms"),
            (1_500_000_000, "1.5s"),
            (90_000_000_000, "1m30s"),
            (3_600_000_000_000, "1h0m0s"),
            (3_723_000_000_005, "1h2m3.000000005s"),
            (-2_000_000_000, "-2s"),
            (i64::MIN, "-2562047h47m16.854775808s"),
        ] {
            assert_eq!(go_duration(ns), want, "{ns}");
        }
    }

    #[test]
    fn token_request_and_access_review() {
        let tr = Enc::new()
            .msg(1, meta("", ""))
            .msg(2, Enc::new().str(1, "api").int(4, 3600));
        let got = decode(&envelope("authentication.k8s.io/v1", "TokenRequest", tr)).unwrap();
        assert_eq!(
            got["spec"],
            json!({"audiences": ["api"], "expirationSeconds": 3600})
        );

        let attrs = Enc::new()
            .str(2, "get")
            .str(3, "")
            .str(5, "pods")
            .str(7, "");
        let ssar = Enc::new()
            .msg(1, meta("", ""))
            .msg(2, Enc::new().msg(1, attrs));
        let got = decode(&envelope(
            "authorization.k8s.io/v1",
            "SelfSubjectAccessReview",
            ssar,
        ))
        .unwrap();
        assert_eq!(
            got["spec"],
            json!({"resourceAttributes": {"verb": "get", "resource": "pods"}})
        );

        let eviction = Enc::new()
            .msg(1, meta("p", "ns"))
            .msg(2, Enc::new().int(1, 0).msg(2, Enc::new().str(1, "uid-1")));
        let got = decode(&envelope("policy/v1", "Eviction", eviction)).unwrap();
        assert_eq!(
            got["deleteOptions"],
            json!({"gracePeriodSeconds": 0, "preconditions": {"uid": "uid-1"}})
        );
    }

    #[test]
    fn unknown_fields_are_skipped() {
        let raw = Enc::new()
            .msg(1, meta("x", "").int(999, 7).bytes(998, b"zz"))
            .int(77, 1)
            .bytes(78, &[1, 2, 3]);
        let mut body = envelope("v1", "Namespace", raw);
        // a fixed32 and a fixed64 unknown field inside the envelope too
        body.extend_from_slice(&[
            (9 << 3) | 5,
            1,
            2,
            3,
            4,
            (10 << 3) | 1,
            1,
            2,
            3,
            4,
            5,
            6,
            7,
            8,
        ]);
        let got = decode(&body).unwrap();
        assert_eq!(
            got["metadata"],
            json!({"name": "x", "creationTimestamp": null})
        );
    }

    #[test]
    fn errors() {
        // no magic
        let ns = envelope("v1", "Namespace", Enc::new().msg(1, meta("x", "")));
        assert!(matches!(decode(&ns[4..]), Err(ProtobufError::MissingMagic)));
        assert!(matches!(
            decode(b"{\"kind\":\"Namespace\"}"),
            Err(ProtobufError::MissingMagic)
        ));
        assert!(matches!(decode(b""), Err(ProtobufError::MissingMagic)));

        // unsupported kind
        let err = decode(&envelope("example.com/v1", "Widget", Enc::new())).unwrap_err();
        assert_eq!(
            err.to_string(),
            "protobuf is not supported for example.com/v1 Widget; send JSON"
        );

        // missing type meta
        let mut body = MAGIC.to_vec();
        body.extend_from_slice(&Enc::new().bytes(2, b"").0);
        assert!(matches!(decode(&body), Err(ProtobufError::MissingTypeMeta)));

        // compressed content
        let mut body = MAGIC.to_vec();
        body.extend_from_slice(
            &Enc::new()
                .msg(1, Enc::new().str(1, "v1").str(2, "Namespace"))
                .str(3, "gzip")
                .0,
        );
        assert!(matches!(
            decode(&body),
            Err(ProtobufError::UnsupportedEncoding(_))
        ));

        let malformed = |raw: Vec<u8>| {
            let mut body = MAGIC.to_vec();
            body.extend_from_slice(
                &Enc::new()
                    .msg(1, Enc::new().str(1, "v1").str(2, "Namespace"))
                    .bytes(2, &raw)
                    .0,
            );
            decode(&body)
        };
        // truncated varint
        assert!(matches!(
            malformed(vec![0x0a, 0x80]),
            Err(ProtobufError::Malformed { .. })
        ));
        // length past the end
        assert!(matches!(
            malformed(vec![0x0a, 0x05, 0x0a]),
            Err(ProtobufError::Malformed { .. })
        ));
        // huge length
        let mut huge = vec![0x0a];
        huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert!(matches!(
            malformed(huge),
            Err(ProtobufError::Malformed { .. })
        ));
        // wrong wire type: metadata as a varint
        assert!(matches!(
            malformed(vec![0x08, 0x01]),
            Err(ProtobufError::Malformed { .. })
        ));
        // wrong wire type: name (string) as a varint inside metadata
        let err = malformed(Enc::new().msg(1, Enc::new().varint(1, 3)).0).unwrap_err();
        assert!(err.to_string().contains("Namespace.metadata.name"), "{err}");
        // group wire type
        assert!(matches!(
            malformed(vec![0x0b]),
            Err(ProtobufError::Malformed { .. })
        ));
        // field number zero
        assert!(matches!(
            malformed(vec![0x00, 0x00]),
            Err(ProtobufError::Malformed { .. })
        ));
        // invalid UTF-8 in a string
        assert!(malformed(Enc::new().msg(1, Enc::new().bytes(1, &[0xff, 0xfe])).0).is_err());
        // bad IntOrString type
        let svc = Enc::new().msg(
            2,
            Enc::new().msg(1, Enc::new().msg(4, Enc::new().int(1, 7))),
        );
        assert!(decode(&envelope("v1", "Service", svc)).is_err());
        // out-of-range timestamp
        let ns = Enc::new().msg(1, Enc::new().msg(8, Enc::new().int(1, i64::MAX)));
        assert!(decode(&envelope("v1", "Namespace", ns)).is_err());
        // truncated envelope
        assert!(matches!(
            decode(b"k8s\x00\x0a\x10"),
            Err(ProtobufError::Malformed { .. })
        ));
    }

    /// Cheap fuzzing: every truncation and many byte flips of real bodies must not panic.
    #[test]
    fn mangled_bodies_never_panic() {
        let mut bodies = vec![
            envelope(
                "v1",
                "Namespace",
                Enc::new()
                    .msg(1, meta("x", ""))
                    .msg(3, Enc::new().str(1, "")),
            ),
            envelope(
                "v1",
                "Secret",
                Enc::new()
                    .msg(1, meta("s", ""))
                    .entry_bytes(2, "a", b"b")
                    .str(3, "Opaque"),
            ),
        ];
        for (_, body, _) in FIXTURES {
            bodies.push(body.to_vec());
        }
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for body in &bodies {
            for cut in 0..body.len() {
                let _ = decode(&body[..cut]);
            }
            for _ in 0..2000 {
                let mut b = body.clone();
                for _ in 0..3 {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let i = (seed as usize) % b.len();
                    b[i] = (seed >> 32) as u8;
                }
                let _ = decode(&b);
            }
        }
    }

    /// Request bodies captured from kubectl v1.32 talking to a stub HTTPS server, with the JSON
    /// that `kubectl ... --dry-run=client -o json` prints for the same command (Go's own JSON
    /// encoding of the object; the token and can-i requests have no dry run and were checked
    /// by hand).
    #[allow(clippy::type_complexity)]
    const FIXTURES: &[(&str, &[u8], &str)] = &[
        (
            // kubectl create namespace x
            "kubectl-create-namespace.pb",
            include_bytes!("testdata/kubectl-create-namespace.pb"),
            r#"{"kind":"Namespace","apiVersion":"v1","metadata":{"name":"x","creationTimestamp":null},"spec":{},"status":{}}"#,
        ),
        (
            // kubectl create deployment d --image=busybox:1.36 --port=80 --replicas=0
            "kubectl-create-deployment.pb",
            include_bytes!("testdata/kubectl-create-deployment.pb"),
            r#"{"kind":"Deployment","apiVersion":"apps/v1","metadata":{"name":"d","creationTimestamp":null,"labels":{"app":"d"}},"spec":{"replicas":0,"selector":{"matchLabels":{"app":"d"}},"template":{"metadata":{"creationTimestamp":null,"labels":{"app":"d"}},"spec":{"containers":[{"name":"busybox","image":"busybox:1.36","ports":[{"containerPort":80}],"resources":{}}]}},"strategy":{}},"status":{}}"#,
        ),
        (
            // kubectl create secret generic s --from-literal=a=b
            "kubectl-create-secret-generic.pb",
            include_bytes!("testdata/kubectl-create-secret-generic.pb"),
            r#"{"kind":"Secret","apiVersion":"v1","metadata":{"name":"s","creationTimestamp":null},"data":{"a":"Yg=="}}"#,
        ),
        (
            // kubectl create configmap cm --from-literal=k=v --from-literal=e=
            "kubectl-create-configmap.pb",
            include_bytes!("testdata/kubectl-create-configmap.pb"),
            r#"{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"cm","creationTimestamp":null},"data":{"e":"","k":"v"}}"#,
        ),
        (
            // kubectl create service nodeport np --tcp=8080:http
            "kubectl-create-service-nodeport.pb",
            include_bytes!("testdata/kubectl-create-service-nodeport.pb"),
            r#"{"kind":"Service","apiVersion":"v1","metadata":{"name":"np","creationTimestamp":null,"labels":{"app":"np"}},"spec":{"ports":[{"name":"8080-http","protocol":"TCP","port":8080,"targetPort":"http"}],"selector":{"app":"np"},"type":"NodePort"},"status":{"loadBalancer":{}}}"#,
        ),
        (
            // kubectl create rolebinding rb --role=r --user=alice --serviceaccount=default:sa
            "kubectl-create-rolebinding.pb",
            include_bytes!("testdata/kubectl-create-rolebinding.pb"),
            r#"{"kind":"RoleBinding","apiVersion":"rbac.authorization.k8s.io/v1","metadata":{"name":"rb","creationTimestamp":null},"subjects":[{"kind":"User","apiGroup":"rbac.authorization.k8s.io","name":"alice"},{"kind":"ServiceAccount","name":"sa","namespace":"default"}],"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"Role","name":"r"}}"#,
        ),
        (
            // kubectl create quota q --hard=pods=10,requests.cpu=1
            "kubectl-create-quota.pb",
            include_bytes!("testdata/kubectl-create-quota.pb"),
            r#"{"kind":"ResourceQuota","apiVersion":"v1","metadata":{"name":"q","creationTimestamp":null},"spec":{"hard":{"pods":"10","requests.cpu":"1"}},"status":{}}"#,
        ),
        (
            // kubectl create priorityclass pc --value=1000 --description=hi
            "kubectl-create-priorityclass.pb",
            include_bytes!("testdata/kubectl-create-priorityclass.pb"),
            r#"{"kind":"PriorityClass","apiVersion":"scheduling.k8s.io/v1","metadata":{"name":"pc","creationTimestamp":null},"value":1000,"description":"hi","preemptionPolicy":"PreemptLowerPriority"}"#,
        ),
        (
            // kubectl create poddisruptionbudget pdb --selector=app=x --min-available=1
            "kubectl-create-poddisruptionbudget.pb",
            include_bytes!("testdata/kubectl-create-poddisruptionbudget.pb"),
            r#"{"kind":"PodDisruptionBudget","apiVersion":"policy/v1","metadata":{"name":"pdb","creationTimestamp":null},"spec":{"minAvailable":1,"selector":{"matchLabels":{"app":"x"}}},"status":{"disruptionsAllowed":0,"currentHealthy":0,"desiredHealthy":0,"expectedPods":0}}"#,
        ),
        (
            // kubectl create ingress ing --rule=foo.com/bar=svc1:8080
            "kubectl-create-ingress.pb",
            include_bytes!("testdata/kubectl-create-ingress.pb"),
            r#"{"kind":"Ingress","apiVersion":"networking.k8s.io/v1","metadata":{"name":"ing","creationTimestamp":null},"spec":{"rules":[{"host":"foo.com","http":{"paths":[{"path":"/bar","pathType":"Exact","backend":{"service":{"name":"svc1","port":{"number":8080}}}}]}}]},"status":{"loadBalancer":{}}}"#,
        ),
        (
            // kubectl create cronjob cj --image=busybox --schedule='*/5 * * * *' -- date
            "kubectl-create-cronjob.pb",
            include_bytes!("testdata/kubectl-create-cronjob.pb"),
            r#"{"kind":"CronJob","apiVersion":"batch/v1","metadata":{"name":"cj","creationTimestamp":null},"spec":{"schedule":"*/5 * * * *","jobTemplate":{"metadata":{"name":"cj","creationTimestamp":null},"spec":{"template":{"metadata":{"creationTimestamp":null},"spec":{"containers":[{"name":"cj","image":"busybox","command":["date"],"resources":{}}],"restartPolicy":"OnFailure"}}}}},"status":{}}"#,
        ),
        (
            // kubectl create token sa --duration=1h --audience=api
            "kubectl-create-token.pb",
            include_bytes!("testdata/kubectl-create-token.pb"),
            r#"{"kind":"TokenRequest","apiVersion":"authentication.k8s.io/v1","metadata":{"creationTimestamp":null},"spec":{"audiences":["api"],"expirationSeconds":3600},"status":{"token":"","expirationTimestamp":null}}"#,
        ),
        (
            // kubectl auth can-i get pods
            "kubectl-auth-can-i.pb",
            include_bytes!("testdata/kubectl-auth-can-i.pb"),
            r#"{"kind":"SelfSubjectAccessReview","apiVersion":"authorization.k8s.io/v1","metadata":{"creationTimestamp":null},"spec":{"resourceAttributes":{"namespace":"default","verb":"get","resource":"pods"}},"status":{"allowed":false}}"#,
        ),
    ];

    #[test]
    fn kubectl_fixtures_decode_to_kubectls_own_json() {
        for (name, body, want) in FIXTURES {
            let got = decode(body).unwrap_or_else(|e| panic!("{name}: {e}"));
            // compare text, so key order (Go's struct order) is checked too
            assert_eq!(serde_json::to_string(&got).unwrap(), *want, "{name}");
        }
    }
}
