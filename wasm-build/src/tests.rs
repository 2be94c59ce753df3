use std::{
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
};

use serde_json::Value;

use super::*;
use crate::{oci::*, wasm::tests::module};

/// A directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("wasm-build-{name}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn image() -> ImageRef {
    "oci://registry.example.com/higress-canary/plugin:0.1.0"
        .parse()
        .unwrap()
}

/// Packages a small synthetic module without wasm-opt into `<dir>/<name>`.
fn package(dir: &TempDir, name: &str, module_bytes: &[u8]) -> Artifacts {
    let input = dir.path().join(format!("{name}.in.wasm"));
    fs::write(&input, module_bytes).unwrap();
    let opts = PackageOptions {
        image: image(),
        wasm_opt: WasmOpt::Off,
    };
    package_plugin(&input, &dir.path().join(name), &opts).unwrap()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

/// Reads the blob a descriptor points to and checks the descriptor's digest and size.
fn checked_blob(layout: &Path, descriptor: &Value) -> Vec<u8> {
    let digest = descriptor["digest"].as_str().unwrap();
    let blob = fs::read(blob_path(layout, digest)).unwrap();
    assert_eq!(
        digest,
        format!("sha256:{}", sha256_hex(&blob)),
        "digest of {descriptor}"
    );
    assert_eq!(
        descriptor["size"],
        blob.len() as u64,
        "size of {descriptor}"
    );
    blob
}

#[test]
fn the_oci_layout_is_self_consistent_and_the_last_layer_holds_exactly_plugin_wasm() {
    let dir = TempDir::new("layout");
    let m = module(&["sign-ext"], &["proxy_on_context_create"]);
    let artifacts = package(&dir, "dist", &m);
    let layout = &artifacts.oci_dir;

    assert_eq!(
        read_json(&layout.join("oci-layout")),
        serde_json::json!({"imageLayoutVersion": "1.0.0"})
    );
    let index = read_json(&layout.join("index.json"));
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], INDEX_MEDIA_TYPE);
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1);
    assert_eq!(manifests[0]["mediaType"], MANIFEST_MEDIA_TYPE);
    assert_eq!(manifests[0]["annotations"][REF_NAME_ANNOTATION], "0.1.0");
    assert_eq!(
        manifests[0]["digest"],
        artifacts.image_digests.manifest.digest
    );

    let manifest: Value = serde_json::from_slice(&checked_blob(layout, &manifests[0])).unwrap();
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], MANIFEST_MEDIA_TYPE);
    assert_eq!(manifest["config"]["mediaType"], CONFIG_MEDIA_TYPE);
    let config: Value = serde_json::from_slice(&checked_blob(layout, &manifest["config"])).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    let last = layers.last().unwrap();
    assert_eq!(last["mediaType"], LAYER_MEDIA_TYPE);
    let layer = checked_blob(layout, last);

    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(&layer[..])
        .read_to_end(&mut tar)
        .unwrap();
    assert_eq!(config["rootfs"]["type"], "layers");
    assert_eq!(
        config["rootfs"]["diff_ids"],
        serde_json::json!([format!("sha256:{}", sha256_hex(&tar))])
    );
    assert!(config["architecture"].is_string() && config["os"].is_string());

    let mut archive = tar::Archive::new(&tar[..]);
    let mut entries = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let header = entry.header().clone();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        entries.push((entry.path().unwrap().into_owned(), header, bytes));
    }
    assert_eq!(entries.len(), 1, "the layer holds one file");
    let (path, header, bytes) = &entries[0];
    assert_eq!(path, Path::new("plugin.wasm"));
    assert_eq!(bytes, &fs::read(&artifacts.wasm).unwrap());
    assert_eq!(bytes, &m, "without wasm-opt the module is copied unchanged");
    assert_eq!(header.mode().unwrap(), 0o644);
    assert_eq!(
        (
            header.uid().unwrap(),
            header.gid().unwrap(),
            header.mtime().unwrap()
        ),
        (0, 0, 0)
    );
    assert_eq!(header.entry_type(), tar::EntryType::Regular);

    // Nothing in blobs/ that the manifest does not reference.
    let mut blobs: Vec<_> = fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| format!("sha256:{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    blobs.sort();
    let d = &artifacts.image_digests;
    let mut expected = vec![
        d.manifest.digest.clone(),
        d.config.digest.clone(),
        d.layer.digest.clone(),
    ];
    expected.sort();
    assert_eq!(blobs, expected);
}

#[test]
fn read_layout_accepts_the_plugin_image_and_returns_its_one_file() {
    let dir = TempDir::new("read");
    let m = module(&[], &["a"]);
    let artifacts = package(&dir, "dist", &m);
    let image = read_layout(&artifacts.oci_dir).unwrap();
    assert_eq!(image.tag, "0.1.0");
    assert_eq!(image.manifest, artifacts.image_digests.manifest);
    assert_eq!(
        (
            image.config["architecture"].as_str(),
            image.config["os"].as_str()
        ),
        (Some("wasm"), Some("wasip1"))
    );
    let [file] = image.last_layer.as_slice() else {
        panic!("one file expected: {:?}", image.last_layer);
    };
    assert_eq!(
        (file.path.as_str(), file.mode, file.directory),
        (PLUGIN_FILE, 0o644, false)
    );
    assert_eq!(file.bytes, m);
}

#[test]
fn an_image_with_directories_files_and_a_runtime_config_reads_back_as_written() {
    let dir = TempDir::new("image");
    let image = Image {
        architecture: "amd64",
        os: "linux",
        runtime: serde_json::json!({"User": "65532:65532", "Entrypoint": ["/bin/x"]}),
        layer: vec![
            LayerEntry::Dir {
                path: "bin/",
                mode: 0o755,
            },
            LayerEntry::File {
                path: "bin/x",
                mode: 0o755,
                bytes: b"\x7fELF",
            },
            LayerEntry::File {
                path: "etc/passwd",
                mode: 0o644,
                bytes: b"nonroot:x:65532:65532::/:/sbin/nologin\n",
            },
        ],
    };
    let layout = dir.path().join("layout");
    let written = write_image_layout(&layout, &image, "v1").unwrap();
    let read = read_layout(&layout).unwrap();
    assert_eq!(read.manifest, written.manifest);
    assert_eq!(read.config["config"]["User"], "65532:65532");
    assert_eq!(read.config["architecture"], "amd64");
    let summary: Vec<_> = read
        .last_layer
        .iter()
        .map(|f| (f.path.as_str(), f.directory, f.mode, f.uid))
        .collect();
    assert_eq!(
        summary,
        [
            ("bin/", true, 0o755, 0),
            ("bin/x", false, 0o755, 0),
            ("etc/passwd", false, 0o644, 0)
        ]
    );
    // Same input, same bytes.
    let again = write_image_layout(&dir.path().join("again"), &image, "v1").unwrap();
    assert_eq!(again, written);
}

#[test]
fn read_layout_rejects_a_changed_blob_a_wrong_media_type_and_a_wrong_diff_id() {
    let dir = TempDir::new("corrupt");
    let artifacts = package(&dir, "dist", &module(&[], &["a"]));
    let layout = &artifacts.oci_dir;
    let digests = &artifacts.image_digests;

    // A flipped byte in the layer blob.
    let layer_path = blob_path(layout, &digests.layer.digest);
    let original = fs::read(&layer_path).unwrap();
    let mut flipped = original.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0xff;
    fs::write(&layer_path, &flipped).unwrap();
    let err = read_layout(layout).unwrap_err().to_string();
    assert!(
        err.contains("layer 0 blob") && err.contains("has digest"),
        "{err}"
    );
    fs::write(&layer_path, &original).unwrap();
    read_layout(layout).unwrap();

    // The index pointing at the manifest with another media type.
    let index_path = layout.join("index.json");
    let index = fs::read_to_string(&index_path).unwrap();
    fs::write(
        &index_path,
        index.replace(
            MANIFEST_MEDIA_TYPE,
            "application/vnd.docker.distribution.manifest.v2+json",
        ),
    )
    .unwrap();
    let err = read_layout(layout).unwrap_err().to_string();
    assert!(err.contains("manifest has media type"), "{err}");
    fs::write(&index_path, &index).unwrap();

    // A config whose diff_ids do not match (rewritten consistently up to the manifest).
    let config_path = blob_path(layout, &digests.config.digest);
    let mut config: Value = serde_json::from_slice(&fs::read(&config_path).unwrap()).unwrap();
    config["rootfs"]["diff_ids"] = serde_json::json!(["sha256:00"]);
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_digest = format!("sha256:{}", sha256_hex(&config_bytes));
    fs::write(blob_path(layout, &config_digest), &config_bytes).unwrap();
    let manifest_path = blob_path(layout, &digests.manifest.digest);
    let mut manifest: Value = serde_json::from_slice(&fs::read(&manifest_path).unwrap()).unwrap();
    manifest["config"]["digest"] = config_digest.into();
    manifest["config"]["size"] = config_bytes.len().into();
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    let manifest_digest = format!("sha256:{}", sha256_hex(&manifest_bytes));
    fs::write(blob_path(layout, &manifest_digest), &manifest_bytes).unwrap();
    let mut index_json: Value = serde_json::from_str(&index).unwrap();
    index_json["manifests"][0]["digest"] = manifest_digest.into();
    index_json["manifests"][0]["size"] = manifest_bytes.len().into();
    fs::write(&index_path, serde_json::to_vec(&index_json).unwrap()).unwrap();
    let err = read_layout(layout).unwrap_err().to_string();
    assert!(err.contains("diff_ids"), "{err}");
}

#[test]
fn packaging_the_same_module_twice_gives_identical_bytes_and_digests() {
    let dir = TempDir::new("repro");
    let m = module(&["sign-ext", "mutable-globals"], &["a", "b"]);
    let first = package(&dir, "one", &m);
    let second = package(&dir, "two", &m);
    assert_eq!(first.image_digests, second.image_digests);
    assert_eq!(first.wasm_sha256, second.wasm_sha256);
    for file in ["oci-layout", "index.json"] {
        assert_eq!(
            fs::read(first.oci_dir.join(file)).unwrap(),
            fs::read(second.oci_dir.join(file)).unwrap()
        );
    }
    assert_eq!(
        fs::read(&first.wasmplugin).unwrap(),
        fs::read(&second.wasmplugin).unwrap(),
        "wasmplugin.yaml"
    );

    // A different module gives a different image, in the same directory, with no stale blobs.
    let other = package(&dir, "one", &module(&["sign-ext"], &["c"]));
    assert_ne!(other.image_digests.manifest, first.image_digests.manifest);
    assert_eq!(
        fs::read_dir(other.oci_dir.join("blobs/sha256"))
            .unwrap()
            .count(),
        3
    );
}

#[test]
fn the_sha256_file_matches_plugin_wasm_in_sha256sum_format() {
    let dir = TempDir::new("sha");
    let artifacts = package(&dir, "dist", &module(&[], &["a"]));
    let line = fs::read_to_string(&artifacts.sha256_file).unwrap();
    let wasm = fs::read(&artifacts.wasm).unwrap();
    assert_eq!(line, format!("{}  plugin.wasm\n", sha256_hex(&wasm)));
    assert_eq!(artifacts.wasm_sha256, sha256_hex(&wasm));
    assert_eq!(artifacts.wasm_sha256.len(), 64);
    assert_eq!(
        (artifacts.input_size, artifacts.output_size),
        (wasm.len() as u64, wasm.len() as u64)
    );
}

#[test]
fn the_example_wasmplugin_carries_this_builds_manifest_digest() {
    let dir = TempDir::new("yaml");
    let artifacts = package(&dir, "dist", &module(&[], &["a"]));
    let yaml = fs::read_to_string(&artifacts.wasmplugin).unwrap();
    let digest = &artifacts.image_digests.manifest.digest;
    assert!(yaml.contains(&format!("plugin@{digest}")));
    assert!(yaml.contains(&artifacts.wasm_sha256));
    assert!(yaml.contains("\n  url: oci://registry.example.com/higress-canary/plugin:0.1.0\n"));
}

#[test]
fn sha256_hex_matches_a_known_vector() {
    assert_eq!(
        sha256_hex(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn a_file_that_is_not_wasm_is_rejected_before_anything_is_written() {
    let dir = TempDir::new("notwasm");
    let input = dir.path().join("x.wasm");
    fs::write(&input, b"#!/bin/sh\necho hi\n").unwrap();
    let out = dir.path().join("dist");
    let err = package_plugin(&input, &out, &PackageOptions::new(image())).unwrap_err();
    assert!(matches!(err, Error::NotWasm { .. }), "{err}");
    assert!(!out.exists());
}

#[test]
fn image_references_need_a_tag_and_keep_registry_ports() {
    let r: ImageRef = "oci://localhost:5000/team/plugin:v1.2.3".parse().unwrap();
    assert_eq!(
        (r.repository(), r.tag()),
        ("localhost:5000/team/plugin", "v1.2.3")
    );
    assert_eq!(r.to_string(), "oci://localhost:5000/team/plugin:v1.2.3");
    assert_eq!(
        r.pinned("sha256:ab"),
        "oci://localhost:5000/team/plugin@sha256:ab"
    );
    let bare: ImageRef = "registry.example.com/p:1".parse().unwrap();
    assert_eq!(bare.to_string(), "oci://registry.example.com/p:1");
    assert_eq!(
        ImageRef::placeholder("0.3.0").unwrap().to_string(),
        "oci://registry.example.com/higress-canary/plugin:0.3.0"
    );

    for bad in [
        "oci://localhost:5000/team/plugin",
        "oci://r.example.com/p@sha256:abcd",
        "oci://r.example.com/p:",
        "oci://r.example.com/p:-x",
        "oci://r.example.com//p:1",
        "https://r.example.com/p:1",
        "oci://r.example.com/p:has space",
    ] {
        assert!(bad.parse::<ImageRef>().is_err(), "{bad} should be rejected");
    }
}
