//! Finding the line of a value after it was read, for warnings.
//!
//! serde_yaml_ng reports a location only with an error. To point a warning at `ports[j]` of an
//! object, the object's document is read again by a probe that stops there with an error; the
//! error's location is the answer.
//!
//! Invariants: a probe reads one document of the text once, skipping what it does not need, and
//! never panics; when the path is not there (no `ports`, or fewer entries), the line is that of
//! the nearest enclosing value that is.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// The message of the error a probe stops with (any other error is not an answer).
const STOP: &str = "svcpath: location probe";

/// Where an object is in its text: the document, and the item of a List document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ObjectAt {
    /// 0-based document index.
    pub doc: usize,
    /// 0-based index in the List's `items`, for an object read from a List.
    pub item: Option<usize>,
}

/// The 1-based line of `ports[port]` of the object at `at` in `text`.
pub(crate) fn port_line(text: &str, at: ObjectAt, port: usize) -> Option<usize> {
    let doc = serde_yaml_ng::Deserializer::from_str(text).nth(at.doc)?;
    let ports = Field { name: "ports", index: port, next: Here };
    let result = match at.item {
        None => ports.deserialize(doc),
        Some(item) => Field { name: "items", index: item, next: ports }.deserialize(doc),
    };
    let err = result.err()?;
    if !err.to_string().contains(STOP) {
        return None;
    }
    err.location().map(|l| l.line())
}

fn stop<E: de::Error>() -> E {
    E::custom(STOP)
}

/// Stops at the value it is given.
#[derive(Clone, Copy)]
struct Here;

impl<'de> DeserializeSeed<'de> for Here {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Here {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(stop())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(stop())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(stop())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(stop())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(stop())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(stop())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(stop())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(stop())
    }
}

/// In a mapping, goes to entry `index` of the sequence under key `name` and continues with
/// `next` there; stops at the mapping when it has no such key, at the sequence when it is
/// shorter.
#[derive(Clone, Copy)]
struct Field<S> {
    name: &'static str,
    index: usize,
    next: S,
}

impl<'de, S: DeserializeSeed<'de, Value = ()> + Copy> DeserializeSeed<'de> for Field<S> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, S: DeserializeSeed<'de, Value = ()> + Copy> Visitor<'de> for Field<S> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            if key == self.name {
                map.next_value_seed(Entry { index: self.index, next: self.next })?;
                break;
            }
            map.next_value::<IgnoredAny>()?;
        }
        Err(stop())
    }
}

/// Entry `index` of a sequence, then `next`; stops at the sequence when it is shorter.
#[derive(Clone, Copy)]
struct Entry<S> {
    index: usize,
    next: S,
}

impl<'de, S: DeserializeSeed<'de, Value = ()>> DeserializeSeed<'de> for Entry<S> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, S: DeserializeSeed<'de, Value = ()>> Visitor<'de> for Entry<S> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        for _ in 0..self.index {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Err(stop());
            }
        }
        seq.next_element_seed(self.next)?;
        Err(stop())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(stop())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLICE: &str = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s}\n\
        ports:\n- name: http\n  port: 80\n- {name: https, port: 443}\n";

    #[test]
    fn finds_each_port_of_an_object() {
        let at = ObjectAt { doc: 0, item: None };
        assert_eq!(port_line(SLICE, at, 0), Some(5));
        assert_eq!(port_line(SLICE, at, 1), Some(7));
        // Past the end: the sequence's line.
        assert_eq!(port_line(SLICE, at, 2), Some(5));
    }

    #[test]
    fn finds_a_port_in_a_later_document_and_in_a_list_item() {
        let text = format!("kind: Service\n---\n{SLICE}");
        assert_eq!(port_line(&text, ObjectAt { doc: 1, item: None }, 1), Some(9));
        let list =
            "kind: List\nitems:\n- kind: Service\n- kind: EndpointSlice\n  ports:\n  - name: a\n";
        assert_eq!(port_line(list, ObjectAt { doc: 0, item: Some(1) }, 0), Some(6));
        // No `ports` in the item: the item's own line.
        assert_eq!(port_line(list, ObjectAt { doc: 0, item: Some(0) }, 0), Some(3));
    }

    #[test]
    fn json_objects_are_located_too() {
        let json = "{\"kind\": \"EndpointSlice\",\n \"ports\": [\n  {\"name\": \"a\"},\n  {\"name\": \"b\"}]}";
        assert_eq!(port_line(json, ObjectAt { doc: 0, item: None }, 1), Some(4));
    }

    #[test]
    fn a_missing_document_or_a_non_mapping_gives_no_line() {
        assert_eq!(port_line(SLICE, ObjectAt { doc: 3, item: None }, 0), None);
        assert_eq!(port_line("- a\n- b\n", ObjectAt { doc: 0, item: None }, 0), None);
    }
}
