use std::collections::BTreeMap;
use std::io::Read;

use serde_json::Value;

use super::*;

fn ticker() -> ImageSpec {
    ImageSpec {
        files: vec![
            ImageFile {
                path_in_image: "/ticker".into(),
                source: FileSource::Bytes(b"\x7fELF not really".to_vec()),
                mode: 0o755,
            },
            ImageFile {
                path_in_image: "etc/caisson/greeting".into(),
                source: FileSource::Bytes(b"hello\n".to_vec()),
                mode: 0o644,
            },
        ],
        entrypoint: vec!["/ticker".into()],
        cmd: vec!["--interval".into(), "1".into()],
        env: vec!["PATH=/".into()],
        created: 1_700_000_000,
        ..ImageSpec::new("localhost/caisson-test/ticker:1")
    }
}

struct Entry {
    path: String,
    kind: tar::EntryType,
    mode: u32,
    mtime: u64,
    uid: u64,
    gid: u64,
    bytes: Vec<u8>,
}

fn entries(archive: &[u8]) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut tar = tar::Archive::new(archive);
    for e in tar.entries().unwrap() {
        let mut e = e.unwrap();
        let h = e.header().clone();
        let mut bytes = Vec::new();
        e.read_to_end(&mut bytes).unwrap();
        out.push(Entry {
            path: e.path().unwrap().to_string_lossy().into_owned(),
            kind: h.entry_type(),
            mode: h.mode().unwrap(),
            mtime: h.mtime().unwrap(),
            uid: h.uid().unwrap(),
            gid: h.gid().unwrap(),
            bytes,
        });
    }
    out
}

fn archive(image: &ImageSpec) -> (Digest, Vec<u8>) {
    let mut out = Vec::new();
    let digest = write_archive(image, &mut out).unwrap();
    (digest, out)
}

#[test]
fn the_same_spec_gives_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("prog");
    std::fs::write(&host, b"program bytes").unwrap();
    let mut image = ticker();
    image.files.push(ImageFile {
        path_in_image: "/usr/bin/prog".into(),
        source: FileSource::Host(host.clone()),
        mode: 0o755,
    });
    let (d1, a1) = archive(&image);
    // Host metadata (mtime, owner, mode) never reaches the archive.
    std::fs::write(&host, b"program bytes").unwrap();
    std::fs::set_permissions(&host, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let (d2, a2) = archive(&image);
    assert_eq!(d1, d2);
    assert!(a1 == a2, "two writes of one spec differ");
    // Input order does not matter either: entries are sorted.
    image.files.reverse();
    assert!(archive(&image).1 == a1, "file order changed the bytes");
    // But content does.
    image.created += 1;
    assert_ne!(archive(&image).0, d1);
}

#[test]
fn every_digest_inside_names_its_blob() {
    let (manifest_digest, bytes) = archive(&ticker());
    let all = entries(&bytes);
    let paths: Vec<&str> = all.iter().map(|e| e.path.as_str()).collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted, "outer entries are in path order");
    assert_eq!(&paths[..2], ["blobs/", "blobs/sha256/"]);
    assert_eq!(&paths[paths.len() - 2..], ["index.json", "oci-layout"]);

    let mut blobs = BTreeMap::new();
    for e in &all {
        assert_eq!((e.mtime, e.uid, e.gid), (1_700_000_000, 0, 0), "{}", e.path);
        if let Some(hex) = e
            .path
            .strip_prefix("blobs/sha256/")
            .filter(|h| !h.is_empty())
        {
            assert_eq!(
                Digest::sha256(&e.bytes).hex(),
                hex,
                "blob {hex} holds other bytes"
            );
            blobs.insert(format!("sha256:{hex}"), e.bytes.clone());
        }
    }
    assert_eq!(blobs.len(), 3);
    let file = |p: &str| &all.iter().find(|e| e.path == p).unwrap().bytes;
    assert_eq!(file("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#);

    let index: Value = serde_json::from_slice(file("index.json")).unwrap();
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], MEDIA_TYPE_INDEX);
    let m = &index["manifests"][0];
    assert_eq!(m["digest"], manifest_digest.as_str());
    assert_eq!(m["mediaType"], MEDIA_TYPE_MANIFEST);
    assert_eq!(
        m["platform"],
        serde_json::json!({"architecture": "amd64", "os": "linux"})
    );
    assert_eq!(
        m["annotations"],
        serde_json::json!({
            "io.containerd.image.name": "localhost/caisson-test/ticker:1",
            "org.opencontainers.image.ref.name": "1",
        })
    );
    let check = |d: &Value| -> Vec<u8> {
        let blob = blobs
            .get(d["digest"].as_str().unwrap())
            .expect("descriptor names a blob");
        assert_eq!(d["size"].as_u64().unwrap(), blob.len() as u64);
        blob.clone()
    };
    let manifest: Value = serde_json::from_slice(&check(m)).unwrap();
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["config"]["mediaType"], MEDIA_TYPE_CONFIG);
    assert_eq!(manifest["layers"][0]["mediaType"], MEDIA_TYPE_LAYER);
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);
    let config: Value = serde_json::from_slice(&check(&manifest["config"])).unwrap();
    let layer = check(&manifest["layers"][0]);
    assert_eq!(config["rootfs"]["type"], "layers");
    assert_eq!(
        config["rootfs"]["diff_ids"][0],
        manifest["layers"][0]["digest"]
    );
    assert_eq!(config["created"], "2023-11-14T22:13:20Z");
    assert_eq!(
        (&config["architecture"], &config["os"]),
        (&"amd64".into(), &"linux".into())
    );
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/ticker"])
    );
    assert_eq!(
        config["config"]["Cmd"],
        serde_json::json!(["--interval", "1"])
    );
    assert_eq!(config["config"]["Env"], serde_json::json!(["PATH=/"]));

    let layer = entries(&layer);
    let listing: Vec<(&str, u32)> = layer.iter().map(|e| (e.path.as_str(), e.mode)).collect();
    assert_eq!(
        listing,
        [
            ("etc/", 0o755),
            ("etc/caisson/", 0o755),
            ("etc/caisson/greeting", 0o644),
            ("ticker", 0o755)
        ]
    );
    assert!(layer
        .iter()
        .all(|e| (e.mtime, e.uid, e.gid) == (1_700_000_000, 0, 0)));
    assert_eq!(layer[0].kind, tar::EntryType::Directory);
    assert_eq!(layer[2].bytes, b"hello\n");
}

#[test]
fn long_paths_survive() {
    let deep = format!("/{}/file", ["d123456789"; 12].join("/"));
    let image = ImageSpec {
        files: vec![ImageFile {
            path_in_image: deep.clone(),
            source: FileSource::Bytes(b"x".to_vec()),
            mode: 0o644,
        }],
        ..ImageSpec::new("localhost/deep:1")
    };
    let (_, bytes) = archive(&image);
    let all = entries(&bytes);
    let layer_hex = all
        .iter()
        .find(|e| {
            e.path.starts_with("blobs/sha256/")
                && e.bytes.len() > 1024
                && e.bytes.first() != Some(&b'{')
        })
        .unwrap();
    let layer = entries(&layer_hex.bytes);
    assert_eq!(layer.last().unwrap().path, deep.trim_start_matches('/'));
}

#[test]
fn bad_files_are_refused_with_the_path() {
    let with = |files: Vec<(&str, FileSource)>| {
        let image = ImageSpec {
            files: files
                .into_iter()
                .map(|(p, source)| ImageFile {
                    path_in_image: p.into(),
                    source,
                    mode: 0o644,
                })
                .collect(),
            ..ImageSpec::new("localhost/x:1")
        };
        let mut out = Vec::new();
        let err = write_archive(&image, &mut out).unwrap_err();
        assert!(out.is_empty(), "nothing is written on error");
        err.to_string()
    };
    let b = || FileSource::Bytes(Vec::new());
    assert!(with(vec![("/a/../b", b())]).contains("\"..\""));
    assert!(with(vec![("/", b())]).contains("names no file"));
    assert!(with(vec![("a//b", b())]).contains("empty component"));
    assert!(with(vec![("/a", b()), ("a", b())]).contains("\"a\" is given twice"));
    assert!(with(vec![("/a", b()), ("/a/b", b())]).contains("\"a\""));
    assert!(with(vec![("/a/b", b()), ("/a", b())]).contains("\"a\""));
    let missing = with(vec![("/a", FileSource::Host("/nonexistent/prog".into()))]);
    assert!(missing.contains("reading /nonexistent/prog"), "{missing}");
    let image = ImageSpec::new(" ");
    assert!(write_archive(&image, &mut Vec::new()).is_err());
}

#[test]
fn dates_and_ref_names() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    assert_eq!(oci_ref_name("localhost/caisson-test/ticker:1"), "1");
    assert_eq!(oci_ref_name("registry:5000/img"), "registry:5000/img");
    assert_eq!(oci_ref_name("registry:5000/img:v2@sha256:ab"), "v2");
    assert_eq!(oci_ref_name("img"), "img");
}

#[test]
fn debug_never_shows_file_bytes() {
    let shown = format!("{:?}", FileSource::Bytes(b"secret".to_vec()));
    assert_eq!(shown, "Bytes(6 bytes)");
}
