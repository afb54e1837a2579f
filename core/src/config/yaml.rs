//! Reading YAML with the path of the failing key.
//!
//! serde-saphyr reports where in the text an error is (line and column) but not which key it
//! was reading. The deserializer is therefore wrapped: map and sequence accesses keep a stack
//! of the keys and indices being read, and the first error records that stack. The error then
//! names `limits.heartbeat_ms` or `listeners[1].connector` as well as the position.

use std::cell::RefCell;
use std::fmt::{self, Write as _};

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::error::{ConfigError, one_line};

/// The key shown for errors about the document as a whole.
const DOCUMENT: &str = "(document)";

/// Parses `text` as one YAML document holding a `T`. A document that is empty or holds only
/// comments yields the defaults of every key, exactly as an empty mapping does.
pub(crate) fn from_str<T>(text: &str) -> Result<T, ConfigError>
where
    T: for<'de> Deserialize<'de> + Default,
{
    if is_blank(text) {
        // serde-saphyr reads an empty document as an empty mapping already; this keeps a
        // document holding only `---` or `...` markers from being read as a null scalar.
        return Ok(T::default());
    }
    let state = State::default();
    let result = serde_saphyr::with_deserializer_from_str(text, |de| {
        T::deserialize(Tracked {
            inner: de,
            state: &state,
            key: false,
        })
    });
    result.map_err(|err| {
        let path = state.failed.into_inner().unwrap_or_default();
        ConfigError::Yaml {
            key: render_path(&path),
            message: render_message(&err, text),
        }
    })
}

/// Whether `text` holds nothing but whitespace, comments and document markers.
fn is_blank(text: &str) -> bool {
    text.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#') || line == "---" || line == "..."
    })
}

/// One step of a path into the document.
#[derive(Clone, Debug)]
enum Segment {
    /// A mapping key.
    Key(String),
    /// A sequence index.
    Index(usize),
}

/// `listeners[1].listen`, or `(document)` for the empty path.
fn render_path(path: &[Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&one_line(key));
            }
            Segment::Index(i) => {
                let _ = write!(out, "[{i}]");
            }
        }
    }
    if out.is_empty() {
        out.push_str(DOCUMENT);
    }
    out
}

/// The library's message on one line, without its `error:` prefix and source snippet, with
/// the offending text quoted when the message does not quote it already, and the position.
fn render_message(err: &serde_saphyr::Error, text: &str) -> String {
    let rendered = err.without_snippet().to_string();
    let mut message = rendered
        .trim()
        .trim_start_matches("error:")
        .trim()
        .to_owned();
    let location = err.location();
    if let Some(location) = location {
        // The library writes the position as a prefix or a suffix depending on how the error
        // is rendered; it is put back once, after the quoted text.
        let (line, column) = (location.line(), location.column());
        let prefix = format!("line {line} column {column}:");
        let suffix = format!(" at line {line}, column {column}");
        if let Some(rest) = message.strip_prefix(&prefix) {
            message = rest.trim().to_owned();
        }
        if let Some(rest) = message.strip_suffix(&suffix) {
            message = rest.trim().to_owned();
        }
    }
    // Advice addressed to programmers using the library, not to operators.
    for hint in ["; use from_str_multiple", ", set DuplicateKeyPolicy"] {
        if let Some(at) = message.find(hint) {
            message.truncate(at);
        }
    }
    let mut message = flatten(&message);
    if let Some(location) = location {
        if let Some(snippet) = span_text(location.span(), text)
            && !message.contains('`')
            && !message.contains(snippet)
        {
            let _ = write!(message, ": `{}`", one_line(snippet));
        }
        let _ = write!(
            message,
            " (line {} column {})",
            location.line(),
            location.column()
        );
    }
    message
}

/// Collapses every run of whitespace, newlines included, into one space.
fn flatten(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The text an error's span covers, when it is a short piece of one line.
fn span_text(span: serde_saphyr::Span, text: &str) -> Option<&str> {
    let start = usize::try_from(span.byte_offset()?).ok()?;
    let len = usize::try_from(span.byte_len()?).ok()?;
    let snippet = text.get(start..start.checked_add(len)?)?.trim();
    // Nodes that are not scalars (flow and block collections, anchors, aliases, tags) are
    // left out: their first characters would not say what the value was.
    let unhelpful = snippet.is_empty()
        || snippet.len() > 80
        || snippet.contains('\n')
        || snippet.starts_with(['{', '[', '&', '*', '!'])
        || snippet == "-"
        || snippet.starts_with("- ");
    (!unhelpful).then_some(snippet)
}

/// The path being read and the path of the first error.
#[derive(Default)]
struct State {
    /// The keys and indices from the top of the document down to the value being read.
    stack: RefCell<Vec<Segment>>,
    /// The most recent mapping key read, kept until its value is read.
    last_key: RefCell<Option<String>>,
    /// Where the first error happened; later errors are the same one travelling outwards.
    failed: RefCell<Option<Vec<Segment>>>,
}

impl State {
    /// Records the current path, plus `extra`, unless an error was recorded already.
    fn fail(&self, extra: Option<Segment>) {
        let mut failed = self.failed.borrow_mut();
        if failed.is_none() {
            let mut path = self.stack.borrow().clone();
            path.extend(extra);
            *failed = Some(path);
        }
    }

    /// Runs `read` with `segment` pushed onto the path, recording the path if it fails.
    fn within<T, E>(&self, segment: Segment, read: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        self.stack.borrow_mut().push(segment);
        let result = read();
        if result.is_err() {
            self.fail(None);
        }
        self.stack.borrow_mut().pop();
        result
    }
}

/// A deserializer, seed or visitor (`inner`) that reports to `state`. `key` is set while a
/// mapping key is read, so that the visitor records the key's text.
struct Tracked<'s, X> {
    inner: X,
    state: &'s State,
    key: bool,
}

impl<'s, X> Tracked<'s, X> {
    fn wrap<Y>(&self, inner: Y) -> Tracked<'s, Y> {
        Tracked {
            inner,
            state: self.state,
            key: self.key,
        }
    }

    fn note_key(&self, key: impl fmt::Display) {
        if self.key {
            *self.state.last_key.borrow_mut() = Some(key.to_string());
        }
    }
}

impl<'de, X: DeserializeSeed<'de>> DeserializeSeed<'de> for Tracked<'_, X> {
    type Value = X::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<X::Value, D::Error> {
        let wrapped = self.wrap(deserializer);
        self.inner.deserialize(wrapped)
    }
}

/// Forwards `deserialize_*` methods to the inner deserializer with a tracked visitor.
macro_rules! forward_deserialize {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
                let visitor = self.wrap(visitor);
                self.inner.$method($($arg,)* visitor)
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Tracked<'_, D> {
    type Error = D::Error;

    forward_deserialize! {
        deserialize_any();
        deserialize_bool();
        deserialize_i8();
        deserialize_i16();
        deserialize_i32();
        deserialize_i64();
        deserialize_i128();
        deserialize_u8();
        deserialize_u16();
        deserialize_u32();
        deserialize_u64();
        deserialize_u128();
        deserialize_f32();
        deserialize_f64();
        deserialize_char();
        deserialize_str();
        deserialize_string();
        deserialize_bytes();
        deserialize_byte_buf();
        deserialize_option();
        deserialize_unit();
        deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str);
        deserialize_seq();
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map();
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
        deserialize_identifier();
        deserialize_ignored_any();
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

/// Forwards scalar `visit_*` methods, noting the value as a key when a key is being read.
macro_rules! forward_visit {
    ($($method:ident($ty:ty);)*) => {
        $(
            fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
                self.note_key(&v);
                self.inner.$method(v)
            }
        )*
    };
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Tracked<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    forward_visit! {
        visit_bool(bool);
        visit_i8(i8);
        visit_i16(i16);
        visit_i32(i32);
        visit_i64(i64);
        visit_i128(i128);
        visit_u8(u8);
        visit_u16(u16);
        visit_u32(u32);
        visit_u64(u64);
        visit_u128(u128);
        visit_f32(f32);
        visit_f64(f64);
        visit_char(char);
        visit_str(&str);
        visit_borrowed_str(&'de str);
        visit_string(String);
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<V::Value, E> {
        self.note_key(String::from_utf8_lossy(v));
        self.inner.visit_bytes(v)
    }

    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<V::Value, E> {
        self.note_key(String::from_utf8_lossy(v));
        self.inner.visit_borrowed_bytes(v)
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<V::Value, E> {
        self.note_key(String::from_utf8_lossy(&v));
        self.inner.visit_byte_buf(v)
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<V::Value, D::Error> {
        let wrapped = self.wrap(deserializer);
        self.inner.visit_some(wrapped)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<V::Value, D::Error> {
        let wrapped = self.wrap(deserializer);
        self.inner.visit_newtype_struct(wrapped)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.inner.visit_seq(TrackedSeq {
            inner: seq,
            state: self.state,
            index: 0,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.inner.visit_map(TrackedMap {
            inner: map,
            state: self.state,
        })
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        // Configuration enums are plain words; their errors belong to the enclosing key.
        self.inner.visit_enum(data)
    }
}

/// A sequence whose elements are read under their index.
struct TrackedSeq<'s, A> {
    inner: A,
    state: &'s State,
    index: usize,
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for TrackedSeq<'_, A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        let index = self.index;
        self.index += 1;
        let state = self.state;
        let inner = &mut self.inner;
        state.within(Segment::Index(index), || {
            inner.next_element_seed(Tracked {
                inner: seed,
                state,
                key: false,
            })
        })
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

/// A mapping whose values are read under their key.
struct TrackedMap<'s, A> {
    inner: A,
    state: &'s State,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for TrackedMap<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        *self.state.last_key.borrow_mut() = None;
        let result = self.inner.next_key_seed(Tracked {
            inner: seed,
            state: self.state,
            key: true,
        });
        if result.is_err() {
            // An unknown or malformed key: name it, when it could be read.
            let key = self.state.last_key.borrow_mut().take();
            self.state.fail(key.map(Segment::Key));
        }
        result
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        let key = self
            .state
            .last_key
            .borrow_mut()
            .take()
            .unwrap_or_else(|| "?".to_owned());
        let state = self.state;
        let inner = &mut self.inner;
        state.within(Segment::Key(key), || {
            inner.next_value_seed(Tracked {
                inner: seed,
                state,
                key: false,
            })
        })
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}
