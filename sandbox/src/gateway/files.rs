//! Which xDS files to (re)write, in which order, and the atomic writes themselves.
//!
//! [`plan`] is pure: given what is on disk and what should be, it lists the steps, writing only
//! files whose content changed, in make-before-break order:
//! 1. EDS and ECDS files (a cluster or filter must have its file before anything names it);
//! 2. CDS, then RDS once Envoy has the new clusters (or RDS first, then CDS, when clusters only
//!    go away, so no route ever points at a removed cluster);
//! 3. LDS, only when the filter chain changed;
//! 4. removal of EDS/ECDS files nothing refers to any more.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;

use super::xds::{file_body, Layout, ResourceKey, Resources};
use super::Error;

#[cfg(test)]
mod tests;

/// One step of a [`Plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Write this resource's new content.
    Write(ResourceKey),
    /// Wait until Envoy has taken (or rejected) this resource's latest version.
    AwaitAck(ResourceKey),
    /// Delete this resource's file.
    Remove(ResourceKey),
}

/// Steps taking the files from `old` to `new` content.
pub fn plan(old: &BTreeMap<ResourceKey, String>, new: &Resources) -> Vec<Step> {
    let changed = |key: &ResourceKey| new.get(key).is_some_and(|c| old.get(key) != Some(c));
    let mut steps = Vec::new();
    for key in new.keys() {
        if matches!(key, ResourceKey::Endpoints(_) | ResourceKey::Extension(_)) && changed(key) {
            steps.push(Step::Write(key.clone()));
        }
    }

    let cluster_keys = |map: &BTreeMap<ResourceKey, String>| -> BTreeSet<ResourceKey> {
        map.keys()
            .filter(|k| matches!(k, ResourceKey::Endpoints(_)))
            .cloned()
            .collect()
    };
    let old_clusters = cluster_keys(old);
    let new_clusters = cluster_keys(new);
    let adds_clusters = new_clusters.difference(&old_clusters).next().is_some();
    let cds = changed(&ResourceKey::Clusters);
    let rds = changed(&ResourceKey::Routes);
    match (cds, rds) {
        (true, true) if !adds_clusters => {
            steps.push(Step::Write(ResourceKey::Routes));
            steps.push(Step::AwaitAck(ResourceKey::Routes));
            steps.push(Step::Write(ResourceKey::Clusters));
        }
        (true, true) => {
            steps.push(Step::Write(ResourceKey::Clusters));
            steps.push(Step::AwaitAck(ResourceKey::Clusters));
            steps.push(Step::Write(ResourceKey::Routes));
        }
        (true, false) => steps.push(Step::Write(ResourceKey::Clusters)),
        (false, true) => steps.push(Step::Write(ResourceKey::Routes)),
        (false, false) => {}
    }
    if changed(&ResourceKey::Listeners) {
        steps.push(Step::Write(ResourceKey::Listeners));
    }
    for key in old.keys() {
        if matches!(key, ResourceKey::Endpoints(_) | ResourceKey::Extension(_))
            && !new.contains_key(key)
        {
            steps.push(Step::Remove(key.clone()));
        }
    }
    steps
}

/// Atomically replaces a resource file: write a sibling in the staging directory, then
/// `rename()` it into place (Envoy watches for moves, so it only ever sees complete files).
pub fn write_atomically(
    layout: &Layout,
    key: &ResourceKey,
    version: u64,
    resources: &str,
) -> Result<(), Error> {
    let target = layout.path(key);
    let staging = layout.staging_dir();
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "resource.json".to_string());
    let tmp = staging.join(format!("{name}.{version}.tmp"));
    fs::write(&tmp, file_body(version, resources))
        .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    fs::rename(&tmp, &target).map_err(|e| {
        Error::io(
            format!("renaming {} to {}", tmp.display(), target.display()),
            e,
        )
    })
}

/// Deletes a resource file (a missing file is fine).
pub fn remove(layout: &Layout, key: &ResourceKey) -> Result<(), Error> {
    let path = layout.path(key);
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
    }
}

/// Creates the directories of `layout`.
pub fn create_dirs(layout: &Layout) -> Result<(), Error> {
    for dir in [
        layout.dir().to_path_buf(),
        layout.staging_dir(),
        layout.dir().join("eds"),
        layout.dir().join("ecds"),
    ] {
        fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    Ok(())
}
