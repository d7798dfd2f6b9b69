//! Policy configuration: the Plugin object's `spec.config` JSON.

use std::fmt;

use serde::Deserialize;

/// Which NodeResourcesFit scoring strategy to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScoreStrategy {
    /// Prefer nodes with the most free cpu and memory (spreads load).
    #[default]
    LeastAllocated,
    /// Prefer nodes with the least free cpu and memory (bin packing).
    MostAllocated,
}

impl ScoreStrategy {
    /// The name used in configuration JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ScoreStrategy::LeastAllocated => "least-allocated",
            ScoreStrategy::MostAllocated => "most-allocated",
        }
    }
}

/// How the policy filters and scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Resource scoring strategy.
    pub score: ScoreStrategy,
    /// Whether `filter` rejects nodes; without it every node passes.
    pub filters: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            score: ScoreStrategy::LeastAllocated,
            filters: true,
        }
    }
}

/// A configuration that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid scheduler config: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The JSON shape; absent keys keep the base configuration's values.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Overrides {
    score: Option<ScoreStrategy>,
    filters: Option<bool>,
}

impl Config {
    /// The bin-packing profile: most-allocated scoring, no filters (the host
    /// applies the default policy's filters to every profile).
    pub fn binpack() -> Config {
        Config {
            score: ScoreStrategy::MostAllocated,
            filters: false,
        }
    }

    /// Read `{"score": "least-allocated" | "most-allocated", "filters": bool}`
    /// on top of `base`. An empty string reads as `{}`; unknown keys are errors.
    pub fn from_json_over(json: &str, base: Config) -> Result<Config, ConfigError> {
        let json = if json.trim().is_empty() { "{}" } else { json };
        let o: Overrides = serde_json::from_str(json).map_err(|e| ConfigError(e.to_string()))?;
        Ok(Config {
            score: o.score.unwrap_or(base.score),
            filters: o.filters.unwrap_or(base.filters),
        })
    }

    /// Read a configuration JSON over the defaults (least-allocated, filters).
    pub fn from_json(json: &str) -> Result<Config, ConfigError> {
        Config::from_json_over(json, Config::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(Config::from_json("{}").unwrap(), Config::default());
        assert_eq!(Config::from_json("").unwrap(), Config::default());
        let c = Config::from_json(r#"{"score": "most-allocated"}"#).unwrap();
        assert_eq!(c.score, ScoreStrategy::MostAllocated);
        assert!(c.filters);
        let b = Config::from_json_over(r#"{"filters": true}"#, Config::binpack()).unwrap();
        assert_eq!((b.score, b.filters), (ScoreStrategy::MostAllocated, true));
    }

    #[test]
    fn rejects_bad_configs() {
        for bad in [
            r#"{"score": "balanced"}"#,
            r#"{"filter": false}"#,
            r#"{"filters": "no"}"#,
            "[]",
            "{",
        ] {
            let err = Config::from_json(bad).unwrap_err();
            assert!(
                err.to_string().starts_with("invalid scheduler config"),
                "{bad}: {err}"
            );
        }
    }
}
