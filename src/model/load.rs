//! Reading Kubernetes manifests (CONTRACT STUB: being written; keep this API).

use crate::model::Cluster;

/// A loaded cluster plus the non-fatal problems found (one line each).
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The cluster.
    pub cluster: Cluster,
    /// Warnings such as skipped unknown kinds.
    pub warnings: Vec<String>,
}

/// Why a manifest could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct LoadError {
    /// File name or `<embedded …>`.
    pub origin: String,
    /// The problem.
    pub message: String,
}

/// Loads manifests from text.
///
/// # Errors
/// Malformed YAML/JSON or objects.
pub fn load_str(_text: &str, origin: &str) -> Result<Loaded, LoadError> {
    Err(LoadError { origin: origin.to_owned(), message: "not yet written".into() })
}
