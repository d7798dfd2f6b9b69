//! Shoal's routing policies in plain Rust, shared by the `router-default` and
//! `router-canary` Wasm components and tested natively.
//!
//! A router turns one Service and its endpoints into [`Route`]s: a relative
//! weight per endpoint address and the nodes or zones whose proxies should
//! use it. The EndpointSlice controller writes them into the slices as
//! `hints.forNodes` / `hints.forZones` and the `routing.shoal.dev/weights`
//! annotation.
//!
//! - [`traffic_distribution`]: Kubernetes `spec.trafficDistribution`.
//! - [`Canary`]: weighted split between groups of endpoints by a pod label.

#![forbid(unsafe_code)]

use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// One endpoint of a service, as the router world passes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// IP address.
    pub address: String,
    /// Node the endpoint runs on.
    pub node: Option<String>,
    /// Zone of that node.
    pub zone: Option<String>,
    /// Ready for traffic.
    pub ready: bool,
    /// Serving (possibly while terminating).
    pub serving: bool,
    /// Terminating.
    pub terminating: bool,
    /// Labels of the backing pod.
    pub labels: Vec<(String, String)>,
}

impl Endpoint {
    /// The value of one pod label.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Where one endpoint receives traffic from, and with what weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Endpoint address.
    pub address: String,
    /// Relative weight (0 = no new connections).
    pub weight: u32,
    /// Nodes whose proxies should use the endpoint; empty = all.
    pub for_nodes: Vec<String>,
    /// Zones whose proxies should use the endpoint; empty = all.
    pub for_zones: Vec<String>,
}

impl Route {
    /// Weight 1, no hints: what a Service without a routing preference gets.
    pub fn plain(address: &str) -> Route {
        Route {
            address: address.to_string(),
            weight: 1,
            for_nodes: Vec::new(),
            for_zones: Vec::new(),
        }
    }
}

/// `spec.trafficDistribution` of a Service (JSON), if set.
pub fn traffic_distribution_of(service_json: &str) -> Result<Option<String>, String> {
    let svc: Value =
        serde_json::from_str(service_json).map_err(|e| format!("service is not JSON: {e}"))?;
    Ok(svc
        .pointer("/spec/trafficDistribution")
        .and_then(Value::as_str)
        .map(str::to_string))
}

/// Kubernetes `trafficDistribution` semantics (as its EndpointSlice controller
/// writes hints since 1.33):
///
/// - `PreferClose` and `PreferSameZone`: every endpoint with a known zone is
///   hinted for its own zone (`forZones: [zone]`); endpoints without a zone
///   get no hint (and a proxy then ignores the service's hints altogether).
/// - `PreferSameNode`: every endpoint with a known node is hinted for its own
///   node, plus its own zone when known, which proxies use as the fallback
///   when their node has no endpoint.
/// - unset or unknown values: no hints.
///
/// Weights are always 1.
pub fn traffic_distribution(mode: Option<&str>, endpoints: &[Endpoint]) -> Vec<Route> {
    endpoints
        .iter()
        .map(|e| {
            let mut r = Route::plain(&e.address);
            let zone = e.zone.as_deref().filter(|z| !z.is_empty());
            let node = e.node.as_deref().filter(|n| !n.is_empty());
            match mode {
                Some("PreferClose") | Some("PreferSameZone") => {
                    if let Some(z) = zone {
                        r.for_zones.push(z.to_string());
                    }
                }
                Some("PreferSameNode") => {
                    if let Some(n) = node {
                        r.for_nodes.push(n.to_string());
                        if let Some(z) = zone {
                            r.for_zones.push(z.to_string());
                        }
                    }
                }
                _ => {}
            }
            r
        })
        .collect()
}

/// Configuration of the canary router (the Plugin's `spec.config`), e.g.
/// `{"label": "track", "weights": {"stable": 90, "canary": 10}}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    /// The pod label whose value names an endpoint's group.
    pub label: String,
    /// Share of traffic per group (label value); relative, any scale.
    pub weights: BTreeMap<String, u32>,
    /// Share of endpoints whose label is missing or names no group (default 0).
    #[serde(default)]
    pub others: u32,
}

/// Above this per-endpoint weight, exact ratios give way to rounded ones.
const MAX_EXACT_WEIGHT: u64 = 1_000_000;
/// Scale of rounded weights: the whole traffic is this many units.
const ROUNDED_SCALE: u64 = 1_000_000;

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl Canary {
    /// Parse and check a configuration.
    pub fn from_json(config: &str) -> Result<Canary, String> {
        let c: Canary = serde_json::from_str(config).map_err(|e| {
            format!(
                "canary router config: {e} (want {{\"label\": \"track\", \"weights\": {{\"stable\": 90, \"canary\": 10}}}})"
            )
        })?;
        if c.label.is_empty() {
            return Err("canary router config: `label` must not be empty".into());
        }
        if c.weights.is_empty() {
            return Err("canary router config: `weights` must name at least one group".into());
        }
        Ok(c)
    }

    /// The configured share of an endpoint's group.
    fn share<'a>(&self, e: &'a Endpoint) -> (Option<&'a str>, u32) {
        match e
            .label(&self.label)
            .filter(|v| self.weights.contains_key(*v))
        {
            Some(v) => (Some(v), self.weights[v]),
            None => (None, self.others),
        }
    }

    /// Per-endpoint weights such that each group's total is its configured
    /// share of the traffic, exactly when the integers allow (the group sizes'
    /// least common multiple is small), else rounded to a millionth of the traffic.
    ///
    /// Groups are counted over the endpoints proxies would use: the ready
    /// ones, or when none is ready the serving (terminating) ones. A group
    /// with no such endpoint drops out and the others share all traffic. When
    /// every group that has endpoints is configured with 0, all endpoints get
    /// weight 1 rather than the service losing all traffic.
    pub fn routes(&self, endpoints: &[Endpoint]) -> Vec<Route> {
        let any_ready = endpoints.iter().any(|e| e.ready);
        let counted = |e: &Endpoint| if any_ready { e.ready } else { e.serving };
        // Group key: the label value, or None for "others".
        let mut sizes: BTreeMap<Option<&str>, (u64, u64)> = BTreeMap::new();
        for e in endpoints.iter().filter(|e| counted(e)) {
            let (g, w) = self.share(e);
            sizes.entry(g).or_insert((0, u64::from(w))).0 += 1;
        }
        let active: Vec<(u64, u64)> = sizes.values().copied().filter(|(_, w)| *w > 0).collect();
        if active.is_empty() {
            return endpoints.iter().map(|e| Route::plain(&e.address)).collect();
        }
        // Exact: weight per endpoint = share * lcm(sizes) / size.
        let lcm = active.iter().try_fold(1u64, |l, (n, _)| {
            let g = gcd(l, *n);
            (l / g).checked_mul(*n).filter(|v| *v <= MAX_EXACT_WEIGHT)
        });
        let per_group: BTreeMap<Option<&str>, u64> = match lcm {
            Some(l) => {
                let raw: BTreeMap<_, _> =
                    sizes.iter().map(|(g, (n, w))| (*g, w * (l / n))).collect();
                let common = raw.values().copied().filter(|w| *w > 0).fold(0, gcd).max(1);
                let scaled: BTreeMap<_, _> =
                    raw.into_iter().map(|(g, w)| (g, w / common)).collect();
                if scaled.values().all(|w| *w <= MAX_EXACT_WEIGHT) {
                    scaled
                } else {
                    self.rounded(&sizes)
                }
            }
            None => self.rounded(&sizes),
        };
        endpoints
            .iter()
            .map(|e| {
                let (g, share) = self.share(e);
                // Endpoints not counted (not ready) keep a weight of their
                // group's kind: 0 when the group gets no traffic.
                let w = per_group.get(&g).copied().unwrap_or(if share > 0 {
                    u64::from(share)
                } else {
                    0
                });
                Route {
                    address: e.address.clone(),
                    weight: u32::try_from(w).unwrap_or(u32::MAX),
                    for_nodes: Vec::new(),
                    for_zones: Vec::new(),
                }
            })
            .collect()
    }

    fn rounded<'a>(
        &self,
        sizes: &BTreeMap<Option<&'a str>, (u64, u64)>,
    ) -> BTreeMap<Option<&'a str>, u64> {
        let total: u64 = sizes.values().map(|(_, w)| *w).sum::<u64>().max(1);
        sizes
            .iter()
            .map(|(g, (n, w))| {
                let per = if *w == 0 {
                    0
                } else {
                    ((w * ROUNDED_SCALE) as f64 / (total * n) as f64)
                        .round()
                        .max(1.0) as u64
                };
                (*g, per)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(addr: &str, node: &str, zone: &str, track: &str, ready: bool) -> Endpoint {
        Endpoint {
            address: addr.into(),
            node: (!node.is_empty()).then(|| node.to_string()),
            zone: (!zone.is_empty()).then(|| zone.to_string()),
            ready,
            serving: ready,
            terminating: false,
            labels: vec![("track".into(), track.into()), ("app".into(), "web".into())],
        }
    }

    fn totals(routes: &[Route], eps: &[Endpoint]) -> BTreeMap<String, u64> {
        let mut t = BTreeMap::new();
        for (r, e) in routes.iter().zip(eps) {
            assert_eq!(r.address, e.address);
            if e.ready {
                *t.entry(e.label("track").unwrap_or("").to_string())
                    .or_default() += u64::from(r.weight);
            }
        }
        t
    }

    #[test]
    fn unset_distribution_means_no_hints_and_equal_weights() {
        let eps = [ep("10.0.0.1", "n1", "a", "", true)];
        let r = traffic_distribution(None, &eps);
        assert_eq!(r, vec![Route::plain("10.0.0.1")]);
        let r = traffic_distribution(Some("Bogus"), &eps);
        assert_eq!(r, vec![Route::plain("10.0.0.1")]);
    }

    #[test]
    fn prefer_same_zone_hints_own_zone() {
        let eps = [
            ep("10.0.0.1", "n1", "a", "", true),
            ep("10.0.0.2", "n2", "b", "", false),
            ep("10.0.0.3", "n3", "", "", true),
        ];
        for mode in ["PreferClose", "PreferSameZone"] {
            let r = traffic_distribution(Some(mode), &eps);
            assert_eq!(r[0].for_zones, ["a"]);
            assert_eq!(r[1].for_zones, ["b"]);
            assert!(r[2].for_zones.is_empty(), "no zone, no hint");
            assert!(r.iter().all(|r| r.for_nodes.is_empty() && r.weight == 1));
        }
    }

    #[test]
    fn prefer_same_node_hints_node_with_zone_fallback() {
        let eps = [
            ep("10.0.0.1", "n1", "a", "", true),
            ep("10.0.0.2", "n2", "", "", true),
            ep("10.0.0.3", "", "a", "", true),
        ];
        let r = traffic_distribution(Some("PreferSameNode"), &eps);
        assert_eq!(
            (r[0].for_nodes.clone(), r[0].for_zones.clone()),
            (vec!["n1".to_string()], vec!["a".to_string()])
        );
        assert_eq!(r[1].for_nodes, ["n2"]);
        assert!(r[1].for_zones.is_empty());
        assert!(r[2].for_nodes.is_empty() && r[2].for_zones.is_empty());
    }

    #[test]
    fn service_json_gives_the_mode() {
        assert_eq!(
            traffic_distribution_of(r#"{"spec":{"trafficDistribution":"PreferSameZone"}}"#)
                .unwrap(),
            Some("PreferSameZone".into())
        );
        assert_eq!(traffic_distribution_of(r#"{"spec":{}}"#).unwrap(), None);
        assert!(traffic_distribution_of("nope").is_err());
    }

    fn canary(cfg: &str) -> Canary {
        Canary::from_json(cfg).unwrap()
    }

    #[test]
    fn canary_config_is_checked() {
        assert!(Canary::from_json("{}").is_err());
        assert!(Canary::from_json(r#"{"label":"","weights":{"a":1}}"#).is_err());
        assert!(Canary::from_json(r#"{"label":"t","weights":{}}"#).is_err());
        let e = Canary::from_json(r#"{"label":"t","weights":{"a":1},"typo":1}"#).unwrap_err();
        assert!(e.contains("typo"), "{e}");
        let c = canary(r#"{"label":"t","weights":{"a":1}}"#);
        assert_eq!(c.others, 0);
    }

    #[test]
    fn canary_group_totals_are_exact() {
        let c = canary(r#"{"label":"track","weights":{"stable":90,"canary":10}}"#);
        for (stable, can) in [(1usize, 1usize), (3, 1), (9, 1), (7, 3), (4, 6), (100, 7)] {
            let mut eps = Vec::new();
            for i in 0..stable {
                eps.push(ep(&format!("10.0.0.{i}"), "n", "z", "stable", true));
            }
            for i in 0..can {
                eps.push(ep(&format!("10.0.1.{i}"), "n", "z", "canary", true));
            }
            let r = c.routes(&eps);
            let t = totals(&r, &eps);
            assert_eq!(t["stable"] * 10, t["canary"] * 90, "{stable}/{can}: {t:?}");
            assert!(r.iter().all(|r| r.weight > 0));
        }
        // 9 stable + 1 canary at 90/10: every endpoint is equal.
        let mut eps: Vec<_> = (0..9)
            .map(|i| ep(&format!("10.0.0.{i}"), "n", "z", "stable", true))
            .collect();
        eps.push(ep("10.0.1.1", "n", "z", "canary", true));
        assert!(c.routes(&eps).iter().all(|r| r.weight == 1));
    }

    #[test]
    fn canary_empty_groups_and_unknown_labels() {
        let c = canary(r#"{"label":"track","weights":{"stable":90,"canary":10}}"#);
        // Only canary endpoints: they take all traffic.
        let eps = [
            ep("10.0.1.1", "n", "z", "canary", true),
            ep("10.0.1.2", "n", "z", "canary", true),
            ep("10.0.2.1", "n", "z", "other", true),
        ];
        let r = c.routes(&eps);
        assert_eq!(r[0].weight, r[1].weight);
        assert!(r[0].weight > 0);
        assert_eq!(r[2].weight, 0, "groups not configured get nothing");
        // `others` gives unconfigured groups a share.
        let c = canary(r#"{"label":"track","weights":{"canary":10},"others":30}"#);
        let r = c.routes(&eps);
        let canary_total = u64::from(r[0].weight + r[1].weight);
        assert_eq!(canary_total * 30, u64::from(r[2].weight) * 10);
        // Everything configured 0: equal weights instead of a blackhole.
        let c = canary(r#"{"label":"track","weights":{"stable":1}}"#);
        assert!(c.routes(&eps).iter().all(|r| r.weight == 1));
    }

    #[test]
    fn canary_counts_ready_endpoints() {
        let c = canary(r#"{"label":"track","weights":{"stable":50,"canary":50}}"#);
        let eps = [
            ep("10.0.0.1", "n", "z", "stable", true),
            ep("10.0.0.2", "n", "z", "stable", false),
            ep("10.0.1.1", "n", "z", "canary", true),
        ];
        let r = c.routes(&eps);
        let t = totals(&r, &eps);
        assert_eq!(t["stable"], t["canary"], "{r:?}");
    }

    #[test]
    fn canary_rounds_when_exact_would_overflow() {
        let c = canary(r#"{"label":"track","weights":{"a":1,"b":1,"c":1,"d":1}}"#);
        // Group sizes whose lcm exceeds the exact bound.
        let sizes = [997usize, 991, 983, 977];
        let mut eps = Vec::new();
        for (g, n) in ["a", "b", "c", "d"].iter().zip(sizes) {
            for i in 0..n {
                eps.push(ep(&format!("{g}-{i}"), "n", "z", g, true));
            }
        }
        let r = c.routes(&eps);
        let t = totals(&r, &eps);
        let (lo, hi) = (t.values().min().unwrap(), t.values().max().unwrap());
        assert!((hi - lo) * 100 <= *hi, "within 1%: {t:?}");
    }
}
