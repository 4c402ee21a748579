//! `GET /api/openapi.json`: the API's contract, an OpenAPI 3.0 document
//! written by hand next to this file and embedded at build time. Its tests
//! keep it parseable and naming exactly the router's paths and methods.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

/// The document, as served.
pub const DOCUMENT: &str = include_str!("openapi.json");

pub async fn document() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        DOCUMENT,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::collections::BTreeSet;

    fn parsed() -> Value {
        serde_json::from_str(DOCUMENT).expect("openapi.json is JSON")
    }

    #[test]
    fn the_document_describes_exactly_the_routed_paths() {
        let doc = parsed();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let paths: BTreeSet<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let routed: BTreeSet<&str> = super::super::PATHS.iter().copied().collect();
        assert_eq!(paths, routed);
        let methods = |path: &str| -> BTreeSet<String> {
            doc["paths"][path]
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| *k != "parameters")
                .cloned()
                .collect()
        };
        let expect = |list: &[&str]| {
            list.iter()
                .map(|m| (*m).to_owned())
                .collect::<BTreeSet<_>>()
        };
        assert_eq!(methods("/api/messages"), expect(&["get", "post"]));
        assert_eq!(methods("/api/messages/{key}"), expect(&["get", "delete"]));
        assert_eq!(methods("/api/dead/replay"), expect(&["post"]));
    }

    #[test]
    fn every_reference_resolves() {
        let doc = parsed();
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        assert!(!refs.is_empty());
        for reference in refs {
            let pointer = reference.strip_prefix('#').expect("a local reference");
            assert!(
                doc.pointer(pointer).is_some(),
                "{reference} does not resolve"
            );
        }
    }

    fn collect_refs(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("$ref", Value::String(r)) => out.push(r.clone()),
                        _ => collect_refs(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
            _ => {}
        }
    }
}
