//! The embedded default cluster: Service `default/my-app-service`, ClusterIP 10.96.0.10 port 80
//! (`http`) → targetPort 8080 on three ready pods 10.1.0.1-3 on node `node-1` (192.168.1.10),
//! cluster CIDR 10.1.0.0/16. It is the same text as `rulesets/default.yaml`.

use crate::model::Cluster;
use crate::model::load::{self, Loaded};

/// The text of `rulesets/default.yaml`, compiled in.
pub const DEFAULT_YAML: &str = include_str!("../../rulesets/default.yaml");

/// The name under which errors and traces refer to the embedded cluster.
pub const DEFAULT_ORIGIN: &str = "<embedded default cluster>";

/// Loads the embedded default cluster.
///
/// # Panics
/// Never in a released build: a test asserts the embedded text loads without warnings.
pub fn default_cluster() -> Cluster {
    match load::load_str(DEFAULT_YAML, DEFAULT_ORIGIN) {
        Ok(Loaded { cluster, .. }) => cluster,
        Err(e) => panic!("the embedded default cluster does not load: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_cluster_has_one_service_and_three_ready_endpoints() {
        let loaded = load::load_str(DEFAULT_YAML, DEFAULT_ORIGIN).unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let c = loaded.cluster;
        assert_eq!(c.services.len(), 1);
        assert_eq!(c.services[0].name, "my-app-service");
        assert_eq!(
            c.services[0].cluster_ips,
            vec!["10.96.0.10".parse::<std::net::IpAddr>().unwrap()]
        );
        let eps: Vec<_> = c.endpoint_slices.iter().flat_map(|s| &s.endpoints).collect();
        assert_eq!(eps.len(), 3);
        assert!(eps.iter().all(|e| e.ready));
        assert_eq!(c.config.cluster_cidrs, vec!["10.1.0.0/16".parse().unwrap()]);
    }
}
