//! Detection beyond the tree walk: runs scoped to a set of keys, and duplicate commits.
//!
//! - A run scoped by `--keys FILE` or `--since TIME` compares exactly the given keys (and
//!   the keys whose change-time column is at or after the time, in canonical or the stage)
//!   by point reads, without building trees.
//! - A dataset with a `dedupe_key` (a commit id) has its stage's rows grouped by that key.
//!   Among rows repeating one commit, the rows whose key canonical holds are the commit; the
//!   others are `duplicate` commits (when canonical holds none of them, the lowest key stands
//!   for the commit and stays `extra`). Only keys the comparison found `extra` are
//!   reclassified, so a duplicate is always a row canonical does not have.

use std::collections::HashSet;

use driftless_core::{Divergence, DivergenceKind, Key, KeyDivergence, KeyPart, LogicalType, merge_join};
use driftless_store::Schema;
use serde_json::Value as Json;

use crate::error::{EngineError, canonical_label, stage_label};
use crate::plan::{CopyRef, DatasetPlan};

/// Keys a run is scoped to, as given on the command line.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Scope {
    /// `--keys FILE`: the file's name and, per line, its number and its key (a JSON object
    /// with one member per key column, or a bare value for a one-column key).
    pub keys: Option<(String, Vec<(usize, Json)>)>,
    /// `--since`: UTC microseconds; rows whose change-time column is at or after it.
    pub since_us: Option<i64>,
}

impl Scope {
    /// Whether the run looks at chosen keys only (no trees, nothing resolved by absence).
    pub fn is_scoped(&self) -> bool {
        self.keys.is_some() || self.since_us.is_some()
    }
}

/// The keys a scoped run compares for one stage, sorted and distinct.
pub async fn scoped_keys(
    plan: &DatasetPlan,
    schema: &Schema,
    stage: &CopyRef,
    scope: &Scope,
) -> Result<Vec<Key>, EngineError> {
    let mut keys = Vec::new();
    if let Some((file, lines)) = &scope.keys {
        for (line, json) in lines {
            keys.push(key_from_json(schema, json).map_err(|reason| EngineError::Input {
                dataset: plan.name.clone(),
                reason: format!("{file}:{line}: {reason}"),
            })?);
        }
    }
    if let Some(since) = scope.since_us {
        let Some(column) = &plan.changed_column else {
            return Err(EngineError::Input {
                dataset: plan.name.clone(),
                reason: "--since needs the dataset's `changed_column` (the column holding each row's change time)"
                    .into(),
            });
        };
        let store_err = |copy: String| {
            let dataset = plan.name.clone();
            move |error| EngineError::Store { dataset, copy, error }
        };
        keys.extend(
            plan.canonical
                .keys_since(schema, column, since)
                .await
                .map_err(store_err(canonical_label()))?,
        );
        keys.extend(
            stage
                .store
                .keys_since(schema, column, since)
                .await
                .map_err(store_err(stage_label(&stage.name)))?,
        );
    }
    keys.sort_unstable();
    keys.dedup();
    Ok(keys)
}

/// Row-level divergences among `keys` (sorted), by point reads of both copies.
pub async fn diff_keys(
    plan: &DatasetPlan,
    schema: &Schema,
    stage: &CopyRef,
    keys: &[Key],
) -> Result<Vec<Divergence>, EngineError> {
    let err = |copy: String| {
        let dataset = plan.name.clone();
        move |error| EngineError::Store { dataset, copy, error }
    };
    let (canonical, staged) = tokio::try_join!(
        async {
            plan.canonical
                .digest_keys(schema, keys, &plan.hasher)
                .await
                .map_err(err(canonical_label()))
        },
        async {
            stage
                .store
                .digest_keys(schema, keys, &plan.hasher)
                .await
                .map_err(err(stage_label(&stage.name)))
        },
    )?;
    crate::settle::settle(plan, schema, stage, merge_join(canonical, staged)).await
}

/// The stage keys that repeat a commit of the dataset's `dedupe_key`, per the module docs.
pub async fn duplicate_commits(
    plan: &DatasetPlan,
    schema: &Schema,
    stage: &CopyRef,
) -> Result<HashSet<Key>, EngineError> {
    if plan.dedupe_key.is_empty() {
        return Ok(HashSet::new());
    }
    let groups = stage
        .store
        .duplicate_groups(schema, &plan.dedupe_key)
        .await
        .map_err(|error| EngineError::Store {
            dataset: plan.name.clone(),
            copy: stage_label(&stage.name),
            error,
        })?;
    let members: Vec<Key> = groups.iter().flatten().cloned().collect();
    let in_canonical: HashSet<Key> = plan
        .canonical
        .digest_keys(schema, &members, &plan.hasher)
        .await
        .map_err(|error| EngineError::Store {
            dataset: plan.name.clone(),
            copy: canonical_label(),
            error,
        })?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let mut duplicates = HashSet::new();
    for group in groups {
        let held = group.iter().any(|k| in_canonical.contains(k));
        // Groups are sorted: without a canonical row, the lowest key stands for the commit.
        let skip = usize::from(!held);
        duplicates.extend(group.into_iter().filter(|k| !in_canonical.contains(k)).skip(skip));
    }
    Ok(duplicates)
}

/// Reclassifies `extra` divergences whose key repeats a commit as `duplicate`.
pub fn mark_duplicates(divergences: &mut [Divergence], keys: &mut [KeyDivergence], duplicates: &HashSet<Key>) {
    if duplicates.is_empty() {
        return;
    }
    for d in divergences.iter_mut() {
        if d.kind == DivergenceKind::Extra && duplicates.contains(&d.key) {
            d.kind = DivergenceKind::Duplicate;
        }
    }
    for k in keys.iter_mut() {
        if k.kind == DivergenceKind::Extra && duplicates.contains(&k.key) {
            k.kind = DivergenceKind::Duplicate;
        }
    }
}

/// A key from its JSON form (as reports print keys) for a schema's key columns.
pub fn key_from_json(schema: &Schema, json: &Json) -> Result<Key, String> {
    let columns = &schema.key;
    let values: Vec<&Json> = match json {
        Json::Object(map) => {
            if let Some(extra) = map.keys().find(|k| !columns.iter().any(|c| &c.name == *k)) {
                return Err(format!(
                    "{extra:?} is not a key column (key columns: {})",
                    schema.key_names().join(", ")
                ));
            }
            columns
                .iter()
                .map(|c| {
                    map.get(&c.name)
                        .ok_or_else(|| format!("key column {:?} missing", c.name))
                })
                .collect::<Result<_, _>>()?
        }
        scalar if columns.len() == 1 => vec![scalar],
        _ => {
            return Err(format!(
                "a key of several columns is a JSON object with members {}",
                schema.key_names().join(", ")
            ));
        }
    };
    let mut parts = Vec::with_capacity(values.len());
    for (c, v) in columns.iter().zip(values) {
        let bad = || format!("key column {:?}: {v} is not a {:?} key", c.name, c.ty);
        let part = match (c.ty, v) {
            (LogicalType::Number | LogicalType::Any, Json::Number(n)) => KeyPart::Int(n.as_i64().ok_or_else(bad)?),
            (LogicalType::Number, Json::String(s)) => KeyPart::Int(s.trim().parse().map_err(|_| bad())?),
            (LogicalType::Uuid, Json::String(s)) => KeyPart::Uuid(driftless_core::key::parse_uuid(s).ok_or_else(bad)?),
            (LogicalType::Bytes, Json::String(s)) => KeyPart::Bytes(
                s.strip_prefix("\\x")
                    .and_then(driftless_core::value::parse_hex)
                    .ok_or_else(bad)?,
            ),
            (LogicalType::Text | LogicalType::Any, Json::String(s)) => KeyPart::Text(s.clone()),
            (LogicalType::Text, Json::Number(n)) => KeyPart::Text(n.to_string()),
            _ => return Err(bad()),
        };
        parts.push(part);
    }
    Ok(Key::from_parts(&parts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use driftless_store::Column;

    fn schema(cols: &[(&str, LogicalType)]) -> Schema {
        Schema {
            key: cols
                .iter()
                .map(|(n, ty)| Column {
                    name: (*n).to_owned(),
                    ty: *ty,
                })
                .collect(),
            values: Vec::new(),
        }
    }

    #[test]
    fn keys_read_back_from_their_report_form() {
        let s = schema(&[("id", LogicalType::Number), ("name", LogicalType::Text)]);
        let key = Key::from_parts(&[KeyPart::Int(-7), KeyPart::Text("ä b".into())]);
        let json = key.to_json(&s.key_names());
        assert_eq!(key_from_json(&s, &json).unwrap(), key);
        let one = schema(&[("id", LogicalType::Number)]);
        assert_eq!(
            key_from_json(&one, &serde_json::json!(42)).unwrap(),
            Key::from_parts(&[KeyPart::Int(42)])
        );
        let bytes = schema(&[("b", LogicalType::Bytes)]);
        let key = Key::from_parts(&[KeyPart::Bytes(vec![0, 255])]);
        assert_eq!(key_from_json(&bytes, &key.to_json(&["b".into()])).unwrap(), key);
    }

    #[test]
    fn bad_keys_say_what_is_wrong() {
        let s = schema(&[("id", LogicalType::Number), ("name", LogicalType::Text)]);
        assert!(
            key_from_json(&s, &serde_json::json!({"id": 1}))
                .unwrap_err()
                .contains("\"name\" missing")
        );
        assert!(
            key_from_json(&s, &serde_json::json!({"id": 1, "name": "a", "x": 2}))
                .unwrap_err()
                .contains("\"x\"")
        );
        assert!(
            key_from_json(&s, &serde_json::json!(5))
                .unwrap_err()
                .contains("JSON object")
        );
        let one = schema(&[("id", LogicalType::Number)]);
        assert!(
            key_from_json(&one, &serde_json::json!("x1"))
                .unwrap_err()
                .contains("\"id\"")
        );
    }
}
