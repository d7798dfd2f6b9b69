//! Kubernetes label selectors (`labelSelector`, metav1.LabelSelector) and field selectors (`fieldSelector`).

use std::borrow::Cow;

use serde_json::{Map, Value};

/// Error produced while parsing or checking a label or field selector; the message suits a 400 Status.
#[derive(Debug, thiserror::Error)]
pub enum SelectorError {
    /// A single label selector requirement is malformed or fails key/value validation.
    #[error("unable to parse requirement: {0}")]
    Requirement(String),
    /// The label selector string is malformed between requirements.
    #[error("{0}")]
    Syntax(String),
    /// A metav1.LabelSelector JSON object is malformed or invalid.
    #[error("invalid label selector: {0}")]
    InvalidObject(String),
    /// A field selector term has no usable operator or field (selector, term).
    #[error("invalid selector: '{0}'; can't understand '{1}'")]
    FieldTerm(String, String),
    /// A field selector value has a bad escape sequence or an unescaped special character.
    #[error("invalid field selector: {0}")]
    FieldValue(String),
    /// The field selector names a field the resource kind does not support.
    #[error("field label not supported: {0}")]
    UnsupportedField(String),
}

// ---------------------------------------------------------------------------
// Label selectors
// ---------------------------------------------------------------------------

/// Operators a label requirement can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LabelOp {
    Equals,
    DoubleEquals,
    NotEquals,
    In,
    NotIn,
    Exists,
    DoesNotExist,
    GreaterThan,
    LessThan,
}

/// One `key op values` clause; all clauses of a selector are ANDed.
#[derive(Debug, Clone)]
struct LabelRequirement {
    key: String,
    op: LabelOp,
    /// Sorted and de-duplicated.
    values: Vec<String>,
    /// Parsed bound for `>` / `<`.
    bound: i64,
}

impl LabelRequirement {
    /// Build a requirement, enforcing the same constraints Kubernetes applies.
    fn new(key: &str, op: LabelOp, mut values: Vec<String>) -> Result<Self, String> {
        validate_label_key(key)?;
        let mut bound = 0;
        match op {
            LabelOp::In | LabelOp::NotIn => {
                if values.is_empty() {
                    return Err(
                        "values: for 'in', 'notin' operators, values set can't be empty".into(),
                    );
                }
            }
            LabelOp::Equals | LabelOp::DoubleEquals | LabelOp::NotEquals => {
                if values.len() != 1 {
                    return Err(
                        "values: exact-match compatibility requires one single value".into(),
                    );
                }
            }
            LabelOp::Exists | LabelOp::DoesNotExist => {
                if !values.is_empty() {
                    return Err(
                        "values: values set must be empty for exists and does not exist".into(),
                    );
                }
            }
            LabelOp::GreaterThan | LabelOp::LessThan => {
                if values.len() != 1 {
                    return Err(
                        "values: for 'Gt', 'Lt' operators, exactly one value is required".into(),
                    );
                }
                bound = values[0].parse::<i64>().map_err(|_| {
                    format!(
                        "values[0]: Invalid value: {:?}: for 'Gt', 'Lt' operators, the value must be an integer",
                        values[0]
                    )
                })?;
            }
        }
        for (i, v) in values.iter().enumerate() {
            validate_label_value(v)
                .map_err(|msg| format!("values[{i}]: Invalid value: {v:?}: {msg}"))?;
        }
        values.sort();
        values.dedup();
        Ok(LabelRequirement {
            key: key.to_string(),
            op,
            values,
            bound,
        })
    }

    /// Evaluate this clause against a label set (absent map = no labels).
    fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        let current = labels.and_then(|m| m.get(&self.key)).map(scalar_str);
        match self.op {
            LabelOp::Exists => current.is_some(),
            LabelOp::DoesNotExist => current.is_none(),
            LabelOp::Equals | LabelOp::DoubleEquals | LabelOp::In => {
                current.is_some_and(|v| self.has_value(&v))
            }
            // Absent labels satisfy negative set/equality clauses.
            LabelOp::NotEquals | LabelOp::NotIn => current.is_none_or(|v| !self.has_value(&v)),
            LabelOp::GreaterThan | LabelOp::LessThan => {
                let Some(n) = current.and_then(|v| v.parse::<i64>().ok()) else {
                    return false;
                };
                if self.op == LabelOp::GreaterThan {
                    n > self.bound
                } else {
                    n < self.bound
                }
            }
        }
    }

    fn has_value(&self, v: &str) -> bool {
        self.values.binary_search_by(|x| x.as_str().cmp(v)).is_ok()
    }
}

/// Parsed label selector (the `labelSelector` query parameter syntax).
#[derive(Debug, Clone, Default)]
pub struct LabelSelector {
    requirements: Vec<LabelRequirement>,
    /// Set for a null metav1.LabelSelector, which selects no objects at all.
    nothing: bool,
}

impl LabelSelector {
    /// Parse the string form, e.g. `app=web,tier in (fe,be),!legacy`; empty input selects everything.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut p = LabelParser {
            tokens: lex_label_selector(s),
            pos: 0,
        };
        let requirements = p.parse_all()?;
        Ok(LabelSelector {
            requirements,
            nothing: false,
        })
    }

    /// From a metav1.LabelSelector JSON object ({matchLabels, matchExpressions}); an empty object matches everything, as in Kubernetes.
    pub fn from_json(v: &Value) -> Result<Self, SelectorError> {
        let bad = SelectorError::InvalidObject;
        let obj = match v {
            // A nil selector converts to "select nothing" in Kubernetes.
            Value::Null => {
                return Ok(LabelSelector {
                    requirements: Vec::new(),
                    nothing: true,
                })
            }
            Value::Object(o) => o,
            _ => return Err(bad("expected a JSON object".into())),
        };
        let mut requirements = Vec::new();

        match obj.get("matchLabels") {
            None | Some(Value::Null) => {}
            Some(Value::Object(labels)) => {
                for (k, val) in labels {
                    let Value::String(val) = val else {
                        return Err(bad(format!("matchLabels[{k}]: value must be a string")));
                    };
                    let r = LabelRequirement::new(k, LabelOp::Equals, vec![val.clone()])
                        .map_err(|e| bad(format!("matchLabels[{k}]: {e}")))?;
                    requirements.push(r);
                }
            }
            Some(_) => return Err(bad("matchLabels: must be an object".into())),
        }

        match obj.get("matchExpressions") {
            None | Some(Value::Null) => {}
            Some(Value::Array(exprs)) => {
                for (i, expr) in exprs.iter().enumerate() {
                    let r = expression_requirement(expr)
                        .map_err(|e| bad(format!("matchExpressions[{i}].{e}")))?;
                    requirements.push(r);
                }
            }
            Some(_) => return Err(bad("matchExpressions: must be an array".into())),
        }

        Ok(LabelSelector {
            requirements,
            nothing: false,
        })
    }

    /// True when every requirement holds for the given labels (`None` = object has no labels).
    pub fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        !self.nothing && self.requirements.iter().all(|r| r.matches(labels))
    }

    /// True when the selector places no restriction (selects everything).
    pub fn is_empty(&self) -> bool {
        !self.nothing && self.requirements.is_empty()
    }
}

/// Convert one matchExpressions entry; errors are prefixed by the caller with the entry path.
fn expression_requirement(expr: &Value) -> Result<LabelRequirement, String> {
    let Value::Object(expr) = expr else {
        return Err("must be an object".into());
    };
    let key = match expr.get("key") {
        Some(Value::String(k)) => k.as_str(),
        None | Some(Value::Null) => return Err("key: Required value".into()),
        Some(_) => return Err("key: must be a string".into()),
    };
    let op = match expr.get("operator") {
        Some(Value::String(o)) => match o.as_str() {
            "In" => LabelOp::In,
            "NotIn" => LabelOp::NotIn,
            "Exists" => LabelOp::Exists,
            "DoesNotExist" => LabelOp::DoesNotExist,
            other => {
                return Err(format!(
                    "operator: {other:?} is not a valid label selector operator"
                ))
            }
        },
        None | Some(Value::Null) => return Err("operator: Required value".into()),
        Some(_) => return Err("operator: must be a string".into()),
    };
    let values = match expr.get("values") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.clone()),
                _ => Err("values: every entry must be a string".to_string()),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err("values: must be an array".into()),
    };
    LabelRequirement::new(key, op, values)
}

/// Lexical units of the label selector language.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Bang,
    Eq,
    DoubleEq,
    NotEq,
    Gt,
    Lt,
    LParen,
    RParen,
    Comma,
    End,
}

impl Tok {
    /// Source text of the token, as quoted in error messages.
    fn literal(&self) -> &str {
        match self {
            Tok::Ident(s) => s,
            Tok::Bang => "!",
            Tok::Eq => "=",
            Tok::DoubleEq => "==",
            Tok::NotEq => "!=",
            Tok::Gt => ">",
            Tok::Lt => "<",
            Tok::LParen => "(",
            Tok::RParen => ")",
            Tok::Comma => ",",
            Tok::End => "",
        }
    }
}

fn is_selector_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn is_selector_symbol(c: char) -> bool {
    matches!(c, '!' | '=' | '(' | ')' | ',' | '<' | '>')
}

/// Split a label selector into tokens; identifiers are maximal runs of non-space, non-symbol characters.
fn lex_label_selector(s: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut it = s.chars().peekable();
    while let Some(&c) = it.peek() {
        if is_selector_space(c) {
            it.next();
        } else if is_selector_symbol(c) {
            it.next();
            let followed_by_eq = it.peek() == Some(&'=');
            let tok = match c {
                '!' if followed_by_eq => Tok::NotEq,
                '!' => Tok::Bang,
                '=' if followed_by_eq => Tok::DoubleEq,
                '=' => Tok::Eq,
                '(' => Tok::LParen,
                ')' => Tok::RParen,
                ',' => Tok::Comma,
                '<' => Tok::Lt,
                _ => Tok::Gt,
            };
            if matches!(tok, Tok::NotEq | Tok::DoubleEq) {
                it.next();
            }
            out.push(tok);
        } else {
            let mut word = String::new();
            while let Some(&c) = it.peek() {
                if is_selector_space(c) || is_selector_symbol(c) {
                    break;
                }
                word.push(c);
                it.next();
            }
            out.push(Tok::Ident(word));
        }
    }
    out.push(Tok::End);
    out
}

/// Recursive-descent parser over the token list (always terminated by `Tok::End`).
struct LabelParser {
    tokens: Vec<Tok>,
    pos: usize,
}

impl LabelParser {
    fn peek(&self) -> &Tok {
        &self.tokens[self.pos]
    }

    fn advance(&mut self) -> Tok {
        let t = self.tokens[self.pos].clone();
        if self.pos + 1 < self.tokens.len() {
            self.pos += 1;
        }
        t
    }

    /// selector := <empty> | requirement (',' requirement)*
    fn parse_all(&mut self) -> Result<Vec<LabelRequirement>, SelectorError> {
        let mut reqs = Vec::new();
        loop {
            match self.peek() {
                Tok::End => return Ok(reqs),
                Tok::Ident(_) | Tok::Bang => {}
                other => {
                    return Err(SelectorError::Syntax(format!(
                        "found '{}', expected: !, identifier, or 'end of string'",
                        other.literal()
                    )))
                }
            }
            reqs.push(
                self.parse_requirement()
                    .map_err(SelectorError::Requirement)?,
            );
            match self.advance() {
                Tok::End => return Ok(reqs),
                Tok::Comma => {
                    if !matches!(self.peek(), Tok::Ident(_) | Tok::Bang) {
                        return Err(SelectorError::Syntax(format!(
                            "found '{}', expected: identifier after ','",
                            self.peek().literal()
                        )));
                    }
                }
                other => {
                    return Err(SelectorError::Syntax(format!(
                        "found '{}', expected: ',' or 'end of string'",
                        other.literal()
                    )))
                }
            }
        }
    }

    /// requirement := '!' key | key | key op value | key ('in'|'notin') '(' list ')'
    fn parse_requirement(&mut self) -> Result<LabelRequirement, String> {
        let negated = *self.peek() == Tok::Bang;
        if negated {
            self.advance();
        }
        let key = match self.advance() {
            Tok::Ident(k) => k,
            other => return Err(format!("found '{}', expected: identifier", other.literal())),
        };
        validate_label_key(&key)?;
        if negated {
            return LabelRequirement::new(&key, LabelOp::DoesNotExist, Vec::new());
        }
        if matches!(self.peek(), Tok::End | Tok::Comma) {
            return LabelRequirement::new(&key, LabelOp::Exists, Vec::new());
        }
        // The words `in` / `notin` are keywords only in operator position.
        let op = match self.advance() {
            Tok::Ident(w) if w == "in" => LabelOp::In,
            Tok::Ident(w) if w == "notin" => LabelOp::NotIn,
            Tok::Eq => LabelOp::Equals,
            Tok::DoubleEq => LabelOp::DoubleEquals,
            Tok::NotEq => LabelOp::NotEquals,
            Tok::Gt => LabelOp::GreaterThan,
            Tok::Lt => LabelOp::LessThan,
            other => {
                return Err(format!(
                    "found '{}', expected: in, notin, =, ==, !=, gt, lt",
                    other.literal()
                ))
            }
        };
        let values = if matches!(op, LabelOp::In | LabelOp::NotIn) {
            self.parse_value_list()?
        } else {
            vec![self.parse_single_value()?]
        };
        LabelRequirement::new(&key, op, values)
    }

    /// A bare value after `=`, `==`, `!=`, `>` or `<`; nothing before ',' or the end means "".
    fn parse_single_value(&mut self) -> Result<String, String> {
        if matches!(self.peek(), Tok::End | Tok::Comma) {
            return Ok(String::new());
        }
        match self.advance() {
            Tok::Ident(v) => Ok(v),
            other => Err(format!("found '{}', expected: identifier", other.literal())),
        }
    }

    /// `(v1, v2, ...)`; entries may be empty, so `()` is the single value "" as in Kubernetes.
    fn parse_value_list(&mut self) -> Result<Vec<String>, String> {
        match self.advance() {
            Tok::LParen => {}
            other => return Err(format!("found '{}', expected: '('", other.literal())),
        }
        if !matches!(self.peek(), Tok::Ident(_) | Tok::Comma | Tok::RParen) {
            return Err(format!(
                "found '{}', expected: ',', ')' or identifier",
                self.peek().literal()
            ));
        }
        let mut values = Vec::new();
        loop {
            let value = match self.peek() {
                Tok::Ident(v) => {
                    let v = v.clone();
                    self.advance();
                    v
                }
                _ => String::new(),
            };
            values.push(value);
            match self.advance() {
                Tok::Comma => {}
                Tok::RParen => return Ok(values),
                other => return Err(format!("found '{}', expected: ',' or ')'", other.literal())),
            }
        }
    }
}

const QUALIFIED_NAME_MAX: usize = 63;
const LABEL_VALUE_MAX: usize = 63;
const DNS_SUBDOMAIN_MAX: usize = 253;

const NAME_CHARSET_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?` (non-empty).
fn is_name_token(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(f), Some(l)) => {
            f.is_ascii_alphanumeric()
                && l.is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// Lowercase RFC 1123 subdomain: dot-separated `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 253 chars.
fn dns_subdomain_error(s: &str) -> Option<String> {
    if s.len() > DNS_SUBDOMAIN_MAX {
        return Some(format!(
            "must be no more than {DNS_SUBDOMAIN_MAX} characters"
        ));
    }
    let label_ok = |l: &str| {
        let b = l.as_bytes();
        let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        match (b.first(), b.last()) {
            (Some(f), Some(e)) => alnum(f) && alnum(e) && b.iter().all(|c| alnum(c) || *c == b'-'),
            _ => false,
        }
    };
    if s.split('.').all(label_ok) {
        None
    } else {
        Some(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com')"
                .into(),
        )
    }
}

/// Validate a label key as a Kubernetes qualified name: `[prefix/]name`.
fn validate_label_key(key: &str) -> Result<(), String> {
    let parts: Vec<&str> = key.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                return Err(format!("key: Invalid value: {key:?}: prefix part must be non-empty"));
            }
            if let Some(msg) = dns_subdomain_error(prefix) {
                return Err(format!("key: Invalid value: {key:?}: prefix part {msg}"));
            }
            *name
        }
        _ => {
            return Err(format!(
                "key: Invalid value: {key:?}: a qualified name {NAME_CHARSET_MSG}, with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            ))
        }
    };
    if name.is_empty() {
        return Err(format!(
            "key: Invalid value: {key:?}: name part must be non-empty"
        ));
    }
    if name.len() > QUALIFIED_NAME_MAX {
        return Err(format!(
            "key: Invalid value: {key:?}: name part must be no more than {QUALIFIED_NAME_MAX} characters"
        ));
    }
    if !is_name_token(name) {
        return Err(format!(
            "key: Invalid value: {key:?}: name part {NAME_CHARSET_MSG}"
        ));
    }
    Ok(())
}

/// Validate a label value: empty, or at most 63 chars of the name charset.
fn validate_label_value(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Ok(());
    }
    if v.len() > LABEL_VALUE_MAX {
        return Err(format!("must be no more than {LABEL_VALUE_MAX} characters"));
    }
    if !is_name_token(v) {
        return Err(format!("a valid label {NAME_CHARSET_MSG}"));
    }
    Ok(())
}

/// String form of a JSON scalar for comparisons: strings as-is, bools/numbers printed, anything else "".
fn scalar_str(v: &Value) -> Cow<'_, str> {
    match v {
        Value::String(s) => Cow::Borrowed(s),
        Value::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
        Value::Number(n) => Cow::Owned(n.to_string()),
        Value::Null | Value::Array(_) | Value::Object(_) => Cow::Borrowed(""),
    }
}

// ---------------------------------------------------------------------------
// Field selectors
// ---------------------------------------------------------------------------

/// One `path=value` / `path!=value` clause of a field selector.
#[derive(Debug, Clone)]
struct FieldRequirement {
    path: String,
    negated: bool,
    value: String,
}

/// Parsed field selector (`fieldSelector` query parameter).
#[derive(Debug, Clone, Default)]
pub struct FieldSelector {
    requirements: Vec<FieldRequirement>,
}

impl FieldSelector {
    /// Parse `path=value`, `path==value`, `path!=value` terms joined by commas; `\,` `\=` `\\` escape values.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for term in split_unescaped_commas(s) {
            if term.trim().is_empty() {
                continue;
            }
            let bad_term = || SelectorError::FieldTerm(s.to_string(), term.to_string());
            let (lhs, negated, rhs) = split_field_term(term).ok_or_else(bad_term)?;
            let path = lhs.trim();
            if path.is_empty() {
                return Err(bad_term());
            }
            requirements.push(FieldRequirement {
                path: path.to_string(),
                negated,
                value: unescape_field_value(rhs)?,
            });
        }
        Ok(FieldSelector { requirements })
    }

    /// Check the field paths against the ones a kind supports; error names the unsupported field like Kubernetes: `field label not supported: spec.foo`.
    pub fn check_supported(&self, supported: &[&str]) -> Result<(), SelectorError> {
        match self
            .requirements
            .iter()
            .find(|r| !supported.contains(&r.path.as_str()))
        {
            Some(r) => Err(SelectorError::UnsupportedField(r.path.clone())),
            None => Ok(()),
        }
    }

    /// Match against an object: each requirement's path (e.g. `metadata.name`, `spec.nodeName`, `status.phase`) is looked up in the JSON; a missing field compares as "".
    pub fn matches(&self, obj: &Value) -> bool {
        self.requirements.iter().all(|r| {
            let actual = lookup_path(obj, &r.path)
                .map(scalar_str)
                .unwrap_or_default();
            (actual == r.value.as_str()) != r.negated
        })
    }

    /// True when the selector has no requirements (selects everything).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The value required by an `=`/`==` requirement on this path, if any (lets the server narrow a list by namespace/name).
    pub fn exact(&self, path: &str) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| !r.negated && r.path == path)
            .map(|r| r.value.as_str())
    }
}

/// Split on commas not preceded by an escaping backslash; escapes are kept for the value decoder.
fn split_unescaped_commas(s: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == ',' {
            terms.push(&s[start..i]);
            start = i + 1;
        }
    }
    terms.push(&s[start..]);
    terms
}

/// Find the first operator in a term; returns (lhs, is `!=`, rhs).
fn split_field_term(term: &str) -> Option<(&str, bool, &str)> {
    for (i, _) in term.char_indices() {
        let rest = &term[i..];
        if rest.starts_with("!=") {
            return Some((&term[..i], true, &term[i + 2..]));
        }
        if rest.starts_with("==") {
            return Some((&term[..i], false, &term[i + 2..]));
        }
        if rest.starts_with('=') {
            return Some((&term[..i], false, &term[i + 1..]));
        }
    }
    None
}

/// Decode `\\`, `\,` and `\=`; any other escape, a dangling `\`, or a bare `,`/`=` is an error.
fn unescape_field_value(raw: &str) -> Result<String, SelectorError> {
    let mut out = String::with_capacity(raw.len());
    let mut it = raw.chars();
    while let Some(c) = it.next() {
        match c {
            '\\' => match it.next() {
                Some(e @ ('\\' | ',' | '=')) => out.push(e),
                Some(e) => {
                    return Err(SelectorError::FieldValue(format!(
                        "invalid escape sequence: \\{e}"
                    )))
                }
                None => {
                    return Err(SelectorError::FieldValue(
                        "invalid escape sequence: \\".into(),
                    ))
                }
            },
            ',' | '=' => {
                return Err(SelectorError::FieldValue(format!(
                    "unescaped '{c}' in value {raw:?}"
                )))
            }
            _ => out.push(c),
        }
    }
    Ok(out)
}

/// Walk a dotted path through objects (numeric segments index arrays).
fn lookup_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(obj, |cur, seg| match cur {
        Value::Object(m) => m.get(seg),
        Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("test labels must be an object"),
        }
    }

    fn sel(s: &str) -> LabelSelector {
        LabelSelector::parse(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }

    fn m(s: &LabelSelector, v: Value) -> bool {
        s.matches(Some(&labels(v)))
    }

    fn parse_err(s: &str) -> String {
        match LabelSelector::parse(s) {
            Ok(x) => panic!("{s:?} should not parse, got {x:?}"),
            Err(e) => e.to_string(),
        }
    }

    // ---- label selector: operators ----

    #[test]
    fn equals_and_double_equals() {
        for s in ["app=web", "app==web", " app = web ", "app == web"] {
            let x = sel(s);
            assert!(m(&x, json!({"app": "web", "x": "y"})), "{s}");
            assert!(!m(&x, json!({"app": "db"})), "{s}");
            assert!(!m(&x, json!({})), "{s}");
            assert!(!x.matches(None), "{s}");
        }
    }

    #[test]
    fn not_equals_matches_missing_label() {
        let x = sel("app!=web");
        assert!(!m(&x, json!({"app": "web"})));
        assert!(m(&x, json!({"app": "db"})));
        assert!(m(&x, json!({"other": "web"})));
        assert!(x.matches(None));
    }

    #[test]
    fn in_operator() {
        let x = sel("env in (prod, staging)");
        assert!(m(&x, json!({"env": "prod"})));
        assert!(m(&x, json!({"env": "staging"})));
        assert!(!m(&x, json!({"env": "dev"})));
        assert!(!m(&x, json!({})));
        assert!(!x.matches(None));
    }

    #[test]
    fn notin_matches_missing_label() {
        let x = sel("env notin (prod,staging)");
        assert!(!m(&x, json!({"env": "prod"})));
        assert!(m(&x, json!({"env": "dev"})));
        assert!(m(&x, json!({"tier": "fe"})));
        assert!(x.matches(None));
    }

    #[test]
    fn exists_and_does_not_exist() {
        let x = sel("app");
        assert!(m(&x, json!({"app": ""})));
        assert!(!m(&x, json!({"ap": "x"})));
        assert!(!x.matches(None));
        let y = sel("!app");
        assert!(!m(&y, json!({"app": "x"})));
        assert!(m(&y, json!({"other": "x"})));
        assert!(y.matches(None));
        let z = sel("! app");
        assert!(z.matches(None));
    }

    #[test]
    fn greater_and_less_than() {
        let x = sel("gen>3,gen<10");
        assert!(m(&x, json!({"gen": "4"})));
        assert!(!m(&x, json!({"gen": "3"})));
        assert!(!m(&x, json!({"gen": "10"})));
        assert!(!m(&x, json!({"gen": "abc"})));
        assert!(!x.matches(None));
        assert!(parse_err("gen>abc").contains("must be an integer"));
    }

    #[test]
    fn empty_value_equality() {
        let x = sel("app=");
        assert!(m(&x, json!({"app": ""})));
        assert!(!m(&x, json!({"app": "x"})));
        assert!(!x.matches(None));
        let y = sel("a=,b=c");
        assert!(m(&y, json!({"a": "", "b": "c"})));
    }

    #[test]
    fn conjunction_and_whitespace() {
        let x = sel("  app = web ,tier in ( fe , be ),  !legacy, env notin(dev) , owner ");
        assert!(m(&x, json!({"app": "web", "tier": "be", "owner": "me"})));
        assert!(!m(&x, json!({"app": "web", "tier": "be"})));
        assert!(!m(
            &x,
            json!({"app": "web", "tier": "be", "owner": "me", "legacy": "1"})
        ));
        assert!(!m(
            &x,
            json!({"app": "web", "tier": "be", "owner": "me", "env": "dev"})
        ));
        assert!(!m(&x, json!({"app": "web", "tier": "db", "owner": "me"})));
    }

    #[test]
    fn empty_selector_matches_everything() {
        for s in ["", "   "] {
            let x = sel(s);
            assert!(x.is_empty());
            assert!(x.matches(None));
            assert!(m(&x, json!({"a": "b"})));
        }
        assert!(!sel("a").is_empty());
        assert!(LabelSelector::default().is_empty());
        assert!(LabelSelector::default().matches(None));
    }

    #[test]
    fn prefixed_keys_and_keyword_identifiers() {
        let x = sel("app.kubernetes.io/name=web,example.com/x-y_z.1 in (a.b,c-d)");
        assert!(m(
            &x,
            json!({"app.kubernetes.io/name": "web", "example.com/x-y_z.1": "c-d"})
        ));
        // `in` / `notin` are ordinary words outside the operator slot.
        let y = sel("in in (notin,in)");
        assert!(m(&y, json!({"in": "notin"})));
        assert!(sel("notin").matches(Some(&labels(json!({"notin": "1"})))));
    }

    #[test]
    fn empty_entries_in_value_lists() {
        // Kubernetes reads `()` as the single empty value, and allows empty list entries.
        let x = sel("a in ()");
        assert!(m(&x, json!({"a": ""})));
        assert!(!m(&x, json!({"a": "x"})));
        assert!(!x.matches(None));
        let y = sel("a in (x,)");
        assert!(m(&y, json!({"a": ""})));
        assert!(m(&y, json!({"a": "x"})));
        let z = sel("a notin (,x)");
        assert!(!m(&z, json!({"a": ""})));
        assert!(m(&z, json!({"a": "y"})));
    }

    #[test]
    fn non_string_label_values_compare_by_string_form() {
        let x = sel("n=3,b=true");
        assert!(m(&x, json!({"n": 3, "b": true})));
    }

    // ---- label selector: parse errors ----

    #[test]
    fn parse_errors() {
        let bad = [
            "a in (",
            "a in (x",
            "a in (x y)",
            "a in x",
            "a notin",
            "=b",
            "==b",
            "!=b",
            "a=b,",
            ",a=b",
            "a=b,,c=d",
            "a b",
            "a=b c",
            "a=b=c",
            "a==b==c",
            "!a=b",
            "!",
            "a foo (b)",
            "a=(b)",
            "a in (x),)",
            "a>",
            "a<1.5",
        ];
        for s in bad {
            parse_err(s);
        }
    }

    #[test]
    fn parse_error_messages() {
        assert_eq!(
            parse_err("=b"),
            "found '=', expected: !, identifier, or 'end of string'"
        );
        assert_eq!(
            parse_err("a=b,"),
            "found '', expected: identifier after ','"
        );
        assert_eq!(
            parse_err("a=b c"),
            "found 'c', expected: ',' or 'end of string'"
        );
        assert_eq!(
            parse_err("a in ("),
            "unable to parse requirement: found '', expected: ',', ')' or identifier"
        );
        assert_eq!(
            parse_err("a in (x"),
            "unable to parse requirement: found '', expected: ',' or ')'"
        );
        assert_eq!(
            parse_err("a foo b"),
            "unable to parse requirement: found 'foo', expected: in, notin, =, ==, !=, gt, lt"
        );
    }

    #[test]
    fn invalid_keys_rejected() {
        let long_name = "k".repeat(64);
        let long_prefix = format!("{}/a", "p".repeat(254));
        for key in [
            "a@b",
            "-a",
            "a-",
            ".a",
            "a*b",
            "Example.com/a",
            "exa_mple.com/a",
            "/a",
            "a/",
            "a/b/c",
            "ä",
            long_name.as_str(),
            long_prefix.as_str(),
        ] {
            let e = parse_err(&format!("{key}=v"));
            assert!(e.starts_with("unable to parse requirement: "), "{key}: {e}");
        }
        assert!(parse_err("a@b=c").contains("\"a@b\""));
        // Boundary: 63-char name and a 253-char prefix are fine.
        let ok_key = format!("{}/{}", "p".repeat(253), "k".repeat(63));
        sel(&format!("{ok_key}=v"));
        // Keys are validated even for existence checks.
        parse_err("!a@b");
        parse_err("a@b");
    }

    #[test]
    fn invalid_values_rejected() {
        for s in ["a=-x", "a=x-", "a=x@y", "a in (ok,bad@)", "a!=é"] {
            let e = parse_err(s);
            assert!(
                e.starts_with("unable to parse requirement: values"),
                "{s}: {e}"
            );
        }
        parse_err(&format!("a={}", "v".repeat(64)));
        sel(&format!("a={}", "v".repeat(63)));
        sel("a=A.b_c-9");
    }

    // ---- label selector: metav1.LabelSelector JSON ----

    #[test]
    fn from_json_both_parts() {
        let x = LabelSelector::from_json(&json!({
            "matchLabels": {"app": "web", "tier": "fe"},
            "matchExpressions": [
                {"key": "env", "operator": "In", "values": ["prod", "staging"]},
                {"key": "track", "operator": "NotIn", "values": ["canary"]},
                {"key": "owner", "operator": "Exists"},
                {"key": "legacy", "operator": "DoesNotExist", "values": []}
            ]
        }))
        .unwrap();
        assert!(!x.is_empty());
        let good = json!({"app": "web", "tier": "fe", "env": "prod", "owner": "me"});
        assert!(m(&x, good.clone()));
        let mut g = labels(good);
        g.insert("track".into(), json!("canary"));
        assert!(!x.matches(Some(&g)));
        g.insert("track".into(), json!("stable"));
        assert!(x.matches(Some(&g)));
        g.insert("legacy".into(), json!("yes"));
        assert!(!x.matches(Some(&g)));
        assert!(!m(&x, json!({"app": "web", "env": "prod", "owner": "me"})));
        assert!(!m(
            &x,
            json!({"app": "web", "tier": "fe", "env": "dev", "owner": "me"})
        ));
        assert!(!x.matches(None));
    }

    #[test]
    fn from_json_empty_and_null() {
        for v in [
            json!({}),
            json!({"matchLabels": {}, "matchExpressions": []}),
            json!({"matchLabels": null}),
        ] {
            let x = LabelSelector::from_json(&v).unwrap();
            assert!(x.is_empty());
            assert!(x.matches(None));
            assert!(m(&x, json!({"a": "b"})));
        }
        let nothing = LabelSelector::from_json(&Value::Null).unwrap();
        assert!(!nothing.is_empty());
        assert!(!nothing.matches(None));
        assert!(!m(&nothing, json!({"a": "b"})));
    }

    #[test]
    fn from_json_errors() {
        let err = |v: Value| match LabelSelector::from_json(&v) {
            Ok(x) => panic!("{v} should be rejected, got {x:?}"),
            Err(e) => e.to_string(),
        };
        let e = err(json!({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}));
        assert!(e.contains("matchExpressions[0].values"), "{e}");
        assert!(e.contains("can't be empty"), "{e}");
        err(json!({"matchExpressions": [{"key": "a", "operator": "NotIn"}]}));
        let e =
            err(json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}));
        assert!(e.contains("must be empty"), "{e}");
        err(
            json!({"matchExpressions": [{"key": "a", "operator": "DoesNotExist", "values": ["x"]}]}),
        );
        let e = err(json!({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}));
        assert!(
            e.contains("\"Gt\" is not a valid label selector operator"),
            "{e}"
        );
        err(json!({"matchExpressions": [{"operator": "Exists"}]}));
        err(json!({"matchExpressions": [{"key": "a"}]}));
        err(json!({"matchExpressions": [{"key": "a", "operator": "In", "values": [1]}]}));
        err(json!({"matchExpressions": {"key": "a"}}));
        let e = err(json!({"matchLabels": {"a@b": "x"}}));
        assert!(
            e.starts_with("invalid label selector: matchLabels[a@b]"),
            "{e}"
        );
        err(json!({"matchLabels": {"a": "bad value"}}));
        err(json!({"matchLabels": {"a": 1}}));
        err(json!({"matchLabels": ["a"]}));
        err(json!("app=web"));
    }

    // ---- field selectors ----

    fn fsel(s: &str) -> FieldSelector {
        FieldSelector::parse(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }

    fn fparse_err(s: &str) -> String {
        match FieldSelector::parse(s) {
            Ok(x) => panic!("{s:?} should not parse, got {x:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn field_equals_variants() {
        let pod = json!({"metadata": {"name": "web-1", "namespace": "prod"}});
        for s in [
            "metadata.name=web-1",
            "metadata.name==web-1",
            " metadata.name =web-1",
        ] {
            assert!(fsel(s).matches(&pod), "{s}");
        }
        assert!(!fsel("metadata.name=web-2").matches(&pod));
        assert!(fsel("metadata.name!=web-2").matches(&pod));
        assert!(!fsel("metadata.name!=web-1").matches(&pod));
        assert!(fsel("metadata.name=web-1,metadata.namespace=prod").matches(&pod));
        assert!(!fsel("metadata.name=web-1,metadata.namespace=dev").matches(&pod));
    }

    #[test]
    fn field_empty_node_name_matches_unscheduled_pod() {
        let x = fsel("spec.nodeName=");
        assert!(x.matches(&json!({"metadata": {"name": "p"}, "spec": {"containers": []}})));
        assert!(x.matches(&json!({"metadata": {"name": "p"}})));
        assert!(x.matches(&json!({"spec": {"nodeName": null}})));
        assert!(!x.matches(&json!({"spec": {"nodeName": "node-a"}})));
        let y = fsel("spec.nodeName!=");
        assert!(y.matches(&json!({"spec": {"nodeName": "node-a"}})));
        assert!(!y.matches(&json!({"spec": {}})));
    }

    #[test]
    fn field_phase_not_running() {
        let x = fsel("status.phase!=Running");
        assert!(!x.matches(&json!({"status": {"phase": "Running"}})));
        assert!(x.matches(&json!({"status": {"phase": "Pending"}})));
        assert!(x.matches(&json!({"metadata": {"name": "no-status"}})));
        let y = fsel("status.phase!=Succeeded,status.phase!=Failed");
        assert!(y.matches(&json!({"status": {"phase": "Running"}})));
        assert!(!y.matches(&json!({"status": {"phase": "Failed"}})));
    }

    #[test]
    fn field_bool_and_number_values() {
        let node =
            json!({"spec": {"unschedulable": true}, "status": {"replicas": 3, "ratio": 1.5}});
        assert!(fsel("spec.unschedulable=true").matches(&node));
        assert!(!fsel("spec.unschedulable=false").matches(&node));
        assert!(fsel("status.replicas=3").matches(&node));
        assert!(fsel("status.ratio=1.5").matches(&node));
        assert!(fsel("status.replicas!=4").matches(&node));
    }

    #[test]
    fn field_escapes() {
        let x = fsel(r"metadata.name=a\,b\=c\\d,metadata.namespace=ns");
        assert_eq!(x.exact("metadata.name"), Some(r"a,b=c\d"));
        assert_eq!(x.exact("metadata.namespace"), Some("ns"));
        assert!(x.matches(&json!({"metadata": {"name": "a,b=c\\d", "namespace": "ns"}})));
        assert!(fparse_err(r"metadata.name=a\xb").contains("invalid escape sequence"));
        assert!(fparse_err(r"metadata.name=ab\").contains("invalid escape sequence"));
        assert!(fparse_err("metadata.name=a=b").starts_with("invalid field selector: unescaped"));
        assert!(fparse_err("metadata.name==a==b").starts_with("invalid field selector"));
    }

    #[test]
    fn field_parse_errors() {
        assert_eq!(
            fparse_err("metadata.name"),
            "invalid selector: 'metadata.name'; can't understand 'metadata.name'"
        );
        assert_eq!(
            fparse_err("a=b,junk"),
            "invalid selector: 'a=b,junk'; can't understand 'junk'"
        );
        fparse_err("=b");
        fparse_err("  !=b");
    }

    #[test]
    fn field_empty_selector() {
        for s in ["", " ", ",", "a=b,"] {
            let x = fsel(s);
            assert_eq!(x.is_empty(), s != "a=b,", "{s:?}");
        }
        assert!(fsel("").matches(&json!({})));
        assert!(FieldSelector::default().is_empty());
    }

    #[test]
    fn field_check_supported() {
        let supported = [
            "metadata.name",
            "metadata.namespace",
            "spec.nodeName",
            "status.phase",
        ];
        fsel("metadata.name=a,status.phase!=Running")
            .check_supported(&supported)
            .unwrap();
        fsel("").check_supported(&supported).unwrap();
        let e = fsel("metadata.name=a,spec.foo=b")
            .check_supported(&supported)
            .unwrap_err();
        assert_eq!(e.to_string(), "field label not supported: spec.foo");
        assert!(matches!(e, SelectorError::UnsupportedField(ref f) if f == "spec.foo"));
    }

    #[test]
    fn field_exact() {
        let x = fsel("metadata.namespace==kube-system,metadata.name!=coredns,spec.nodeName=");
        assert_eq!(x.exact("metadata.namespace"), Some("kube-system"));
        assert_eq!(x.exact("metadata.name"), None);
        assert_eq!(x.exact("spec.nodeName"), Some(""));
        assert_eq!(x.exact("status.phase"), None);
        assert_eq!(fsel("metadata.name=a").exact("metadata.name"), Some("a"));
    }

    #[test]
    fn field_path_through_arrays() {
        let obj = json!({"spec": {"containers": [{"name": "app"}]}});
        assert!(fsel("spec.containers.0.name=app").matches(&obj));
        assert!(fsel("spec.containers.1.name=").matches(&obj));
    }
}
