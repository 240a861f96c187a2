//! Reading Kubernetes manifests: what `kubectl get services,endpointslices,endpoints,nodes -A -o
//! yaml` (or `-o json`) prints, plus kube-proxy's configuration, into a [`Cluster`].
//!
//! # Input
//! One text may hold several YAML documents (`---`), `kind: List` (or `ServiceList`, …) with
//! `items`, JSON (a single object, a List, or several objects one after the other; JSON is read
//! by the same YAML 1.2 parser), or a mix of YAML and JSON documents.
//! Objects read: v1 `Service`, `discovery.k8s.io` `EndpointSlice` (v1 and v1beta1), legacy v1
//! `Endpoints`, v1 `Node`, `kubeproxy.config.k8s.io` `KubeProxyConfiguration`, and a v1 `ConfigMap`
//! that embeds one in a data value (kubeadm's `kube-system/kube-proxy`, key `config.conf`; EKS's
//! `kube-proxy-config`, key `config`). Every other kind — including a `Service` of another API
//! group, such as Knative's — is skipped with one warning per kind.
//!
//! # Invariants
//! - Objects keep their input order; across files, the order of the paths. An object that appears
//!   twice (same kind, namespace and name) is replaced in place by the later one, with a warning.
//! - The API server's defaults are applied (see [`crate::model::cluster`] for each field), and
//!   EndpointSlice conditions are read as kube-proxy's `endpointslicecache.go` reads them: a nil
//!   `ready` or `serving` is true, a nil `terminating` false.
//! - Legacy `Endpoints` are converted into EndpointSlices (one per subset and address family) only
//!   for Services that have no EndpointSlice anywhere in the input, so `kubectl get
//!   endpoints,endpointslices` output is not counted twice.
//! - Values kube-proxy itself ignores (unparsable `externalIPs` or `loadBalancerSourceRanges`, a
//!   slice without the `kubernetes.io/service-name` label) become warnings, not errors. Values the
//!   API server would reject are errors.
//! - An EndpointSlice port whose name and protocol no port of its Service has is kept as it is
//!   (kube-proxy ignores it, so a Service port left without endpoints rejects) and warned about
//!   at the port's file and line, e.g. `c.yaml:15: EndpointSlice default/web-abc: ports[0]: port
//!   'https'/tcp matches no port of Service default/web ('http'/tcp); kube-proxy ignores it`;
//!   past 16 such ports one more warning counts the rest. To find the line, the texts holding
//!   EndpointSlices are kept until the end of the load and the slice's document is read again.
//! - Unknown fields are ignored everywhere. No input panics: malformed YAML, wrong types, alias
//!   bombs and deep nesting all end in a [`LoadError`].
//! - Work and memory are bounded by the input size: before anything is built, a file that holds
//!   a `*` (so may hold YAML aliases) is walked once with a node budget of 8 nodes per input byte
//!   (plus 100 000), so aliases that multiply the content ("billion laughs") fail fast. Skipped
//!   values are stepped over without recursion; a walk deeper than 128 levels is refused
//!   (serde_yaml_ng's limit), so deep nesting cannot overflow the stack.
//!
//! # Errors
//! A [`LoadError`] names the file, the line (when the parser gives one), the object
//! (`Service default/web`) and the field path, e.g.
//! `cluster.yaml:14: Service default/web: spec.ports[0].port: 70000 is out of range 1-65535`.
//! Checks that involve several fields (a Service without ports) point at the object's first line.
//!
//! ```
//! use svcpath::model::load::load_str;
//! let text = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n\
//!             spec: {clusterIP: 10.96.0.5, ports: [{port: 80}]}\n";
//! let loaded = load_str(text, "web.yaml").unwrap();
//! assert_eq!(loaded.cluster.services[0].namespaced_name(), "default/web");
//! let err = load_str(&text.replace("port: 80", "port: 70000"), "web.yaml").unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     "web.yaml:4: Service default/web: spec.ports[0].port: 70000 is out of range 1-65535"
//! );
//! ```

mod convert;
mod locate;
mod raw;

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::model::{Cluster, EndpointSlice, Node, Protocol, ProxyConfig, Service};
use convert::LegacyEndpoints;
use locate::ObjectAt;
use raw::{Header, ItemHeader, Meta};

/// Nodes (scalars, sequences, mappings, after alias expansion) allowed per byte of input.
const NODES_PER_BYTE: usize = 8;

/// Nodes allowed on top of [`NODES_PER_BYTE`], so small files with a few aliases always load.
const NODE_ALLOWANCE: usize = 100_000;

/// The message of the budget error (matched to classify it as [`LoadErrorKind::TooComplex`]).
const BOMB_MESSAGE: &str = "the document expands to too many nodes";

/// The character that starts every YAML alias (`*name`).
const ALIAS_INDICATOR: char = '*';

/// File extensions [`load_paths`] reads from a directory.
const MANIFEST_EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// The kind name that marks a list (`List`, or `ServiceList` and the like with `items`).
const LIST_KIND: &str = "List";

/// Text a ConfigMap data value must contain to be read as an embedded kube-proxy configuration.
const PROXY_CONFIG_KIND: &str = "KubeProxyConfiguration";

/// How many EndpointSlice ports that match no Service port are warned about one by one (each
/// located by reading its document again); the rest are counted in one more warning.
const MAX_PORT_WARNINGS: usize = 16;

/// A loaded cluster plus the non-fatal problems found (one line each).
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The cluster.
    pub cluster: Cluster,
    /// Warnings such as skipped unknown kinds, in the order found.
    pub warnings: Vec<String>,
}

/// What went wrong while loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LoadErrorKind {
    /// The file could not be read (or is not UTF-8).
    Io,
    /// The text is not well-formed YAML/JSON.
    Syntax,
    /// Aliases expand beyond the node budget, or nesting beyond 128 levels.
    TooComplex,
    /// A document is not a Kubernetes object (not a mapping, or no `kind`).
    NotAnObject,
    /// A field has a value the API server would reject.
    Invalid,
}

/// Why a manifest could not be loaded: where, which object, which field, what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LoadError {
    /// File name or `<embedded …>`.
    pub origin: String,
    /// 1-based line of the problem, when the parser gives one.
    pub line: Option<usize>,
    /// 1-based column of the problem, when the parser gives one.
    pub column: Option<usize>,
    /// The object, as `Kind namespace/name` (`Node name` for cluster-scoped kinds).
    pub object: Option<String>,
    /// The class of problem.
    pub kind: LoadErrorKind,
    /// The field path and the problem (`spec.ports[0].port: 70000 is out of range 1-65535`).
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let (LoadErrorKind::Syntax, Some(column)) = (self.kind, self.column) {
                write!(f, ":{column}")?;
            }
        }
        f.write_str(": ")?;
        if let Some(object) = &self.object {
            write!(f, "{object}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Loads manifests from text; `origin` names it in errors and warnings.
///
/// # Errors
/// Malformed YAML/JSON, alias bombs, documents that are not objects, and field values the API
/// server would reject (see the module doc).
pub fn load_str(text: &str, origin: &str) -> Result<Loaded, LoadError> {
    let mut builder = Builder::default();
    builder.add_input(text, origin)?;
    builder.warn_unmatched_slice_ports();
    Ok(builder.finish())
}

/// Loads one file (or every `*.yaml`, `*.yml`, `*.json` of a directory, in name order).
///
/// # Errors
/// As [`load_str`], plus [`LoadErrorKind::Io`] when the file cannot be read.
pub fn load_path(path: &Path) -> Result<Loaded, LoadError> {
    load_paths(&[path.to_path_buf()])
}

/// Loads several files (or directories) into one cluster, in the order given.
///
/// Later files replace earlier objects of the same kind and name, and a later
/// KubeProxyConfiguration replaces an earlier one (both with a warning).
///
/// # Errors
/// As [`load_path`], for the first file that fails.
pub fn load_paths(paths: &[PathBuf]) -> Result<Loaded, LoadError> {
    let mut builder = Builder::default();
    for path in paths {
        for file in expand_dir(path)? {
            let origin = file.display().to_string();
            let text = std::fs::read_to_string(&file).map_err(|e| LoadError {
                origin: origin.clone(),
                line: None,
                column: None,
                object: None,
                kind: LoadErrorKind::Io,
                message: format!("cannot read the file: {e}"),
            })?;
            builder.add_input(&text, &origin)?;
        }
    }
    builder.warn_unmatched_slice_ports();
    Ok(builder.finish())
}

fn expand_dir(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let io_err = |e: std::io::Error| LoadError {
        origin: path.display().to_string(),
        line: None,
        column: None,
        object: None,
        kind: LoadErrorKind::Io,
        message: format!("cannot list the directory: {e}"),
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io_err)? {
        let p = entry.map_err(io_err)?.path();
        let manifest = p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| MANIFEST_EXTENSIONS.contains(&e));
        if manifest && p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

// ---------------------------------------------------------------------------------------------
// Dispatch: which shape a document has.

/// What the second pass reads a document (or List item) as.
#[derive(Debug, Clone)]
enum Dispatch {
    Service,
    EndpointSlice,
    Endpoints,
    Node,
    ConfigMap,
    ProxyConfig,
    ServiceCidr,
    /// A kind svcpath does not use; the string is the kind as shown in the warning.
    Skip(String),
    /// Not an object: the message says why.
    Bad(&'static str),
    /// An empty (null) List item.
    Null,
}

fn dispatch(api_version: Option<&str>, kind: Option<&str>) -> Dispatch {
    let Some(kind) = kind.filter(|k| !k.is_empty()) else {
        return Dispatch::Bad("kind: missing (is this a Kubernetes object?)");
    };
    let api_version = api_version.unwrap_or("");
    // `v1` is the core group; `discovery.k8s.io/v1` is group `discovery.k8s.io`. An absent
    // apiVersion (hand-written input) matches by kind alone.
    let group = api_version.rsplit_once('/').map(|(g, _)| g);
    let any = api_version.is_empty();
    let core = any || group.is_none();
    match kind {
        "Service" if core => Dispatch::Service,
        "Endpoints" if core => Dispatch::Endpoints,
        "Node" if core => Dispatch::Node,
        "ConfigMap" if core => Dispatch::ConfigMap,
        "EndpointSlice" if any || group == Some("discovery.k8s.io") => Dispatch::EndpointSlice,
        "KubeProxyConfiguration" if any || group == Some("kubeproxy.config.k8s.io") => {
            Dispatch::ProxyConfig
        }
        "ServiceCIDR" if any || group == Some("networking.k8s.io") => Dispatch::ServiceCidr,
        "Service"
        | "Endpoints"
        | "Node"
        | "ConfigMap"
        | "EndpointSlice"
        | "KubeProxyConfiguration"
        | "ServiceCIDR" => Dispatch::Skip(format!("{kind} ({api_version})")),
        other => Dispatch::Skip(other.to_owned()),
    }
}

fn is_cluster_scoped(d: &Dispatch) -> bool {
    matches!(d, Dispatch::Node | Dispatch::ProxyConfig | Dispatch::ServiceCidr)
}

/// `Service default/web`, `Node node-1`, `KubeProxyConfiguration`.
fn object_label(kind: Option<&str>, meta: Option<&Meta>, d: &Dispatch) -> Option<String> {
    let kind = kind?;
    let name = meta.and_then(|m| m.name.as_deref()).unwrap_or("");
    if name.is_empty() {
        return Some(kind.to_owned());
    }
    if is_cluster_scoped(d) {
        return Some(format!("{kind} {name}"));
    }
    let ns = meta
        .and_then(|m| m.namespace.as_deref())
        .filter(|n| !n.is_empty())
        .unwrap_or(convert::DEFAULT_NAMESPACE);
    Some(format!("{kind} {ns}/{name}"))
}

fn is_list(h: &Header) -> bool {
    h.items.is_some() && h.kind.as_deref().is_some_and(|k| k.ends_with(LIST_KIND))
}

// ---------------------------------------------------------------------------------------------
// Pass 0: walk every node once against a budget.

struct CountSeed<'a>(&'a Cell<usize>);

impl<'de> DeserializeSeed<'de> for CountSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(CountVisitor(self.0))
    }
}

struct CountVisitor<'a>(&'a Cell<usize>);

impl CountVisitor<'_> {
    fn tick<E: de::Error>(&self) -> Result<(), E> {
        match self.0.get().checked_sub(1) {
            Some(left) => {
                self.0.set(left);
                Ok(())
            }
            None => Err(E::custom(BOMB_MESSAGE)),
        }
    }
}

impl<'de> Visitor<'de> for CountVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.tick()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.tick()
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<(), E> {
        self.tick()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.tick()
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<(), E> {
        self.tick()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.tick()
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.tick()
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<(), E> {
        self.tick()
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.tick()
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.tick()
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.tick()?;
        CountSeed(self.0).deserialize(d)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.tick()?;
        CountSeed(self.0).deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.tick()?;
        while seq.next_element_seed(CountSeed(self.0))?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.tick()?;
        while map.next_key_seed(CountSeed(self.0))?.is_some() {
            map.next_value_seed(CountSeed(self.0))?;
        }
        Ok(())
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        // A YAML tag (`!foo value`): count the value under it.
        use de::VariantAccess;
        self.tick()?;
        let ((), variant) = data.variant_seed(CountSeed(self.0))?;
        variant.newtype_variant_seed(CountSeed(self.0))
    }
}

// ---------------------------------------------------------------------------------------------
// Pass 2: typed objects.

/// One object read from the input, with its conversion warnings (`path: message`).
enum Parsed {
    Service(Service, Vec<String>),
    Slice(Option<EndpointSlice>, Vec<String>),
    Endpoints(LegacyEndpoints),
    Node(Node),
    ConfigMap(Option<String>),
    ProxyConfig(ProxyConfig, Vec<String>),
    ServiceCidr(Vec<ipnetwork::IpNetwork>),
    Skipped(String),
    Nothing,
}

struct ObjSeed<'a>(&'a Dispatch);

impl<'de> DeserializeSeed<'de> for ObjSeed<'_> {
    type Value = Parsed;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Parsed, D::Error> {
        match self.0 {
            Dispatch::Skip(kind) => {
                IgnoredAny::deserialize(d)?;
                Ok(Parsed::Skipped(kind.clone()))
            }
            Dispatch::Null => {
                IgnoredAny::deserialize(d)?;
                Ok(Parsed::Nothing)
            }
            other => d.deserialize_map(ObjVisitor(other)),
        }
    }
}

struct ObjVisitor<'a>(&'a Dispatch);

impl<'de> Visitor<'de> for ObjVisitor<'_> {
    type Value = Parsed;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Kubernetes object (a mapping with apiVersion and kind)")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Parsed, A::Error> {
        // Conversion errors raised here carry the mark of this mapping: the object's first line.
        let d = MapAccessDeserializer::new(map);
        let mut warn = Vec::new();
        let parsed = match self.0 {
            Dispatch::Service => {
                convert::convert_service(raw::RawService::deserialize(d)?, &mut warn)
                    .map(|s| Parsed::Service(s, std::mem::take(&mut warn)))
            }
            Dispatch::EndpointSlice => {
                convert::convert_slice(raw::RawEndpointSlice::deserialize(d)?, &mut warn)
                    .map(|s| Parsed::Slice(s, std::mem::take(&mut warn)))
            }
            Dispatch::Endpoints => convert::convert_endpoints(raw::RawEndpoints::deserialize(d)?)
                .map(Parsed::Endpoints),
            Dispatch::Node => {
                convert::convert_node(raw::RawNode::deserialize(d)?).map(Parsed::Node)
            }
            Dispatch::ConfigMap => {
                let cm = raw::RawConfigMap::deserialize(d)?;
                Ok(Parsed::ConfigMap(
                    cm.data
                        .unwrap_or_default()
                        .into_values()
                        .find(|v| v.contains(PROXY_CONFIG_KIND)),
                ))
            }
            Dispatch::ProxyConfig => {
                convert::convert_proxy_config(raw::RawProxyConfig::deserialize(d)?, &mut warn)
                    .map(|c| Parsed::ProxyConfig(c, std::mem::take(&mut warn)))
            }
            Dispatch::ServiceCidr => {
                convert::convert_service_cidr(raw::RawServiceCidr::deserialize(d)?)
                    .map(Parsed::ServiceCidr)
            }
            Dispatch::Bad(why) => Err((*why).to_owned()),
            Dispatch::Skip(_) | Dispatch::Null => {
                IgnoredAny::deserialize(d)?;
                Ok(Parsed::Nothing)
            }
        };
        parsed.map_err(de::Error::custom)
    }
}

/// Reads a List: `items` element by element, each with its own dispatch; records the index
/// being read so an error can name the item.
struct ListSeed<'a> {
    dispatch: &'a [Dispatch],
    current: &'a Cell<Option<usize>>,
}

impl<'de> DeserializeSeed<'de> for ListSeed<'_> {
    type Value = Vec<Parsed>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<Parsed>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ListSeed<'_> {
    type Value = Vec<Parsed>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a List object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<Parsed>, A::Error> {
        let mut out = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if key == "items" {
                out = map.next_value_seed(ItemsSeed {
                    dispatch: self.dispatch,
                    current: self.current,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(out)
    }
}

struct ItemsSeed<'a> {
    dispatch: &'a [Dispatch],
    current: &'a Cell<Option<usize>>,
}

impl<'de> DeserializeSeed<'de> for ItemsSeed<'_> {
    type Value = Vec<Parsed>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<Parsed>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ItemsSeed<'_> {
    type Value = Vec<Parsed>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence of objects")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Vec<Parsed>, E> {
        Ok(Vec::new())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Parsed>, A::Error> {
        let mut out = Vec::with_capacity(self.dispatch.len());
        let mut i = 0;
        loop {
            self.current.set(Some(i));
            let d = self.dispatch.get(i).unwrap_or(&Dispatch::Null);
            match seq.next_element_seed(ObjSeed(d))? {
                Some(p) => out.push(p),
                None => break,
            }
            i += 1;
        }
        self.current.set(None);
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------------
// The builder: accumulates objects across files.

#[derive(Default)]
struct Builder {
    cluster: Cluster,
    warnings: Vec<String>,
    legacy: Vec<LegacyEndpoints>,
    /// Skipped kinds and their counts, in order of first appearance.
    skipped: Vec<(String, usize)>,
    /// Where the current KubeProxyConfiguration came from.
    config_from: Option<String>,
    service_index: HashMap<(String, String), usize>,
    slice_index: HashMap<(String, String), usize>,
    node_index: HashMap<String, usize>,
    /// The texts EndpointSlices were read from, kept to locate them in warnings.
    sources: Vec<Source>,
    /// Where each of `cluster.endpoint_slices` was read: an index into `sources`, and the
    /// object's place in that text.
    slice_at: Vec<(usize, ObjectAt)>,
    /// Lines before the text being read (a JSON stream is read value by value).
    lines_before: usize,
    /// Whether an EndpointSlice was read from the text being read.
    slices_in_text: bool,
}

/// A text EndpointSlices were read from.
struct Source {
    origin: String,
    text: String,
    lines_before: usize,
}

/// Turns a serde_yaml_ng error into a [`LoadError`]: the location goes to `line`/`column`, the
/// `… at line L column C` suffix is dropped, and a List item's `items[i].` prefix too.
fn yaml_error(
    e: &serde_yaml_ng::Error,
    origin: &str,
    object: Option<String>,
    item: Option<usize>,
    kind: LoadErrorKind,
) -> LoadError {
    let loc = e.location();
    let mut message = e.to_string();
    if let Some(l) = &loc {
        let suffix = format!(" at line {} column {}", l.line(), l.column());
        if let Some(pos) = message.find(&suffix) {
            message.replace_range(pos..pos + suffix.len(), "");
        }
    }
    if let Some(i) = item {
        for prefix in [format!("items[{i}]."), format!("items[{i}]: ")] {
            if let Some(rest) = message.strip_prefix(&prefix) {
                message = rest.to_owned();
                break;
            }
        }
    }
    let kind = if message.contains(BOMB_MESSAGE) {
        message = format!(
            "{BOMB_MESSAGE}: YAML aliases (`*name`) multiply the content beyond what the input \
             size allows; is it a 'billion laughs' bomb? Write the values out instead"
        );
        LoadErrorKind::TooComplex
    } else if message.contains("repetition limit exceeded") {
        message =
            "YAML aliases repeat too often (repetition limit exceeded); write the values out \
                   instead"
                .to_owned();
        LoadErrorKind::TooComplex
    } else if message.contains("recursion limit exceeded") {
        message = "nesting deeper than 128 levels (recursion limit exceeded)".to_owned();
        LoadErrorKind::TooComplex
    } else {
        if kind == LoadErrorKind::Syntax {
            message = format!("malformed YAML/JSON: {message}");
        }
        kind
    };
    LoadError {
        origin: origin.to_owned(),
        line: loc.as_ref().map(|l| l.line()),
        column: loc.as_ref().map(|l| l.column()),
        object,
        kind,
        message,
    }
}

/// Byte ranges of the values of a stream of concatenated JSON objects (`{…}{…}`, as several
/// `kubectl get -o json` runs appended to one file give), when there are at least two; YAML
/// cannot read such a stream as one document.
fn json_stream_parts(text: &str) -> Option<Vec<(usize, usize)>> {
    if !text.trim_start().starts_with('{') {
        return None;
    }
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<IgnoredAny>();
    let mut parts = Vec::new();
    let mut start = 0;
    while let Some(value) = stream.next() {
        value.ok()?;
        let end = stream.byte_offset();
        parts.push((start, end));
        start = end;
    }
    (parts.len() > 1).then_some(parts)
}

/// Walks every document of `text` against the node budget; the error is a syntax error or
/// [`LoadErrorKind::TooComplex`].
fn count_nodes(text: &str, origin: &str) -> Result<(), LoadError> {
    let budget =
        Cell::new(text.len().saturating_mul(NODES_PER_BYTE).saturating_add(NODE_ALLOWANCE));
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        CountSeed(&budget)
            .deserialize(doc)
            .map_err(|e| yaml_error(&e, origin, None, None, LoadErrorKind::Syntax))?;
    }
    Ok(())
}

impl Builder {
    /// Reads one input: a JSON stream value by value (lines still count from the file's start),
    /// anything else as YAML.
    fn add_input(&mut self, text: &str, origin: &str) -> Result<(), LoadError> {
        let Some(parts) = json_stream_parts(text) else {
            return self.add_text(text, origin);
        };
        for (start, end) in parts {
            let lines_before = text.get(..start).map_or(0, |t| t.matches('\n').count());
            let part = text.get(start..end).unwrap_or("");
            self.lines_before = lines_before;
            let added = self.add_text(part, origin);
            self.lines_before = 0;
            added.map_err(|mut e| {
                if let Some(line) = e.line.as_mut() {
                    *line += lines_before;
                }
                e
            })?;
        }
        Ok(())
    }

    fn add_text(&mut self, text: &str, origin: &str) -> Result<(), LoadError> {
        // Pass 0: the alias budget. Without a `*` the text has no alias, and nothing can expand.
        if text.contains(ALIAS_INDICATOR) {
            count_nodes(text, origin)?;
        }
        // Pass 1: kinds and names (and syntax).
        let mut headers: Vec<Option<Header>> = Vec::new();
        for doc in serde_yaml_ng::Deserializer::from_str(text) {
            match Option::<Header>::deserialize(doc) {
                Ok(h) => headers.push(h),
                Err(e) => {
                    // A syntax error reads better as one: the counting pass accepts any
                    // well-formed YAML, so if it fails too, its error is the real one.
                    count_nodes(text, origin)?;
                    return Err(yaml_error(&e, origin, None, None, LoadErrorKind::NotAnObject));
                }
            }
        }
        // Pass 2: typed objects.
        self.slices_in_text = false;
        let docs = serde_yaml_ng::Deserializer::from_str(text).zip(&headers).enumerate();
        for (doc_index, (doc, header)) in docs {
            let Some(h) = header else { continue };
            if is_list(h) {
                let items: &[Option<ItemHeader>] = h.items.as_deref().unwrap_or(&[]);
                let dispatch: Vec<Dispatch> = items
                    .iter()
                    .map(|it| match it {
                        Some(it) => dispatch(it.api_version.as_deref(), it.kind.as_deref()),
                        None => Dispatch::Null,
                    })
                    .collect();
                let label = |i: usize| {
                    let it = items.get(i).and_then(Option::as_ref)?;
                    let d = dispatch.get(i)?;
                    object_label(it.kind.as_deref(), it.metadata.as_ref(), d)
                        .map(|l| format!("items[{i}] {l}"))
                };
                let current = Cell::new(None);
                let parsed = ListSeed { dispatch: &dispatch, current: &current }
                    .deserialize(doc)
                    .map_err(|e| {
                    let item = current.get();
                    let object = item.and_then(label);
                    yaml_error(&e, origin, object, item, LoadErrorKind::Invalid)
                })?;
                for (i, p) in parsed.into_iter().enumerate() {
                    let object = label(i).unwrap_or_default();
                    self.accept(p, origin, &object, ObjectAt { doc: doc_index, item: Some(i) })?;
                }
            } else {
                let d = dispatch(h.api_version.as_deref(), h.kind.as_deref());
                let object = object_label(h.kind.as_deref(), h.metadata.as_ref(), &d);
                let kind = if matches!(d, Dispatch::Bad(_)) {
                    LoadErrorKind::NotAnObject
                } else {
                    LoadErrorKind::Invalid
                };
                let parsed = ObjSeed(&d)
                    .deserialize(doc)
                    .map_err(|e| yaml_error(&e, origin, object.clone(), None, kind))?;
                let at = ObjectAt { doc: doc_index, item: None };
                self.accept(parsed, origin, &object.unwrap_or_default(), at)?;
            }
        }
        if self.slices_in_text {
            self.sources.push(Source {
                origin: origin.to_owned(),
                text: text.to_owned(),
                lines_before: self.lines_before,
            });
        }
        Ok(())
    }

    fn warn(&mut self, origin: &str, object: &str, messages: Vec<String>) {
        for m in messages {
            self.warnings.push(format!("{origin}: {object}: {m}"));
        }
    }

    /// Adds one object read from the text being read, found there at `at`.
    fn accept(
        &mut self,
        parsed: Parsed,
        origin: &str,
        object: &str,
        at: ObjectAt,
    ) -> Result<(), LoadError> {
        match parsed {
            Parsed::Service(svc, warns) => {
                self.warn(origin, object, warns);
                let key = (svc.namespace.clone(), svc.name.clone());
                if let Some(&i) = self.service_index.get(&key) {
                    self.warnings
                        .push(format!("{origin}: {object}: appears again; the later one wins"));
                    self.cluster.services[i] = svc;
                } else {
                    self.service_index.insert(key, self.cluster.services.len());
                    self.cluster.services.push(svc);
                }
            }
            Parsed::Slice(slice, warns) => {
                self.warn(origin, object, warns);
                if let Some(slice) = slice {
                    // This text is kept (as source number `sources.len()`) once it is read.
                    self.slices_in_text = true;
                    let from = (self.sources.len(), at);
                    let key = (slice.namespace.clone(), slice.name.clone());
                    if let Some(&i) = self.slice_index.get(&key) {
                        self.warnings
                            .push(format!("{origin}: {object}: appears again; the later one wins"));
                        self.cluster.endpoint_slices[i] = slice;
                        self.slice_at[i] = from;
                    } else {
                        self.slice_index.insert(key, self.cluster.endpoint_slices.len());
                        self.cluster.endpoint_slices.push(slice);
                        self.slice_at.push(from);
                    }
                }
            }
            Parsed::Endpoints(legacy) => self.legacy.push(legacy),
            Parsed::Node(node) => {
                if let Some(&i) = self.node_index.get(&node.name) {
                    self.warnings
                        .push(format!("{origin}: {object}: appears again; the later one wins"));
                    self.cluster.nodes[i] = node;
                } else {
                    self.node_index.insert(node.name.clone(), self.cluster.nodes.len());
                    self.cluster.nodes.push(node);
                }
            }
            Parsed::ProxyConfig(cfg, warns) => {
                self.warn(origin, object, warns);
                self.set_config(cfg, format!("{origin}: {object}"));
            }
            Parsed::ServiceCidr(cidrs) => {
                for c in cidrs {
                    if !self.cluster.service_cidrs.contains(&c) {
                        self.cluster.service_cidrs.push(c);
                    }
                }
            }
            Parsed::ConfigMap(None) => self.skip("ConfigMap"),
            Parsed::ConfigMap(Some(text)) => {
                // The embedded text is loaded like a file of its own; its errors name the
                // ConfigMap, and lines count from the start of the data value.
                let inner_origin = format!("{origin}: {object}: data");
                let mut inner = Builder::default();
                inner.add_text(&text, &inner_origin)?;
                match inner.config_from.take() {
                    Some(from) => {
                        let Loaded { cluster, warnings } = inner.finish();
                        self.warnings.extend(warnings);
                        self.set_config(cluster.config, from);
                    }
                    None => self.warnings.push(format!(
                        "{inner_origin}: mentions {PROXY_CONFIG_KIND} but holds none; ignored"
                    )),
                }
            }
            Parsed::Skipped(kind) => self.skip(&kind),
            Parsed::Nothing => {}
        }
        Ok(())
    }

    /// Warns about each EndpointSlice port that no port of its Service has (same name and
    /// protocol), naming the file and line of the port: kube-proxy gives it to no Service port,
    /// so a Service whose slices all miss its port names has no endpoints. Slices of a Service
    /// the input does not have are left alone, as are legacy Endpoints.
    fn warn_unmatched_slice_ports(&mut self) {
        let services: HashMap<(&str, &str), &Service> = self
            .cluster
            .services
            .iter()
            .map(|s| ((s.namespace.as_str(), s.name.as_str()), s))
            .collect();
        let describe = |name: &str, proto: Protocol| match name {
            "" => format!("unnamed/{}", proto.as_str()),
            n => format!("'{n}'/{}", proto.as_str()),
        };
        let mut warnings = Vec::new();
        let mut more = 0;
        for (slice, (source, at)) in self.cluster.endpoint_slices.iter().zip(&self.slice_at) {
            let key = (slice.namespace.as_str(), slice.service_name.as_str());
            let Some(svc) = services.get(&key) else { continue };
            for (j, port) in slice.ports.iter().enumerate() {
                if svc.ports.iter().any(|p| p.name == port.name && p.protocol == port.protocol) {
                    continue;
                }
                if warnings.len() == MAX_PORT_WARNINGS {
                    more += 1;
                    continue;
                }
                let place =
                    self.sources.get(*source).map_or(String::new(), |src| match locate::port_line(
                        &src.text, *at, j,
                    ) {
                        Some(line) => format!("{}:{}: ", src.origin, line + src.lines_before),
                        None => format!("{}: ", src.origin),
                    });
                let theirs: Vec<String> =
                    svc.ports.iter().map(|p| describe(&p.name, p.protocol)).collect();
                warnings.push(format!(
                    "{place}EndpointSlice {}/{}: ports[{j}]: port {} matches no port of Service \
                     {}/{} ({}); kube-proxy ignores it",
                    slice.namespace,
                    slice.name,
                    describe(&port.name, port.protocol),
                    svc.namespace,
                    svc.name,
                    theirs.join(", "),
                ));
            }
        }
        if more > 0 {
            warnings.push(format!(
                "{more} more EndpointSlice port{} match no port of their Service",
                if more == 1 { "" } else { "s" }
            ));
        }
        self.warnings.extend(warnings);
    }

    fn set_config(&mut self, cfg: ProxyConfig, from: String) {
        if let Some(prev) = self.config_from.replace(from.clone()) {
            self.warnings.push(format!(
                "{from}: a second KubeProxyConfiguration; it replaces the one from {prev}"
            ));
        }
        self.cluster.config = cfg;
    }

    fn skip(&mut self, kind: &str) {
        match self.skipped.iter_mut().find(|(k, _)| k == kind) {
            Some((_, n)) => *n += 1,
            None => self.skipped.push((kind.to_owned(), 1)),
        }
    }

    fn finish(mut self) -> Loaded {
        for legacy in std::mem::take(&mut self.legacy) {
            let has_slices = self
                .cluster
                .endpoint_slices
                .iter()
                .any(|s| s.namespace == legacy.namespace && s.service_name == legacy.name);
            if !has_slices {
                for slice in legacy.slices {
                    let key = (slice.namespace.clone(), slice.name.clone());
                    self.slice_index.insert(key, self.cluster.endpoint_slices.len());
                    self.cluster.endpoint_slices.push(slice);
                }
            }
        }
        for (kind, n) in &self.skipped {
            let s = if *n == 1 { "" } else { "s" };
            self.warnings.push(format!("skipped {n} object{s} of kind {kind}"));
        }
        Loaded { cluster: self.cluster, warnings: self.warnings }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::model::{
        AddressType, DetectLocalMode, IpFamily, IpMode, Protocol, ProxyMode, ServiceType,
        SessionAffinity, TargetPort, TrafficPolicy,
    };

    const KUBECTL_LIST_YAML: &str = include_str!("../../tests/data/manifests/kubectl-list.yaml");
    const KUBECTL_LIST_JSON: &str = include_str!("../../tests/data/manifests/kubectl-list.json");
    const KUBEADM_CONFIGMAP: &str =
        include_str!("../../tests/data/manifests/kube-proxy-configmap.yaml");

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn svc(spec: &str) -> String {
        format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n{spec}")
    }

    fn err(text: &str) -> LoadError {
        load_str(text, "t.yaml").unwrap_err()
    }

    #[test]
    fn kubectl_list_yaml_keeps_order_and_skips_pods_with_one_warning() {
        let loaded = load_str(KUBECTL_LIST_YAML, "list.yaml").unwrap();
        let c = &loaded.cluster;
        let names: Vec<String> = c.services.iter().map(|s| s.namespaced_name()).collect();
        assert_eq!(names, ["default/kubernetes", "shop/web", "shop/db", "shop/legacy"]);
        let slices: Vec<&str> = c.endpoint_slices.iter().map(|s| s.name.as_str()).collect();
        // web's Endpoints is not converted (web has a slice); legacy's is, after the slices.
        assert_eq!(slices, ["web-7x2kq", "legacy-subset0"]);
        assert_eq!(c.nodes.len(), 1);
        assert!(loaded.warnings.contains(&"skipped 2 objects of kind Pod".to_owned()));
        assert_eq!(loaded.warnings.iter().filter(|w| w.contains("Pod")).count(), 1);
    }

    #[test]
    fn kubectl_list_yaml_service_fields() {
        let c = load_str(KUBECTL_LIST_YAML, "list.yaml").unwrap().cluster;
        let web = &c.services[1];
        assert_eq!(web.service_type, ServiceType::LoadBalancer);
        assert_eq!(web.cluster_ips, [ip("10.96.120.7")]);
        assert_eq!(web.external_ips, [ip("192.0.2.10")]);
        let ranges: Vec<String> =
            web.load_balancer_source_ranges.iter().map(|n| n.to_string()).collect();
        assert_eq!(ranges, ["203.0.113.0/24", "198.51.0.0/16"]);
        assert_eq!(web.load_balancer_ingress.len(), 2);
        assert_eq!(web.load_balancer_ingress[0].ip, ip("198.51.100.20"));
        assert_eq!(web.load_balancer_ingress[0].ip_mode, Some(IpMode::Vip));
        assert_eq!(web.load_balancer_ingress[1].ip_mode, Some(IpMode::Proxy));
        assert_eq!(web.session_affinity, SessionAffinity::ClientIp { timeout_seconds: 600 });
        assert_eq!(web.external_traffic_policy, TrafficPolicy::Local);
        assert_eq!(web.health_check_node_port, Some(31999));
        assert_eq!(web.ports[0].target_port, TargetPort::Name("http".into()));
        assert_eq!(web.ports[0].node_port, Some(30080));
        assert_eq!(web.ports[1].target_port, TargetPort::Number(9090));
        assert_eq!(web.port_name(&web.ports[1]), "shop/web:metrics");
        let db = &c.services[2];
        assert!(db.cluster_ips.is_empty(), "headless");
        assert_eq!(db.ports[0].target_port, TargetPort::Number(5432));
        assert_eq!(c.services[3].ports[0].protocol, Protocol::Udp);
    }

    #[test]
    fn kubectl_list_yaml_warns_for_what_kube_proxy_ignores() {
        let w = load_str(KUBECTL_LIST_YAML, "list.yaml").unwrap().warnings;
        let has = |s: &str| w.iter().any(|x| x.contains(s));
        assert!(has(
            "list.yaml: items[1] Service shop/web: spec.externalIPs[1]: 'not-an-ip' is not an IP \
             address; ignored, as kube-proxy does"
        ));
        assert!(has("spec.loadBalancerSourceRanges[2]: '10.0.0.0/40' is not a CIDR"));
        assert!(has("items[5] EndpointSlice shop/orphan-abcde: metadata.labels: no \
             'kubernetes.io/service-name' label; skipped, as kube-proxy does"));
        assert_eq!(w.len(), 4, "{w:#?}");
    }

    #[test]
    fn endpoint_conditions_default_as_kube_proxy_reads_them() {
        let c = load_str(KUBECTL_LIST_YAML, "list.yaml").unwrap().cluster;
        let s = &c.endpoint_slices[0];
        assert_eq!(s.service_name, "web");
        assert_eq!(s.address_type, AddressType::IPv4);
        let e = &s.endpoints;
        assert!(e[0].ready && e[0].serving && !e[0].terminating);
        assert_eq!(e[0].zone.as_deref(), Some("zone-1"));
        assert_eq!(e[0].node_name.as_deref(), Some("node-a"));
        assert!(!e[1].ready && e[1].serving && e[1].terminating);
        // `conditions: {}`: nil ready and serving are true, nil terminating is false.
        assert!(e[2].ready && e[2].serving && !e[2].terminating);
        assert_eq!(e[2].node_name, None);
        assert_eq!(s.ports[1].name, "metrics");
        assert_eq!(s.ports[1].protocol, Protocol::Tcp);
    }

    #[test]
    fn legacy_endpoints_become_slices_only_without_slices() {
        let c = load_str(KUBECTL_LIST_YAML, "list.yaml").unwrap().cluster;
        let legacy: Vec<_> =
            c.endpoint_slices.iter().filter(|s| s.service_name == "legacy").collect();
        assert_eq!(legacy.len(), 1);
        let e = &legacy[0].endpoints;
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].addresses[0], e[0].ready, e[0].serving), (ip("10.244.3.3"), true, true));
        assert_eq!((e[1].addresses[0], e[1].ready, e[1].serving), (ip("10.244.3.4"), false, true));
        assert_eq!(legacy[0].ports[0].port, Some(8080));
        assert_eq!(legacy[0].ports[0].protocol, Protocol::Udp);
        assert_eq!(c.endpoint_slices.iter().filter(|s| s.service_name == "web").count(), 1);
    }

    #[test]
    fn node_keeps_ip_addresses_and_pod_cidrs() {
        let c = load_str(KUBECTL_LIST_YAML, "list.yaml").unwrap().cluster;
        let n = &c.nodes[0];
        assert_eq!(n.name, "node-a");
        assert_eq!(n.addresses.len(), 1, "the Hostname entry is not an IP");
        assert_eq!(
            (n.addresses[0].kind.as_str(), n.addresses[0].address),
            ("InternalIP", ip("192.168.10.11"))
        );
        assert_eq!(n.pod_cidrs, ["10.244.1.0/24".parse().unwrap()]);
    }

    #[test]
    fn json_list_loads_dual_stack() {
        let c = load_str(KUBECTL_LIST_JSON, "list.json").unwrap().cluster;
        let s = &c.services[0];
        assert_eq!(s.cluster_ips, [ip("10.96.7.7"), ip("fd00:10:96::7")]);
        assert_eq!(s.ip_families, [IpFamily::V4, IpFamily::V6]);
        assert_eq!(s.cluster_ip(IpFamily::V6), Some(ip("fd00:10:96::7")));
        let sl = &c.endpoint_slices[0];
        assert_eq!(sl.address_type, AddressType::IPv6);
        assert!(sl.endpoints[0].serving, "nil serving is true");
    }

    #[test]
    fn multi_document_yaml_with_json_documents_and_empty_ones() {
        let text = "---\n# nothing here\n---\napiVersion: v1\nkind: Service\nmetadata: {name: a}\n\
                    spec: {clusterIP: 10.96.0.1, ports: [{port: 53, protocol: UDP}]}\n---\n\
                    {\"apiVersion\": \"v1\", \"kind\": \"Node\", \
                    \"metadata\": {\"name\": \"n1\"}}\n\
                    ---\n...\n";
        let c = load_str(text, "t.yaml").unwrap().cluster;
        assert_eq!(c.services[0].name, "a");
        assert_eq!(c.nodes[0].name, "n1");
        assert!(c.nodes[0].pod_cidrs.is_empty());
    }

    #[test]
    fn service_defaults_from_the_api_server() {
        let c = load_str(&svc("  clusterIP: 10.96.0.9\n  ports:\n  - port: 80\n"), "t").unwrap();
        let s = &c.cluster.services[0];
        assert_eq!(s.namespace, "default");
        assert_eq!(s.service_type, ServiceType::ClusterIP);
        assert_eq!(s.cluster_ips, [ip("10.96.0.9")]);
        assert_eq!(s.ports[0].name, "");
        assert_eq!(s.ports[0].protocol, Protocol::Tcp);
        assert_eq!(s.ports[0].target_port, TargetPort::Number(80));
        assert_eq!(s.ports[0].node_port, None);
        assert_eq!(s.session_affinity, SessionAffinity::None);
        assert_eq!(s.external_traffic_policy, TrafficPolicy::Cluster);
        assert_eq!(s.internal_traffic_policy, TrafficPolicy::Cluster);
        assert_eq!(s.health_check_node_port, None);
        assert_eq!(s.ip_families, [IpFamily::V4], "derived from the cluster IP");
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn client_ip_affinity_defaults_to_three_hours() {
        let text =
            svc("  clusterIP: 10.96.0.9\n  sessionAffinity: ClientIP\n  ports: [{port: 80}]\n");
        let s = &load_str(&text, "t").unwrap().cluster.services[0];
        assert_eq!(s.session_affinity, SessionAffinity::ClientIp { timeout_seconds: 10800 });
    }

    #[test]
    fn target_port_zero_or_empty_defaults_to_port_and_global_means_cluster() {
        let text =
            svc("  type: NodePort\n  clusterIP: 10.96.0.9\n  externalTrafficPolicy: Global\n  \
             ports:\n  \
             - {name: a, port: 80, targetPort: 0}\n  - {name: b, port: 81, targetPort: ''}\n");
        let s = &load_str(&text, "t").unwrap().cluster.services[0];
        assert_eq!(s.ports[0].target_port, TargetPort::Number(80));
        assert_eq!(s.ports[1].target_port, TargetPort::Number(81));
        assert_eq!(s.external_traffic_policy, TrafficPolicy::Cluster);
    }

    #[test]
    fn cluster_ip_with_leading_zeros_is_read_sloppily() {
        let s =
            load_str(&svc("  clusterIP: 010.096.000.010\n  ports: [{port: 80}]\n"), "t").unwrap();
        assert_eq!(s.cluster.services[0].cluster_ips, [ip("10.96.0.10")]);
    }

    #[test]
    fn external_name_and_headless_need_no_ports() {
        let en = svc("  type: ExternalName\n  externalName: db.example.com\n");
        assert!(load_str(&en, "t").unwrap().cluster.services[0].cluster_ips.is_empty());
        let hl = svc("  clusterIP: None\n");
        assert!(load_str(&hl, "t").unwrap().cluster.services[0].ports.is_empty());
    }

    #[test]
    fn service_without_cluster_ip_loads_with_a_warning() {
        let l = load_str(&svc("  ports: [{port: 80}]\n"), "t").unwrap();
        assert!(l.cluster.services[0].cluster_ips.is_empty());
        assert!(l.warnings[0].contains("spec.clusterIP: not set"), "{:?}", l.warnings);
    }

    #[test]
    fn configmap_embedded_kube_proxy_configuration() {
        let l = load_str(KUBEADM_CONFIGMAP, "cm.yaml").unwrap();
        let cfg = &l.cluster.config;
        assert_eq!(cfg.mode, ProxyMode::Ipvs);
        let cidrs: Vec<String> = cfg.cluster_cidrs.iter().map(|c| c.to_string()).collect();
        assert_eq!(cidrs, ["10.244.0.0/16", "fd00:10:244::/56"]);
        assert_eq!(cfg.hostname_override, None, "an empty hostnameOverride is unset");
        assert_eq!(cfg.masquerade_bit, 14);
        assert!(cfg.localhost_node_ports);
        assert_eq!(cfg.detect_local_mode, DetectLocalMode::ClusterCIDR);
        assert_eq!(cfg.ipvs_scheduler, "");
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    }

    #[test]
    fn nftables_section_and_service_cidrs() {
        let text = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
                    mode: nftables\niptables: {masqueradeAll: false, masqueradeBit: 15}\n\
                    nftables: {masqueradeAll: true, masqueradeBit: 12}\n---\n\
                    apiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata: {name: kubernetes}\n\
                    spec: {cidrs: [10.96.0.0/16, 'fd00:10:96::/112']}\n";
        let l = load_str(text, "t").unwrap();
        let cfg = &l.cluster.config;
        assert_eq!((cfg.nft_masquerade_all, cfg.nft_masquerade_bit), (true, 12));
        assert_eq!((cfg.masquerade_all, cfg.masquerade_bit), (false, 15));
        assert_eq!(cfg.nft_masquerade_mark(), 0x1000);
        let cidrs: Vec<String> = l.cluster.service_cidrs.iter().map(|c| c.to_string()).collect();
        assert_eq!(cidrs, ["10.96.0.0/16", "fd00:10:96::/112"]);
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        let bad = text.replace("10.96.0.0/16", "10.96.0.0/33");
        let e = load_str(&bad, "t").unwrap_err().to_string();
        assert!(e.contains("spec.cidrs[0]: '10.96.0.0/33' is not a CIDR"), "{e}");
    }

    #[test]
    fn configmap_without_proxy_config_is_skipped() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: b}\n";
        let l = load_str(text, "t").unwrap();
        assert_eq!(l.warnings, ["skipped 1 object of kind ConfigMap"]);
    }

    #[test]
    fn configmap_embedded_errors_name_the_configmap() {
        let text = KUBEADM_CONFIGMAP.replace("mode: ipvs", "mode: userspace");
        let e = load_str(&text, "cm.yaml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "cm.yaml: ConfigMap kube-system/kube-proxy: data:1: KubeProxyConfiguration: mode: \
             'userspace' is not a Linux proxy mode: use iptables, ipvs or nftables"
        );
    }

    #[test]
    fn proxy_configuration_fields() {
        let text = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
                    hostnameOverride: node-b\nmode: nftables\nclusterCIDR: 10.1.0.0/16\n\
                    detectLocalMode: BridgeInterface\ndetectLocal: {bridgeInterface: cbr0}\n\
                    iptables: {masqueradeAll: true, masqueradeBit: 15, localhostNodePorts: false}\n\
                    nodePortAddresses: [primary, 192.168.0.0/16]\nipvs: {scheduler: wrr}\n";
        let cfg = load_str(text, "t").unwrap().cluster.config;
        assert_eq!(cfg.hostname_override.as_deref(), Some("node-b"));
        assert_eq!(cfg.mode, ProxyMode::Nftables);
        assert_eq!(cfg.detect_local_mode, DetectLocalMode::BridgeInterface);
        assert_eq!(cfg.detect_local_interface.as_deref(), Some("cbr0"));
        assert!(cfg.masquerade_all);
        assert_eq!(cfg.masquerade_mark(), 0x8000);
        assert!(!cfg.localhost_node_ports);
        assert_eq!(cfg.node_port_addresses, ["primary", "192.168.0.0/16"]);
        assert_eq!(cfg.ipvs_scheduler, "wrr");
    }

    #[test]
    fn bridge_interface_mode_needs_its_interface() {
        let text = "kind: KubeProxyConfiguration\ndetectLocalMode: BridgeInterface\n";
        assert_eq!(
            err(text).to_string(),
            "t.yaml:1: KubeProxyConfiguration: detectLocal.bridgeInterface: required when \
             detectLocalMode is BridgeInterface"
        );
    }

    #[test]
    fn a_second_proxy_configuration_replaces_the_first_with_a_warning() {
        let text = "kind: KubeProxyConfiguration\nmode: ipvs\n---\nkind: KubeProxyConfiguration\n";
        let l = load_str(text, "t").unwrap();
        assert_eq!(l.cluster.config.mode, ProxyMode::Iptables);
        assert_eq!(l.warnings.len(), 1);
        assert!(l.warnings[0].contains("a second KubeProxyConfiguration"));
    }

    #[test]
    fn error_port_out_of_range_names_file_line_object_and_field() {
        let text = svc("  clusterIP: 10.96.0.9\n  ports:\n  - name: http\n    port: 70000\n");
        let e = err(&text);
        assert_eq!(
            e.to_string(),
            "t.yaml:9: Service default/web: spec.ports[0].port: 70000 is out of range 1-65535"
        );
        assert_eq!(e.kind, LoadErrorKind::Invalid);
        assert_eq!(e.line, Some(9));
    }

    #[test]
    fn error_in_a_list_item_names_the_item() {
        let text = KUBECTL_LIST_YAML.replace("port: 5432", "port: 0");
        let e = load_str(&text, "list.yaml").unwrap_err();
        assert_eq!(e.object.as_deref(), Some("items[2] Service shop/db"));
        assert_eq!(e.message, "spec.ports[0].port: 0 is out of range 1-65535");
        let line = KUBECTL_LIST_YAML.lines().position(|l| l.contains("port: 5432")).unwrap() + 1;
        assert_eq!(e.line, Some(line));
    }

    #[test]
    fn error_service_without_ports() {
        let e = err(&svc("  clusterIP: 10.96.0.9\n"));
        assert_eq!(
            e.to_string(),
            "t.yaml:1: Service default/web: spec.ports: a Service needs at least one port \
             (unless it is headless or ExternalName)"
        );
    }

    #[test]
    fn error_invalid_cluster_ip() {
        let e = err(&svc("  clusterIP: 10.96.0.300\n  ports: [{port: 80}]\n"));
        assert_eq!(
            e.to_string(),
            "t.yaml:6: Service default/web: spec.clusterIP: '10.96.0.300' is not an IP address \
             (use an address, \"None\" for a headless Service, or leave it out)"
        );
    }

    #[test]
    fn error_cluster_ip_disagrees_with_cluster_ips() {
        let e =
            err(&svc("  clusterIP: 10.96.0.1\n  clusterIPs: [10.96.0.2]\n  ports: [{port: 80}]\n"));
        assert!(e.message.contains("spec.clusterIP: '10.96.0.1' differs from spec.clusterIPs[0]"));
    }

    #[test]
    fn error_unnamed_ports_in_a_multi_port_service() {
        let e = err(&svc("  clusterIP: 10.96.0.1\n  ports: [{port: 80}, {port: 81}]\n"));
        assert!(e.message.starts_with("spec.ports[0].name: required"), "{e}");
    }

    #[test]
    fn error_node_port_on_cluster_ip_service() {
        let e = err(&svc("  clusterIP: 10.96.0.1\n  ports: [{port: 80, nodePort: 30080}]\n"));
        assert!(e.message.contains("30080 may not be used when type is ClusterIP"), "{e}");
    }

    #[test]
    fn error_quoted_numeric_target_port() {
        let e = err(&svc("  clusterIP: 10.96.0.1\n  ports: [{port: 80, targetPort: '8080'}]\n"));
        assert!(
            e.message.starts_with("spec.ports[0].targetPort: '8080' is a quoted number"),
            "{e}"
        );
    }

    #[test]
    fn error_lower_case_protocol() {
        let e = err(&svc("  clusterIP: 10.96.0.1\n  ports: [{port: 80, protocol: tcp}]\n"));
        assert_eq!(
            e.message,
            "spec.ports[0].protocol: unsupported protocol 'tcp': use TCP, UDP or SCTP (upper case)"
        );
    }

    #[test]
    fn error_unknown_service_type() {
        let e = err(&svc("  type: Internal\n"));
        assert!(e.message.starts_with("spec.type: unknown variant `Internal`"), "{e}");
        assert_eq!(e.line, Some(6));
    }

    #[test]
    fn error_slice_address_of_the_wrong_family() {
        let text = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: s\n  \
                    labels: {kubernetes.io/service-name: web}\naddressType: IPv4\n\
                    endpoints:\n- addresses: [fd00::1]\n";
        let e = err(text);
        assert_eq!(
            e.to_string(),
            "t.yaml:1: EndpointSlice default/s: endpoints[0].addresses[0]: 'fd00::1' is not an \
             IPv4 address, as addressType says"
        );
    }

    #[test]
    fn error_malformed_yaml_has_line_and_column() {
        let e = err("apiVersion: v1\nkind: Service\nmetadata:\n  name: [web\n");
        assert_eq!(e.kind, LoadErrorKind::Syntax);
        assert!(e.line.is_some() && e.column.is_some());
        assert!(e.to_string().starts_with(&format!(
            "t.yaml:{}:{}: malformed YAML/JSON: ",
            e.line.unwrap(),
            e.column.unwrap()
        )));
    }

    #[test]
    fn error_document_that_is_not_an_object() {
        let e = err("just a string\n");
        assert_eq!(e.kind, LoadErrorKind::NotAnObject);
        assert!(e.message.contains("expected a Kubernetes object"), "{e}");
        let e = err("apiVersion: v1\nmetadata: {name: x}\n");
        assert_eq!(e.to_string(), "t.yaml:1: kind: missing (is this a Kubernetes object?)");
    }

    #[test]
    fn yaml_bomb_fails_fast_with_a_clear_error() {
        let mut text = String::from("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bomb\n");
        let lols = ["\"lol\""; 9].join(",");
        text.push_str(&format!("  labels:\n    a: &a [{lols}]\n"));
        let mut prev = 'a';
        for name in ['b', 'c', 'd', 'e', 'f', 'g', 'h', 'i'] {
            let refs = vec![format!("*{prev}"); 9].join(",");
            text.push_str(&format!("    {name}: &{name} [{refs}]\n"));
            prev = name;
        }
        let start = Instant::now();
        let e = err(&text);
        assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
        assert_eq!(e.kind, LoadErrorKind::TooComplex);
        assert!(e.message.contains("billion laughs"), "{e}");
    }

    #[test]
    fn a_few_aliases_are_fine() {
        let text = "kind: Service\nmetadata: {name: a}\nspec:\n  clusterIP: &ip 10.96.0.1\n  \
                    clusterIPs: [*ip]\n  ports: [{port: 80}]\n";
        assert_eq!(load_str(text, "t").unwrap().cluster.services[0].cluster_ips, [ip("10.96.0.1")]);
    }

    #[test]
    fn deep_nesting_never_overflows_the_stack() {
        // Skipped objects are stepped over without recursion.
        let deep = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
        let l = load_str(&format!("kind: Pod\nspec: {deep}\n"), "t").unwrap();
        assert_eq!(l.warnings, ["skipped 1 object of kind Pod"]);
        // The counting pass (run when aliases may be present) stops at 128 levels.
        let text = format!("kind: Pod\nmetadata: {{name: &n x, namespace: *n}}\nspec: {deep}\n");
        let e = err(&text);
        assert_eq!(e.kind, LoadErrorKind::TooComplex);
        assert!(e.message.contains("128 levels"), "{e}");
        // A typed field gets a type error, not a deep walk.
        let e = err(&format!("kind: Service\nmetadata: {{name: s}}\nspec: {deep}\n"));
        assert_eq!(e.kind, LoadErrorKind::Invalid);
    }

    #[test]
    fn service_of_another_api_group_is_skipped() {
        let text =
            "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: k}\nspec: {}\n";
        let l = load_str(text, "t").unwrap();
        assert!(l.cluster.services.is_empty());
        assert_eq!(l.warnings, ["skipped 1 object of kind Service (serving.knative.dev/v1)"]);
    }

    #[test]
    fn v1beta1_slice_reads_topology() {
        let text = "apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata:\n  \
                    name: s\n  namespace: ns\n  labels: {kubernetes.io/service-name: web}\n\
                    addressType: IPv4\nendpoints:\n- addresses: [10.0.0.1]\n  topology:\n    \
                    kubernetes.io/hostname: n1\n    topology.kubernetes.io/zone: z1\n";
        let c = load_str(text, "t").unwrap().cluster;
        let e = &c.endpoint_slices[0].endpoints[0];
        assert_eq!((e.node_name.as_deref(), e.zone.as_deref()), (Some("n1"), Some("z1")));
    }

    #[test]
    fn topology_hints_node_zone_and_the_node_hint_gate_are_read() {
        let text = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: s\n  \
                    namespace: ns\n  labels: {kubernetes.io/service-name: web}\naddressType: IPv4\n\
                    endpoints:\n- addresses: [10.0.0.1]\n  hints:\n    forZones: [{name: z1}, \
                    {name: z2}]\n    forNodes: [{name: n1}]\n- addresses: [10.0.0.2]\n\
                    ---\nkind: Node\nmetadata:\n  name: n1\n  labels: \
                    {topology.kubernetes.io/zone: z1}\n\
                    ---\nkind: Node\nmetadata: {name: n2}\n\
                    ---\napiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
                    featureGates: {PreferSameTrafficDistribution: false, SomeOtherGate: true}\n";
        let loaded = load_str(text, "t").unwrap();
        assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
        assert!(loaded.warnings[0].contains("featureGates.SomeOtherGate=true: ignored"));
        let c = loaded.cluster;
        let eps = &c.endpoint_slices[0].endpoints;
        assert_eq!(eps[0].zone_hints, ["z1", "z2"]);
        assert_eq!(eps[0].node_hints, ["n1"]);
        assert!(eps[1].zone_hints.is_empty() && eps[1].node_hints.is_empty());
        assert_eq!(c.nodes[0].zone.as_deref(), Some("z1"));
        assert_eq!(c.nodes[1].zone, None);
        assert_eq!(c.node_view(Some("n1"), &[]).unwrap().zone.as_deref(), Some("z1"));
        assert!(!c.config.prefer_same_traffic_distribution);
        let default = load_str("kind: KubeProxyConfiguration\n", "t").unwrap().cluster.config;
        assert!(default.prefer_same_traffic_distribution);
    }

    #[test]
    fn primary_node_address_is_the_first_internal_ip_whatever_the_status_order() {
        let text = "kind: Node\nmetadata: {name: n1}\nstatus:\n  addresses:\n  \
                    - {type: ExternalIP, address: 203.0.113.7}\n  - {type: Hostname, address: n1}\n  \
                    - {type: InternalIP, address: 192.168.1.10}\n";
        let c = load_str(text, "t").unwrap().cluster;
        let view = c.node_view(None, &[]).unwrap();
        assert_eq!(
            view.addresses[..2],
            ["192.168.1.10".parse::<IpAddr>().unwrap(), "203.0.113.7".parse().unwrap()]
        );
    }

    #[test]
    fn duplicate_port_names_and_ports_are_refused_as_the_api_server_does() {
        let e = load_str(
            &svc("  clusterIP: 10.96.0.1\n  ports:\n  - {name: a, port: 80}\n  - {name: a, port: 81}\n"),
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("spec.ports[1].name: 'a' is already the name of spec.ports[0]"), "{e}");
        let e = load_str(
            &svc("  clusterIP: 10.96.0.1\n  ports:\n  - {name: a, port: 80}\n  - {name: b, port: 80}\n"),
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("spec.ports[1]: TCP port 80 is already spec.ports[0]"), "{e}");
        // The same port number over two protocols is fine (DNS).
        let ok = svc(
            "  clusterIP: 10.96.0.1\n  ports:\n  - {name: a, port: 53}\n  - {name: b, port: 53, protocol: UDP}\n",
        );
        assert_eq!(load_str(&ok, "t").unwrap().cluster.services[0].ports.len(), 2);
    }

    #[test]
    fn fqdn_slices_keep_no_addresses() {
        let text = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: s\n  \
                    labels: {kubernetes.io/service-name: web}\naddressType: FQDN\n\
                    endpoints:\n- addresses: [db.example.com]\n";
        let c = load_str(text, "t").unwrap().cluster;
        assert_eq!(c.endpoint_slices[0].address_type, AddressType::Fqdn);
        assert!(c.endpoint_slices[0].endpoints[0].addresses.is_empty());
    }

    #[test]
    fn duplicate_object_is_replaced_in_place_with_a_warning() {
        let a = svc("  clusterIP: 10.96.0.1\n  ports: [{port: 80}]\n");
        let b = "---\nkind: Node\nmetadata: {name: n}\n---\n".to_owned()
            + &svc("  clusterIP: 10.96.0.2\n  ports: [{port: 80}]\n");
        let l = load_str(&(a + &b), "t").unwrap();
        assert_eq!(l.cluster.services.len(), 1);
        assert_eq!(l.cluster.services[0].cluster_ips, [ip("10.96.0.2")]);
        assert_eq!(l.warnings, ["t: Service default/web: appears again; the later one wins"]);
    }

    #[test]
    fn load_paths_merges_files_and_directories_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("more");
        std::fs::create_dir(&sub).unwrap();
        let first = dir.path().join("a.yaml");
        std::fs::write(&first, KUBECTL_LIST_YAML).unwrap();
        std::fs::write(sub.join("2.json"), KUBECTL_LIST_JSON).unwrap();
        std::fs::write(sub.join("1.yml"), KUBEADM_CONFIGMAP).unwrap();
        std::fs::write(sub.join("notes.txt"), "not yaml: [").unwrap();
        let l = load_paths(&[first, sub]).unwrap();
        assert_eq!(l.cluster.services.len(), 5);
        assert_eq!(l.cluster.services[4].namespaced_name(), "prod/api");
        assert_eq!(l.cluster.config.mode, ProxyMode::Ipvs);
        assert!(l.warnings[0].starts_with(&dir.path().join("a.yaml").display().to_string()));
    }

    #[test]
    fn load_path_reports_a_missing_file() {
        let e = load_path(Path::new("/nonexistent/svcpath/x.yaml")).unwrap_err();
        assert_eq!(e.kind, LoadErrorKind::Io);
        assert!(e.to_string().starts_with("/nonexistent/svcpath/x.yaml: cannot read the file"));
    }

    #[test]
    fn concatenated_json_objects_load_and_errors_count_lines_from_the_file_start() {
        let one =
            "{\"apiVersion\": \"v1\", \"kind\": \"Node\", \"metadata\": {\"name\": \"n1\"}}\n";
        let two = "{\n  \"apiVersion\": \"v1\",\n  \"kind\": \"Service\",\n  \"metadata\": \
                   {\"name\": \"s\"},\n  \"spec\": {\"clusterIP\": \"10.96.0.1\",\n    \
                   \"ports\": [{\"port\": 99999}]}\n}\n";
        let c = load_str(&format!("{one}{one}"), "s.json").unwrap();
        assert_eq!(c.cluster.nodes.len(), 1);
        assert_eq!(c.warnings.len(), 1, "the same Node twice");
        let e = load_str(&format!("{one}{two}"), "s.json").unwrap_err();
        assert_eq!(
            e.to_string(),
            "s.json:7: Service default/s: spec.ports[0].port: 99999 is out of range 1-65535"
        );
    }

    #[test]
    fn empty_input_is_an_empty_cluster() {
        let l = load_str("", "t").unwrap();
        assert_eq!(l.cluster, Cluster::default());
        assert!(l.warnings.is_empty());
    }

    const WEB_SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n\
        spec:\n  clusterIP: 10.96.0.5\n  ports:\n  - {name: http, port: 80}\n  \
        - {name: dns, port: 53, protocol: UDP}\n";

    fn web_slice(name: &str, ports: &str) -> String {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  \
             labels: {{kubernetes.io/service-name: web}}\naddressType: IPv4\nports:\n{ports}\
             endpoints:\n- addresses: [10.1.0.1]\n"
        )
    }

    #[test]
    fn slice_port_matching_no_service_port_warns_at_its_line() {
        // Line 10 is the first line of the slice's document: its ports are on lines 17 to 19.
        let text = format!(
            "{WEB_SERVICE}---\n{}",
            web_slice(
                "web-a",
                "- {name: http, port: 8080}\n- {name: dns, port: 53}\n- {port: 9090}\n"
            )
        );
        let l = load_str(&text, "t.yaml").unwrap();
        assert_eq!(
            l.warnings,
            [
                "t.yaml:18: EndpointSlice default/web-a: ports[1]: port 'dns'/tcp matches no port \
                 of Service default/web ('http'/tcp, 'dns'/udp); kube-proxy ignores it",
                "t.yaml:19: EndpointSlice default/web-a: ports[2]: port unnamed/tcp matches no \
                 port of Service default/web ('http'/tcp, 'dns'/udp); kube-proxy ignores it",
            ]
        );
        // The slice is kept as it is: the renderer finds no endpoint for those ports.
        assert_eq!(l.cluster.endpoint_slices[0].ports.len(), 3);
    }

    #[test]
    fn slice_port_warning_locates_list_items_json_values_and_the_later_duplicate() {
        let item = |s: &str| {
            s.lines()
                .enumerate()
                .map(|(i, l)| if i == 0 { format!("- {l}\n") } else { format!("  {l}\n") })
                .collect::<String>()
        };
        let list = format!(
            "apiVersion: v1\nkind: List\nitems:\n{}{}",
            item(&web_slice("web-a", "- {name: https, port: 443}\n")),
            item(WEB_SERVICE)
        );
        let l = load_str(&list, "list.yaml").unwrap();
        assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
        assert!(
            l.warnings[0].starts_with(
                "list.yaml:11: EndpointSlice default/web-a: ports[0]: port 'https'/tcp"
            ),
            "{:?}",
            l.warnings
        );

        let json = |ports: &str| {
            format!(
                "{{\"apiVersion\": \"discovery.k8s.io/v1\", \"kind\": \"EndpointSlice\",\n \
                 \"metadata\": {{\"name\": \"web-a\", \"labels\": \
                 {{\"kubernetes.io/service-name\": \"web\"}}}},\n \"addressType\": \"IPv4\",\n \
                 \"ports\": [\n{ports}]}}\n"
            )
        };
        let svc_json = "{\"apiVersion\": \"v1\", \"kind\": \"Service\", \"metadata\": {\"name\": \
                        \"web\"}, \"spec\": {\"clusterIP\": \"10.96.0.5\", \"ports\": [{\"name\": \
                        \"http\", \"port\": 80}]}}\n";
        // A JSON stream: the slices start on lines 2 and 9; the later one replaces the earlier
        // one of the same name, and the warning names its own port, on line 13.
        let stream = format!(
            "{svc_json}{}{}",
            json("  {\"name\": \"http\", \"port\": 80},\n  {\"name\": \"x\", \"port\": 1}\n"),
            json("  {\"name\": \"y\", \"port\": 1}\n")
        );
        let l = load_str(&stream, "s.json").unwrap();
        let port_warnings: Vec<&String> =
            l.warnings.iter().filter(|w| w.contains("matches no port")).collect();
        assert_eq!(port_warnings.len(), 1, "{:?}", l.warnings);
        assert!(
            port_warnings[0]
                .starts_with("s.json:13: EndpointSlice default/web-a: ports[0]: port 'y'/tcp"),
            "{:?}",
            l.warnings
        );
    }

    #[test]
    fn slice_port_warnings_are_bounded_and_skip_slices_of_unknown_services() {
        let ports: String =
            (0..20).map(|i| format!("- {{name: p{i}, port: {}}}\n", 1000 + i)).collect();
        let text = format!("{WEB_SERVICE}---\n{}", web_slice("web-a", &ports));
        let l = load_str(&text, "t.yaml").unwrap();
        assert_eq!(l.warnings.len(), MAX_PORT_WARNINGS + 1);
        assert_eq!(
            l.warnings[MAX_PORT_WARNINGS],
            "4 more EndpointSlice ports match no port of their Service"
        );
        // Without the Service, nothing is compared.
        assert!(load_str(&web_slice("web-a", &ports), "t.yaml").unwrap().warnings.is_empty());
    }
}
