//! Models a contract names: a file (resolved from the repository root) or a synthetic preset,
//! generated once into a cache and reused by every trial that names the same spec.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::contract::resolve_model_path;
use crate::contract::schema::ModelSpec;
use crate::contract::shape::preset_config;
use crate::error::{Error, Result};
use crate::model::synth;

/// One generation at a time inside a process: trials run on parallel threads, and two asking
/// for the same preset must not both write it. Across processes (nextest runs one trial per
/// process) the generator's temp-file-then-rename keeps the cache consistent.
static GENERATING: Mutex<()> = Mutex::new(());

/// Where synthetic models are cached: `$FALSIFIER_MODEL_CACHE`, else `target/falsifier-models`
/// under the repository holding the contract, else the system temp dir.
pub fn cache_dir(contract_file: &Path) -> PathBuf {
    if let Some(dir) = std::env::var_os("FALSIFIER_MODEL_CACHE") {
        return PathBuf::from(dir);
    }
    let start = contract_file
        .parent()
        .and_then(|d| d.canonicalize().ok())
        .unwrap_or_else(|| PathBuf::from("."));
    for anc in start.ancestors() {
        if anc.join("Cargo.toml").is_file() {
            return anc.join("target").join("falsifier-models");
        }
    }
    std::env::temp_dir().join("falsifier-models")
}

/// File name of a synthetic spec: everything that changes the bytes is in it.
fn synthetic_name(spec: &ModelSpec) -> String {
    let mut name = format!(
        "{}-{}-s{}",
        spec.preset.as_deref().unwrap_or("model"),
        spec.quant.as_deref().unwrap_or("f32"),
        spec.seed.unwrap_or(0)
    );
    for (k, v) in spec.overrides() {
        name.push_str(&format!("-{k}{v}"));
    }
    name.push_str(".gguf");
    name
}

/// The GGUF file for `spec` (named `name` in `contract_file`), generating a synthetic one if it
/// is not cached yet.
pub fn resolve(contract_file: &Path, name: &str, spec: &ModelSpec) -> Result<PathBuf> {
    let at = || format!("{}: model `{name}`", contract_file.display());
    if let Some(path) = &spec.path {
        let p = resolve_model_path(contract_file, path);
        if !p.is_file() {
            return Err(Error::input(format!(
                "{}: file {} does not exist",
                at(),
                p.display()
            )));
        }
        return Ok(p);
    }
    let (config, quant) =
        preset_config(spec).map_err(|e| Error::input(format!("{}: {e}", at())))?;
    let dir = cache_dir(contract_file);
    let path = dir.join(synthetic_name(spec));
    let _guard = GENERATING.lock().unwrap_or_else(|p| p.into_inner());
    if !path.is_file() {
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(&dir, "creating the model cache", e))?;
        synth::generate(
            &config,
            quant,
            spec.seed.unwrap_or(0),
            &format!("falsifier-{name}"),
            &path,
        )
        .map_err(|e| e.context(at()))?;
    }
    Ok(path)
}
