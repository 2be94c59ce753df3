//! The OCI image Higress pulls a plugin from, written as an OCI image layout directory.
//!
//! Higress (through Istio's pilot-agent) takes the image's *last* layer; when that layer is an
//! `application/vnd.oci.image.layer.v1.tar+gzip`, it extracts the entry named `plugin.wasm`. The
//! image here has exactly that one layer. Every byte is a function of the module and the tag
//! (fixed tar header fields, gzip without a timestamp, serde_json's sorted keys), so rebuilding
//! the same module yields the same manifest digest, which can therefore be pinned.

use std::{
    fmt, fs,
    io::Write as _,
    path::{Path, PathBuf},
    str::FromStr,
};

use flate2::{Compression, GzBuilder};
use serde_json::{json, Value};

use crate::{sha256_hex, Error, Result, PLUGIN_FILE};

pub const LAYOUT_VERSION: &str = "1.0.0";
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The index annotation that names a manifest's tag in an image layout.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// An OCI content descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: &'static str,
    /// `sha256:<hex>`.
    pub digest: String,
    pub size: u64,
}

impl Descriptor {
    fn of(media_type: &'static str, blob: &[u8]) -> Self {
        Self {
            media_type,
            digest: format!("sha256:{}", sha256_hex(blob)),
            size: blob.len() as u64,
        }
    }

    fn to_json(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

/// The descriptors of the image written by [`write_layout`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageDescriptors {
    /// The image manifest: its digest is the image digest a registry reports (and what
    /// WasmPlugin `sha256` / `url: oci://…@sha256:` are checked against).
    pub manifest: Descriptor,
    pub config: Descriptor,
    /// The single (and so last) layer, a tar+gzip with `plugin.wasm` at its root.
    pub layer: Descriptor,
}

/// Writes an OCI image layout for `module` into `dir` (replacing what was there) with one image
/// tagged `tag` in `index.json`.
pub fn write_layout(dir: &Path, module: &[u8], tag: &str) -> Result<ImageDescriptors> {
    let tar = layer_tar(module).map_err(|e| Error::io(Path::new(PLUGIN_FILE), e))?;
    let layer_blob = gzip(&tar).map_err(|e| Error::io(Path::new(PLUGIN_FILE), e))?;
    let layer = Descriptor::of(LAYER_MEDIA_TYPE, &layer_blob);

    // `wasm`/`wasip1` are the GOARCH/GOOS pair for this target, which is what the image spec asks
    // for. Pilot-agent does not check the platform of a single-manifest image.
    let config_blob = to_bytes(&json!({
        "architecture": "wasm",
        "os": "wasip1",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(&tar))]},
    }));
    let config = Descriptor::of(CONFIG_MEDIA_TYPE, &config_blob);

    let manifest_blob = to_bytes(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": config.to_json(),
        "layers": [layer.to_json()],
    }));
    let manifest = Descriptor::of(MANIFEST_MEDIA_TYPE, &manifest_blob);

    let mut manifest_entry = manifest.to_json();
    manifest_entry["annotations"] = json!({ REF_NAME_ANNOTATION: tag });
    let index_blob = to_bytes(&json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [manifest_entry],
    }));

    // Start from an empty directory so blobs of earlier builds do not pile up.
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let blobs = dir.join("blobs").join("sha256");
    fs::create_dir_all(&blobs).map_err(|e| Error::io(&blobs, e))?;
    let oci_layout = to_bytes(&json!({ "imageLayoutVersion": LAYOUT_VERSION }));
    write(&dir.join("oci-layout"), &oci_layout)?;
    for (descriptor, blob) in [
        (&layer, &layer_blob),
        (&config, &config_blob),
        (&manifest, &manifest_blob),
    ] {
        write(&blob_path(dir, &descriptor.digest), blob)?;
    }
    write(&dir.join("index.json"), &index_blob)?;
    Ok(ImageDescriptors {
        manifest,
        config,
        layer,
    })
}

/// Where the blob with `digest` (`sha256:<hex>`) lives in the layout at `dir`.
pub fn blob_path(dir: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    dir.join("blobs").join("sha256").join(hex)
}

/// An uncompressed tar holding only `plugin.wasm`, with every header field that could vary
/// between machines or runs fixed.
pub fn layer_tar(module: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut header = tar::Header::new_ustar();
    header.set_path(PLUGIN_FILE)?;
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(module.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_username("")?;
    header.set_groupname("")?;
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    builder.append(&header, module)?;
    builder.into_inner()
}

/// gzip without file name or timestamp, and with a fixed OS byte.
fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), Compression::best());
    encoder.write_all(data)?;
    encoder.finish()
}

fn to_bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("invariant: a serde_json::Value always serialises")
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

/// An image reference with a tag, as a WasmPlugin `url` takes it: `oci://<repository>:<tag>`.
///
/// A digest reference is rejected: the digest is what packaging computes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    repository: String,
    tag: String,
}

impl ImageRef {
    /// A placeholder reference for docs and examples: the image of `version` in a registry that
    /// does not exist.
    pub fn placeholder(version: &str) -> Result<Self> {
        format!("oci://registry.example.com/higress-canary/plugin:{version}").parse()
    }

    /// `registry/path`, without scheme or tag.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// `oci://<repository>@<digest>`: the same image pinned by content.
    pub fn pinned(&self, digest: &str) -> String {
        format!("oci://{}@{digest}", self.repository)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "oci://{}:{}", self.repository, self.tag)
    }
}

impl FromStr for ImageRef {
    type Err = Error;

    fn from_str(reference: &str) -> Result<Self> {
        let invalid = |reason| Error::ImageRef {
            reference: reference.to_string(),
            reason,
        };
        let rest = reference.strip_prefix("oci://").unwrap_or(reference);
        if rest.contains("://") {
            return Err(invalid("only oci:// references name an image"));
        }
        if rest.contains('@') {
            return Err(invalid(
                "give a tag, not a digest: the digest is computed when packaging",
            ));
        }
        let name_start = rest.rfind('/').map_or(0, |i| i + 1);
        let Some(colon) = rest[name_start..].rfind(':').map(|i| name_start + i) else {
            return Err(invalid("a tag is required (…/plugin:<tag>)"));
        };
        let (repository, tag) = (&rest[..colon], &rest[colon + 1..]);
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-:".contains(&b))
        };
        if !repository.split('/').all(component_ok) {
            return Err(invalid(
                "the repository must be registry/path with no empty parts",
            ));
        }
        let tag_ok = tag.len() <= 128
            && tag
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !tag_ok {
            return Err(invalid(
                "a tag is 1-128 of [A-Za-z0-9_.-], not starting with . or -",
            ));
        }
        Ok(Self {
            repository: repository.to_string(),
            tag: tag.to_string(),
        })
    }
}
