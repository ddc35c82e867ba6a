//! User data as platforms hand it over: a Caisson machine config is TOML
//! text; gzip is undone first (cloud-init accepts gzipped user data, and
//! OpenStack's 64 KiB limit makes people use it). What is recognisably
//! something else (cloud-init's formats, Ignition, a script) is named, so
//! the console says what was given instead of a TOML syntax error.

use std::io::Read;

/// What the platform's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserData {
    /// Text to parse as a machine config.
    Text(String),
    /// Empty or only whitespace: as if there were none.
    Empty,
    /// Not a Caisson config: what it is.
    Foreign(String),
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

pub fn classify(bytes: &[u8], max: usize) -> UserData {
    if bytes.starts_with(&GZIP_MAGIC) {
        let mut out = Vec::new();
        let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
        return match flate2::read::GzDecoder::new(bytes)
            .take(limit)
            .read_to_end(&mut out)
        {
            Ok(_) if out.len() > max => {
                UserData::Foreign(format!("gzip data larger than {max} bytes once unpacked"))
            }
            Ok(_) if out.starts_with(&GZIP_MAGIC) => UserData::Foreign("gzip inside gzip".into()),
            Ok(_) => classify(&out, max),
            Err(e) => UserData::Foreign(format!("broken gzip data ({e})")),
        };
    }
    let Ok(text) = std::str::from_utf8(bytes) else {
        return UserData::Foreign("binary data (not UTF-8 text)".into());
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let head = text.trim_start();
    if head.is_empty() {
        return UserData::Empty;
    }
    let first_line = head.lines().next().unwrap_or("").trim_end();
    let lower = first_line.to_ascii_lowercase();
    let cloud_init = [
        (
            "#cloud-config-archive",
            "a cloud-init #cloud-config-archive document",
        ),
        ("#cloud-config", "a cloud-init #cloud-config document"),
        ("#cloud-boothook", "a cloud-init #cloud-boothook script"),
        ("#include", "a cloud-init #include list"),
        ("#part-handler", "a cloud-init #part-handler"),
        ("## template: jinja", "a cloud-init Jinja template"),
        ("#!", "a script"),
        ("content-type:", "a MIME multi-part document"),
        ("mime-version:", "a MIME multi-part document"),
    ];
    if let Some((_, what)) = cloud_init
        .iter()
        .find(|(prefix, _)| lower.starts_with(prefix))
    {
        return UserData::Foreign(format!("{what} (first line {first_line:?})"));
    }
    if head.starts_with('{') {
        if let Ok(serde_json::Value::Object(o)) = serde_json::from_str(head) {
            let what = if o.contains_key("ignition") {
                "an Ignition config (JSON)"
            } else {
                "a JSON document"
            };
            return UserData::Foreign(what.into());
        }
    }
    UserData::Text(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const MAX: usize = 1 << 20;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn foreign(b: &[u8]) -> String {
        match classify(b, MAX) {
            UserData::Foreign(what) => what,
            other => panic!("{b:?} taken for {other:?}"),
        }
    }

    #[test]
    fn toml_is_text_even_gzipped_or_with_a_bom() {
        let toml = "# node\nversion = 1\n";
        assert_eq!(classify(toml.as_bytes(), MAX), UserData::Text(toml.into()));
        assert_eq!(
            classify(&gzip(toml.as_bytes()), MAX),
            UserData::Text(toml.into())
        );
        let bom = format!("\u{feff}{toml}");
        assert_eq!(classify(bom.as_bytes(), MAX), UserData::Text(toml.into()));
        // Not TOML at all still goes to the parser, which says where.
        assert_eq!(
            classify(b"hello there", MAX),
            UserData::Text("hello there".into())
        );
    }

    #[test]
    fn cloud_init_ignition_scripts_and_binary_are_named() {
        assert!(foreign(b"#cloud-config\nhostname: x\n")
            .starts_with("a cloud-init #cloud-config document"));
        assert!(foreign(b"  #Cloud-Config\n").contains("#cloud-config"));
        assert!(foreign(b"#cloud-config-archive\n- a\n").contains("archive"));
        assert!(foreign(b"#!/bin/sh\necho hi\n").starts_with("a script (first line \"#!/bin/sh\")"));
        assert!(foreign(b"Content-Type: multipart/mixed; boundary=x\n").contains("MIME"));
        assert_eq!(
            foreign(br#"{"ignition": {"version": "3.4.0"}}"#),
            "an Ignition config (JSON)"
        );
        assert_eq!(foreign(br#"{"a": 1}"#), "a JSON document");
        assert!(foreign(&gzip(b"#cloud-config\n")).contains("#cloud-config"));
        assert_eq!(
            foreign(&[0xff, 0xfe, 0x00, 0x41]),
            "binary data (not UTF-8 text)"
        );
        assert!(foreign(&[0x1f, 0x8b, 0x08, 0x00, 1, 2]).starts_with("broken gzip data"));
    }

    #[test]
    fn empty_user_data_is_none_and_a_gzip_bomb_is_refused() {
        assert_eq!(classify(b"", MAX), UserData::Empty);
        assert_eq!(classify(b" \n\t\n", MAX), UserData::Empty);
        let bomb = gzip(&vec![b'a'; 2 * MAX]);
        assert!(bomb.len() < MAX / 100);
        assert!(foreign(&bomb).contains("larger than"));
    }
}
