//! Routing: which police station covers which bank branch, whom each station
//! escalates to, and by when an alert must be claimed (`rules/stations.toml`,
//! reloaded with the rules; errors with file:line:col).
//!
//! Must not hold alerts (the book does).

use crate::rules::{parse_duration, Diagnostic, Span};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;
use toml::Spanned;

/// Which police station covers which branch, and whom each escalates to.
#[derive(Debug, Clone)]
pub struct Routing {
    pub default_station: String,
    pub stations: HashMap<String, Station>,
    branch_to_station: HashMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct Station {
    pub id: String,
    pub name: String,
    /// Where an unclaimed alert goes (the city anti-fraud centre), if anywhere.
    pub escalate_to: Option<String>,
    pub claim_deadline_secs: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRouting {
    default_station: Spanned<String>,
    #[serde(default)]
    station: Vec<RawStation>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStation {
    id: Spanned<String>,
    name: String,
    #[serde(default)]
    branches: Vec<Spanned<String>>,
    #[serde(default)]
    escalate_to: Option<Spanned<String>>,
    claim_deadline: Spanned<String>,
}

impl Routing {
    /// Reads `stations.toml` from the rules folder; errors carry file:line:col.
    pub fn load_dir(dir: &Path) -> Result<Routing, Vec<Diagnostic>> {
        let path = dir.join("stations.toml");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| vec![Diagnostic::file(&path.display().to_string(), format!("cannot read: {e}"))])?;
        Routing::parse("stations.toml", &text)
    }

    pub fn parse(file: &str, text: &str) -> Result<Routing, Vec<Diagnostic>> {
        let at = |span: std::ops::Range<usize>, msg: String| {
            Diagnostic::at(file, text, Span { start: span.start, end: span.end }, msg)
        };
        let raw: RawRouting = toml::from_str(text).map_err(|e| vec![Diagnostic::toml(file, text, &e)])?;
        let mut diags = Vec::new();
        let mut stations = HashMap::new();
        let mut branch_to_station: HashMap<String, String> = HashMap::new();
        for s in &raw.station {
            let id = s.id.get_ref().clone();
            if id.is_empty()
                || !id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
            {
                diags.push(at(
                    s.id.span(),
                    "a station id is lower-case ascii letters, digits, `-` and `_` (it names a NATS subject)".into(),
                ));
            }
            let deadline = match parse_duration(s.claim_deadline.get_ref()) {
                Some(d) if d > 0 => d,
                _ => {
                    diags.push(at(s.claim_deadline.span(), "claim_deadline must be a duration such as \"10m\"".into()));
                    0
                }
            };
            for b in &s.branches {
                if let Some(other) = branch_to_station.insert(b.get_ref().clone(), id.clone()) {
                    diags.push(at(b.span(), format!("branch `{}` is already covered by `{other}`", b.get_ref())));
                }
            }
            let station = Station {
                id: id.clone(),
                name: s.name.clone(),
                escalate_to: s.escalate_to.as_ref().map(|e| e.get_ref().clone()).filter(|e| !e.is_empty()),
                claim_deadline_secs: deadline,
            };
            if stations.insert(id.clone(), station).is_some() {
                diags.push(at(s.id.span(), format!("station `{id}` is defined twice")));
            }
        }
        for s in &raw.station {
            if let Some(e) = &s.escalate_to {
                if !e.get_ref().is_empty() && !stations.contains_key(e.get_ref()) {
                    diags.push(at(e.span(), format!("unknown station `{}`", e.get_ref())));
                }
            }
        }
        if !stations.contains_key(raw.default_station.get_ref()) {
            diags.push(at(raw.default_station.span(), format!("unknown station `{}`", raw.default_station.get_ref())));
        }
        if diags.is_empty() {
            Ok(Routing { default_station: raw.default_station.into_inner(), stations, branch_to_station })
        } else {
            Err(diags)
        }
    }

    /// The station covering `branch_id`, and whether it was a default fallback.
    pub fn route(&self, branch_id: &str) -> (&Station, bool) {
        match self.branch_to_station.get(branch_id).and_then(|s| self.stations.get(s)) {
            Some(s) => (s, false),
            None => (&self.stations[&self.default_station], true),
        }
    }
}
