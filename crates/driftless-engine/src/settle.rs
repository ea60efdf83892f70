//! Settling changed keys whose listing fingerprints cannot be compared.
//!
//! Object stores fingerprint by what their listing says (an ETag, a checksum), and two
//! fingerprints of different forms can differ while the bytes are equal: a multipart upload
//! and a single-part copy of the same file. Such a key is only reported `changed` once both
//! copies have digested it by content ([`Store::settle_keys`]); keys whose settled digests
//! agree are not drift. Missing and extra keys need no settling, and neither do copies whose
//! digests are by content already (every SQL store).

use driftless_core::{Divergence, DivergenceKind, Key};
use driftless_store::{Schema, Store};

use crate::error::{EngineError, canonical_label, stage_label};
use crate::plan::{CopyRef, DatasetPlan};

/// `divergences` without the changed keys that both copies settle as equal.
pub async fn settle(
    plan: &DatasetPlan,
    schema: &Schema,
    stage: &CopyRef,
    mut divergences: Vec<Divergence>,
) -> Result<Vec<Divergence>, EngineError> {
    if !(plan.canonical.settles(schema) || stage.store.settles(schema)) {
        return Ok(divergences);
    }
    let changed: Vec<Key> = divergences
        .iter()
        .filter(|d| d.kind == DivergenceKind::Changed)
        .map(|d| d.key.clone())
        .collect();
    if changed.is_empty() {
        return Ok(divergences);
    }
    let (canonical, staged) = tokio::try_join!(
        settle_on(plan, schema, plan.canonical.as_ref(), canonical_label(), &changed),
        settle_on(plan, schema, stage.store.as_ref(), stage_label(&stage.name), &changed),
    )?;
    // Settled digests come sorted by key, one per key present; a key is equal when both
    // copies hold it with the same settled digest.
    let staged: std::collections::HashMap<&Key, u128> = staged.iter().map(|(k, d)| (k, *d)).collect();
    let equal: std::collections::HashSet<&Key> = canonical
        .iter()
        .filter(|(k, d)| staged.get(k) == Some(d))
        .map(|(k, _)| k)
        .collect();
    divergences.retain(|d| d.kind != DivergenceKind::Changed || !equal.contains(&d.key));
    Ok(divergences)
}

/// One copy's settled digests of `keys`.
async fn settle_on(
    plan: &DatasetPlan,
    schema: &Schema,
    store: &dyn Store,
    copy: String,
    keys: &[Key],
) -> Result<driftless_store::DigestBatch, EngineError> {
    store
        .settle_keys(schema, keys, &plan.hasher)
        .await
        .map_err(|error| EngineError::Store {
            dataset: plan.name.clone(),
            copy,
            error,
        })
}
