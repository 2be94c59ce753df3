//! The OCI image Higress pulls a plugin from, written as an OCI image layout directory (the same
//! writer packages the controller's image: `cargo xtask image`), and a checker that reads a
//! layout back as a registry client would.
//!
//! Higress (through Istio's pilot-agent) takes the image's *last* layer; when that layer is an
//! `application/vnd.oci.image.layer.v1.tar+gzip`, it extracts the entry named `plugin.wasm`. The
//! image here has exactly that one layer. Every byte is a function of the module and the tag
//! (fixed tar header fields, gzip without a timestamp, serde_json's sorted keys), so rebuilding
//! the same module yields the same manifest digest, which can therefore be pinned.

use std::{
    fmt, fs,
    io::{Read as _, Write as _},
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

/// The descriptors of an image written by [`write_layout`] or [`write_image_layout`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageDescriptors {
    /// The image manifest: its digest is the image digest a registry reports (and what
    /// WasmPlugin `sha256` / `url: oci://…@sha256:` are checked against).
    pub manifest: Descriptor,
    pub config: Descriptor,
    /// The single (and so last) layer, a tar+gzip.
    pub layer: Descriptor,
}

/// One entry of an image's layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerEntry<'a> {
    /// A directory (`etc/`), so runtimes do not invent its mode.
    Dir { path: &'a str, mode: u32 },
    /// A regular file.
    File {
        path: &'a str,
        mode: u32,
        bytes: &'a [u8],
    },
}

/// A single-layer image: what its config says and what its layer holds.
#[derive(Debug, Clone)]
pub struct Image<'a> {
    /// GOARCH-style architecture (`amd64`, `wasm`).
    pub architecture: &'a str,
    /// GOOS-style operating system (`linux`, `wasip1`).
    pub os: &'a str,
    /// The config's `config` object: `User`, `Entrypoint`, `Cmd`, `Env`, `ExposedPorts`, `Labels`.
    pub runtime: Value,
    pub layer: Vec<LayerEntry<'a>>,
}

/// Writes an OCI image layout for the plugin `module` into `dir` (replacing what was there) with
/// one image tagged `tag` in `index.json`.
pub fn write_layout(dir: &Path, module: &[u8], tag: &str) -> Result<ImageDescriptors> {
    // `wasm`/`wasip1` are the GOARCH/GOOS pair for this target, which is what the image spec asks
    // for. Pilot-agent does not check the platform of a single-manifest image.
    let image = Image {
        architecture: "wasm",
        os: "wasip1",
        runtime: json!({}),
        layer: vec![LayerEntry::File {
            path: PLUGIN_FILE,
            mode: 0o644,
            bytes: module,
        }],
    };
    write_image_layout(dir, &image, tag)
}

/// Writes an OCI image layout for `image` into `dir` (replacing what was there) with one image
/// tagged `tag` in `index.json`. Every byte is a function of `image` and `tag`.
pub fn write_image_layout(dir: &Path, image: &Image<'_>, tag: &str) -> Result<ImageDescriptors> {
    let tar = layer_tar(&image.layer).map_err(|e| Error::io(dir, e))?;
    let layer_blob = gzip(&tar).map_err(|e| Error::io(dir, e))?;
    let layer = Descriptor::of(LAYER_MEDIA_TYPE, &layer_blob);

    let config_blob = to_bytes(&json!({
        "architecture": image.architecture,
        "os": image.os,
        "config": image.runtime,
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

/// An uncompressed tar of `entries`, with every header field that could vary between machines
/// or runs fixed (owner root, mtime 0, no user or group names).
pub fn layer_tar(entries: &[LayerEntry<'_>]) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_ustar();
        let (path, mode, bytes, kind) = match *entry {
            LayerEntry::Dir { path, mode } => (path, mode, &[][..], tar::EntryType::Directory),
            LayerEntry::File { path, mode, bytes } => (path, mode, bytes, tar::EntryType::Regular),
        };
        header.set_path(path)?;
        header.set_entry_type(kind);
        header.set_size(bytes.len() as u64);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_username("")?;
        header.set_groupname("")?;
        header.set_cksum();
        builder.append(&header, bytes)?;
    }
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

/// A file or directory read back from a layer by [`read_layout`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerFile {
    pub path: String,
    pub directory: bool,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub bytes: Vec<u8>,
}

/// An image read back from a layout by [`read_layout`], every digest and size checked.
#[derive(Debug, Clone)]
pub struct LayoutImage {
    /// The `org.opencontainers.image.ref.name` of the index entry.
    pub tag: String,
    pub manifest: Descriptor,
    /// The parsed image config.
    pub config: Value,
    /// The entries of the last layer, in order.
    pub last_layer: Vec<LayerFile>,
}

/// Reads the single-image OCI layout at `dir` the way a registry client would, and checks it:
/// `oci-layout`, the index, the manifest and config media types, every blob's digest and size,
/// the layers' media types, and that `rootfs.diff_ids` are the uncompressed layers' digests.
pub fn read_layout(dir: &Path) -> Result<LayoutImage> {
    let invalid = |reason: String| Error::InvalidLayout {
        dir: dir.to_path_buf(),
        reason,
    };
    let read = |path: &Path| fs::read(path).map_err(|e| Error::io(path, e));
    let parse = |what: &str, bytes: &[u8]| -> Result<Value> {
        serde_json::from_slice(bytes).map_err(|e| invalid(format!("{what} is not JSON: {e}")))
    };
    let blob = |what: &str,
                descriptor: &Value,
                media_type: &'static str|
     -> Result<(Descriptor, Vec<u8>)> {
        let found = descriptor["mediaType"].as_str().unwrap_or_default();
        if found != media_type {
            return Err(invalid(format!(
                "{what} has media type {found:?}, expected {media_type:?}"
            )));
        }
        let digest = descriptor["digest"].as_str().unwrap_or_default();
        let bytes = read(&blob_path(dir, digest))?;
        let actual = format!("sha256:{}", sha256_hex(&bytes));
        if actual != digest {
            return Err(invalid(format!("{what} blob {digest} has digest {actual}")));
        }
        if descriptor["size"].as_u64() != Some(bytes.len() as u64) {
            return Err(invalid(format!(
                "{what} descriptor says size {}, the blob has {} bytes",
                descriptor["size"],
                bytes.len()
            )));
        }
        let descriptor = Descriptor {
            media_type,
            digest: digest.to_owned(),
            size: bytes.len() as u64,
        };
        Ok((descriptor, bytes))
    };

    let layout = parse("oci-layout", &read(&dir.join("oci-layout"))?)?;
    if layout["imageLayoutVersion"] != LAYOUT_VERSION {
        return Err(invalid(format!("oci-layout is {layout}")));
    }
    let index = parse("index.json", &read(&dir.join("index.json"))?)?;
    if index["schemaVersion"] != 2 || index["mediaType"] != INDEX_MEDIA_TYPE {
        return Err(invalid("index.json is not an OCI image index".to_owned()));
    }
    let [entry] = index["manifests"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    else {
        return Err(invalid(
            "index.json must list exactly one manifest".to_owned(),
        ));
    };
    let tag = entry["annotations"][REF_NAME_ANNOTATION]
        .as_str()
        .ok_or_else(|| invalid(format!("the index entry has no {REF_NAME_ANNOTATION}")))?
        .to_owned();
    let (manifest, manifest_bytes) = blob("manifest", entry, MANIFEST_MEDIA_TYPE)?;
    let manifest_json = parse("the manifest", &manifest_bytes)?;
    if manifest_json["schemaVersion"] != 2 || manifest_json["mediaType"] != MANIFEST_MEDIA_TYPE {
        return Err(invalid(
            "the manifest is not an OCI image manifest".to_owned(),
        ));
    }
    let (_, config_bytes) = blob("config", &manifest_json["config"], CONFIG_MEDIA_TYPE)?;
    let config = parse("the config", &config_bytes)?;
    if !config["architecture"].is_string() || !config["os"].is_string() {
        return Err(invalid("the config names no architecture or os".to_owned()));
    }
    let layers = manifest_json["layers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if layers.is_empty() {
        return Err(invalid("the manifest has no layers".to_owned()));
    }
    let mut diff_ids = Vec::new();
    let mut last_layer = Vec::new();
    for (n, layer) in layers.iter().enumerate() {
        let (_, gz) = blob(&format!("layer {n}"), layer, LAYER_MEDIA_TYPE)?;
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut tar)
            .map_err(|e| invalid(format!("layer {n} is not gzip: {e}")))?;
        diff_ids.push(Value::String(format!("sha256:{}", sha256_hex(&tar))));
        last_layer = read_tar(&tar).map_err(|e| invalid(format!("layer {n} is not a tar: {e}")))?;
    }
    if config["rootfs"]["type"] != "layers"
        || config["rootfs"]["diff_ids"] != Value::Array(diff_ids)
    {
        return Err(invalid(
            "the config's rootfs.diff_ids are not the uncompressed layers' digests".to_owned(),
        ));
    }
    Ok(LayoutImage {
        tag,
        manifest,
        config,
        last_layer,
    })
}

fn read_tar(tar: &[u8]) -> std::io::Result<Vec<LayerFile>> {
    let mut files = Vec::new();
    for entry in tar::Archive::new(tar).entries()? {
        let mut entry = entry?;
        let header = entry.header().clone();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes)?;
        files.push(LayerFile {
            path: entry.path()?.to_string_lossy().into_owned(),
            directory: header.entry_type() == tar::EntryType::Directory,
            mode: header.mode()?,
            uid: header.uid()?,
            gid: header.gid()?,
            bytes,
        });
    }
    Ok(files)
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
