//! [`Name`]: the string type of chain names, modules, options and targets.
//!
//! iptables limits a chain name to 28 bytes, and kube-proxy's own are 24 or 25
//! (`KUBE-SEP-` and 16 characters of a hash). A name that short lives inside the value, so the
//! 3.2 million rules of a 100k-Service dump neither allocate their chain names nor count
//! references to them: a copy is a copy of 32 bytes. `smol_str`, which svcpath used before,
//! keeps only 23 bytes inline, so each endpoint chain name was an allocation of its own that
//! every rule in the chain shared through an atomic count (some 8% of the instructions of
//! generating a 10k-Service dump, and a cache miss wherever a rule's chain was read).

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

use serde::{Serialize, Serializer};

/// The longest name kept inside the value.
pub(crate) const INLINE: usize = 30;

/// A short immutable string: inline up to 30 bytes, a `&'static str`, or shared by reference
/// count when longer. It compares, orders and hashes as the `str` it holds, so a [`Name`]-keyed
/// map can be looked up by `&str`.
///
/// ```
/// use svcpath::model::rules::Name;
/// let sep = Name::new("KUBE-SEP-C6EBXVWJJZMIWKLZ");
/// assert_eq!(sep, "KUBE-SEP-C6EBXVWJJZMIWKLZ");
/// assert_eq!(sep.clone().as_str(), sep.as_str());
/// assert_eq!(std::mem::size_of::<Name>(), 32);
/// ```
#[derive(Clone)]
pub struct Name(Repr);

#[derive(Clone)]
enum Repr {
    Inline(heapless::String<INLINE, u8>),
    Static(&'static str),
    Shared(Arc<str>),
}

impl Name {
    /// `text` as a name: copied inline when short enough, else into a shared allocation.
    pub fn new(text: impl AsRef<str>) -> Name {
        let text = text.as_ref();
        Name(match inline(text) {
            Some(s) => Repr::Inline(s),
            None => Repr::Shared(Arc::from(text)),
        })
    }

    /// A name that borrows `text` for good (no copy, however long).
    pub const fn new_static(text: &'static str) -> Name {
        Name(Repr::Static(text))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline(s) => s.as_str(),
            Repr::Static(s) => s,
            Repr::Shared(s) => s,
        }
    }
}

/// `text` inline, if it fits.
fn inline(text: &str) -> Option<heapless::String<INLINE, u8>> {
    let mut s = heapless::String::new();
    s.push_str(text).ok()?;
    Some(s)
}

impl Default for Name {
    fn default() -> Name {
        Name::new_static("")
    }
}

impl Deref for Name {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for Name {
    fn from(text: &str) -> Name {
        Name::new(text)
    }
}

impl From<&String> for Name {
    fn from(text: &String) -> Name {
        Name::new(text)
    }
}

impl From<String> for Name {
    fn from(text: String) -> Name {
        Name(match inline(&text) {
            Some(s) => Repr::Inline(s),
            None => Repr::Shared(Arc::from(text)),
        })
    }
}

impl From<Name> for String {
    fn from(name: Name) -> String {
        name.as_str().to_owned()
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Name {}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Name {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&String> for Name {
    fn eq(&self, other: &&String) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<Name> for str {
    fn eq(&self, other: &Name) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<Name> for &str {
    fn eq(&self, other: &Name) -> bool {
        *self == other.as_str()
    }
}

impl PartialEq<Name> for String {
    fn eq(&self, other: &Name) -> bool {
        self == other.as_str()
    }
}

impl PartialOrd for Name {
    fn partial_cmp(&self, other: &Name) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Name {
    fn cmp(&self, other: &Name) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl Hash for Name {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn names_up_to_thirty_bytes_are_inline_and_longer_ones_shared() {
        for len in [0, 1, 23, 24, 25, 28, 30, 31, 64] {
            let text = "K".repeat(len);
            for name in [Name::new(&text), Name::from(text.clone()), Name::from(&text)] {
                assert_eq!(name.as_str(), text);
                assert_eq!(matches!(name.0, Repr::Inline(_)), len <= INLINE, "{len}");
                assert_eq!(matches!(name.0, Repr::Shared(_)), len > INLINE, "{len}");
                let copy = name.clone();
                assert_eq!(copy, name);
                if let (Repr::Shared(a), Repr::Shared(b)) = (&name.0, &copy.0) {
                    assert!(Arc::ptr_eq(a, b), "a long name's copies share one text");
                }
            }
        }
    }

    #[test]
    fn a_name_compares_orders_and_hashes_as_its_text() {
        let names = ["", "KUBE-SVC-AAAA", "KUBE-SEP-C6EBXVWJJZMIWKLZ", &"x".repeat(40)];
        let mut map: HashMap<Name, usize> = HashMap::new();
        for (i, n) in names.iter().enumerate() {
            map.insert(Name::new(n), i);
        }
        for (i, n) in names.iter().enumerate() {
            assert_eq!(map.get(*n), Some(&i), "looked up by &str");
            for (j, m) in names.iter().enumerate() {
                let (a, b) = (Name::new(n), Name::new(m));
                assert_eq!(a.cmp(&b), n.cmp(m));
                assert_eq!(a == b, i == j);
            }
        }
        assert_eq!(Name::new_static("filter"), Name::new("filter"));
        assert_eq!(Name::default(), "");
        assert_eq!(format!("{:?} {}", Name::new("a\"b"), Name::new("c")), "\"a\\\"b\" c");
        assert_eq!(
            serde_json::to_string(&Name::new("KUBE-MARK-MASQ")).ok().as_deref(),
            Some("\"KUBE-MARK-MASQ\"")
        );
    }
}
