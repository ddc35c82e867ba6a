//! VMware guestinfo: the machine config in `guestinfo.caisson.config`
//! (set with `govc vm.change -e` or the VM's advanced settings), encoded
//! as `guestinfo.caisson.config.encoding` says, else in the OVF
//! environment (`guestinfo.ovfEnv`, a vApp property of the same key, as
//! the OVA declares it). `guestinfo.hostname` (or the OVF property) names
//! the host when the config does not.
//!
//! After the config is saved on STATE the agent empties
//! `guestinfo.caisson.config` and its encoding, as Ignition does, so the
//! CA key it carries is not left for anything else in the VM to read. An
//! OVF property cannot be cleared from inside the guest (vSphere writes
//! the environment again at every power-on): clear it in the VM's vApp
//! options.
//!
//! Everything here is pure; the port I/O is in `backdoor`.

use std::collections::BTreeMap;
use std::io::Read;

use base64::Engine;

pub const KEY_CONFIG: &str = "guestinfo.caisson.config";
pub const KEY_ENCODING: &str = "guestinfo.caisson.config.encoding";
/// The host name property the OVA declares (image-builder's `ova.rs`).
pub const KEY_HOSTNAME: &str = "guestinfo.hostname";
pub const KEY_OVF_ENV: &str = "guestinfo.ovfEnv";

const OVF_ENV_NS: &str = "http://schemas.dmtf.org/ovf/environment/1";

/// How the value is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Plain,
    Base64,
    GzipBase64,
}

impl Encoding {
    /// The names Ignition and Talos users already write.
    pub fn parse(name: &str) -> Result<Encoding, String> {
        match name.trim().to_ascii_lowercase().as_str() {
            "" => Ok(Encoding::Plain),
            "base64" | "b64" => Ok(Encoding::Base64),
            "gzip+base64" | "gz+base64" | "gzip+b64" | "gz+b64" => Ok(Encoding::GzipBase64),
            other => Err(format!(
                "{KEY_ENCODING} = {other:?}: expected base64 or gzip+base64 (or empty for plain text)"
            )),
        }
    }
}

/// The value as bytes. Base64 may be wrapped over lines; gzip stops at `max`.
pub fn decode(value: &str, encoding: Encoding, max: usize) -> Result<Vec<u8>, String> {
    let b64 = |v: &str| {
        let compact: String = v.chars().filter(|c| !c.is_whitespace()).collect();
        base64::engine::general_purpose::STANDARD
            .decode(compact.as_bytes())
            .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(compact.as_bytes()))
            .map_err(|e| format!("{KEY_CONFIG} is not base64: {e}"))
    };
    match encoding {
        Encoding::Plain => Ok(value.as_bytes().to_vec()),
        Encoding::Base64 => b64(value),
        Encoding::GzipBase64 => {
            let packed = b64(value)?;
            let mut out = Vec::new();
            let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
            flate2::read::GzDecoder::new(packed.as_slice())
                .take(limit)
                .read_to_end(&mut out)
                .map_err(|e| format!("{KEY_CONFIG} is base64 but not gzip: {e}"))?;
            if out.len() > max {
                return Err(format!("{KEY_CONFIG} unpacks to more than {max} bytes"));
            }
            Ok(out)
        }
    }
}

/// The `PropertySection` of an OVF environment document: key → value.
pub fn ovf_properties(xml: &str) -> Result<BTreeMap<String, String>, String> {
    let doc =
        roxmltree::Document::parse(xml).map_err(|e| format!("{KEY_OVF_ENV} is not XML: {e}"))?;
    let root = doc.root_element();
    if root.tag_name().name() != "Environment" {
        return Err(format!(
            "{KEY_OVF_ENV}: the root element is <{}>, not an OVF <Environment>",
            root.tag_name().name()
        ));
    }
    let mut out = BTreeMap::new();
    let sections = root
        .children()
        .filter(|n| n.is_element() && n.tag_name().name() == "PropertySection");
    for section in sections {
        for p in section
            .children()
            .filter(|n| n.is_element() && n.tag_name().name() == "Property")
        {
            // oe:key / oe:value; vCenter always qualifies them.
            let attr = |name: &str| {
                p.attribute((OVF_ENV_NS, name))
                    .or_else(|| p.attribute(name))
            };
            if let (Some(k), Some(v)) = (attr("key"), attr("value")) {
                out.insert(k.to_string(), v.to_string());
            }
        }
    }
    Ok(out)
}

/// Where the config was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    /// `guestinfo.caisson.config` itself: scrubbed once on STATE.
    Guestinfo,
    /// A property of the OVF environment: cannot be scrubbed from inside.
    OvfEnv,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub config: Vec<u8>,
    pub from: From,
    pub hostname: Option<String>,
}

/// Read what is set, through `get` (one guestinfo key → its value, `None`
/// when unset). Empty values count as unset (a scrubbed key). `Ok(None)`:
/// no config here.
pub fn read(
    get: &mut dyn FnMut(&str) -> Result<Option<String>, String>,
    max: usize,
) -> Result<Option<Found>, String> {
    let nonempty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    let ovf = match nonempty(get(KEY_OVF_ENV)?) {
        Some(xml) => ovf_properties(&xml)?,
        None => BTreeMap::new(),
    };
    // OVF properties are declared with the guestinfo. prefix; accept them without it too.
    let prop = |key: &str| {
        ovf.get(key)
            .or_else(|| ovf.get(key.trim_start_matches("guestinfo.")))
            .filter(|v| !v.trim().is_empty())
            .cloned()
    };
    let hostname = nonempty(get(KEY_HOSTNAME)?)
        .or_else(|| prop(KEY_HOSTNAME))
        .map(|h| h.trim().to_string());
    if let Some(value) = nonempty(get(KEY_CONFIG)?) {
        let encoding = Encoding::parse(&get(KEY_ENCODING)?.unwrap_or_default())?;
        return Ok(Some(Found {
            config: decode(&value, encoding, max)?,
            from: From::Guestinfo,
            hostname,
        }));
    }
    if let Some(value) = prop(KEY_CONFIG) {
        let encoding = Encoding::parse(&prop(KEY_ENCODING).unwrap_or_default())?;
        return Ok(Some(Found {
            config: decode(&value, encoding, max)?,
            from: From::OvfEnv,
            hostname,
        }));
    }
    Ok(None)
}

/// The keys emptied after the config is on STATE.
pub const SCRUBBED: [&str; 2] = [KEY_CONFIG, KEY_ENCODING];

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const MAX: usize = 1 << 20;
    const CONFIG: &str = "version = 1\n[machine]\nhostname = \"vm-1\"\n";

    fn b64(data: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(data)
    }

    fn gzb64(data: &[u8]) -> String {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).unwrap();
        b64(&e.finish().unwrap())
    }

    #[test]
    fn encodings_by_every_name_users_write() {
        for (name, enc) in [
            ("", Encoding::Plain),
            (" base64 ", Encoding::Base64),
            ("b64", Encoding::Base64),
            ("BASE64", Encoding::Base64),
            ("gzip+base64", Encoding::GzipBase64),
            ("gz+b64", Encoding::GzipBase64),
        ] {
            assert_eq!(Encoding::parse(name).unwrap(), enc, "{name:?}");
        }
        let e = Encoding::parse("hex").unwrap_err();
        assert!(e.contains("\"hex\"") && e.contains(KEY_ENCODING), "{e}");
    }

    #[test]
    fn decodes_plain_base64_wrapped_base64_and_gzip() {
        assert_eq!(
            decode(CONFIG, Encoding::Plain, MAX).unwrap(),
            CONFIG.as_bytes()
        );
        assert_eq!(
            decode(&b64(CONFIG.as_bytes()), Encoding::Base64, MAX).unwrap(),
            CONFIG.as_bytes()
        );
        // `base64` wraps at 76 columns; vSphere keeps the newlines.
        let long = CONFIG.repeat(20);
        let wrapped: String = b64(long.as_bytes())
            .as_bytes()
            .chunks(76)
            .map(|c| format!("{}\n", std::str::from_utf8(c).unwrap()))
            .collect();
        assert_eq!(
            decode(&wrapped, Encoding::Base64, MAX).unwrap(),
            long.as_bytes()
        );
        assert_eq!(
            decode(&gzb64(CONFIG.as_bytes()), Encoding::GzipBase64, MAX).unwrap(),
            CONFIG.as_bytes()
        );
        // URL-safe alphabet (`-_`) too.
        let url_safe = base64::engine::general_purpose::URL_SAFE.encode([0xfb, 0xff, 0xfe]);
        assert_eq!(
            decode(&url_safe, Encoding::Base64, MAX).unwrap(),
            [0xfb, 0xff, 0xfe]
        );
    }

    #[test]
    fn bad_encodings_say_which_key_and_why() {
        let e = decode("not*base64", Encoding::Base64, MAX).unwrap_err();
        assert!(
            e.starts_with("guestinfo.caisson.config is not base64"),
            "{e}"
        );
        let e = decode(&b64(b"plain"), Encoding::GzipBase64, MAX).unwrap_err();
        assert!(e.contains("not gzip"), "{e}");
        let e = decode(&gzb64(&vec![0u8; 4096]), Encoding::GzipBase64, 1000).unwrap_err();
        assert!(e.contains("more than 1000 bytes"), "{e}");
    }

    /// What vCenter puts in guestinfo.ovfEnv (trimmed from a real one).
    fn ovf_env(props: &[(&str, &str)]) -> String {
        let props: String = props
            .iter()
            .map(|(k, v)| {
                // As vCenter writes them: attribute values escaped.
                let v = v
                    .replace('&', "&amp;")
                    .replace('<', "&lt;")
                    .replace('"', "&quot;")
                    .replace('\n', "&#10;");
                format!("         <Property oe:key=\"{k}\" oe:value=\"{v}\"/>\n")
            })
            .collect();
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<Environment
     xmlns="http://schemas.dmtf.org/ovf/environment/1"
     xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
     xmlns:oe="http://schemas.dmtf.org/ovf/environment/1"
     xmlns:ve="http://www.vmware.com/schema/ovfenv"
     oe:id=""
     ve:vCenterId="vm-1234">
   <PlatformSection>
      <Kind>VMware ESXi</Kind>
      <Version>8.0.2</Version>
      <Vendor>VMware, Inc.</Vendor>
      <Locale>en</Locale>
   </PlatformSection>
   <PropertySection>
{props}   </PropertySection>
   <ve:EthernetAdapterSection>
      <ve:Adapter ve:mac="00:50:56:8e:12:34" ve:network="VM Network" ve:unitNumber="7"/>
   </ve:EthernetAdapterSection>
</Environment>"#
        )
    }

    #[test]
    fn ovf_environment_properties_are_read() {
        let xml = ovf_env(&[
            ("guestinfo.caisson.config", "dmVyc2lvbiA9IDEK"),
            ("guestinfo.caisson.config.encoding", "base64"),
            ("guestinfo.hostname", "ovf-host"),
            ("other", "a & b"),
        ]);
        let p = ovf_properties(&xml).unwrap();
        assert_eq!(
            p.get("guestinfo.caisson.config").map(String::as_str),
            Some("dmVyc2lvbiA9IDEK")
        );
        assert_eq!(p.get("other").map(String::as_str), Some("a & b"));
        assert_eq!(p.len(), 4);
        // No PropertySection: no properties.
        assert!(
            ovf_properties(&ovf_env(&[]).replace("PropertySection", "Other"))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_broken_or_foreign_ovf_environment_is_an_error() {
        assert!(ovf_properties("<Environment>")
            .unwrap_err()
            .contains("not XML"));
        let e = ovf_properties("<Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\"/>")
            .unwrap_err();
        assert!(e.contains("<Envelope>"), "{e}");
        // No DTDs, so no entity expansion bombs.
        let bomb = "<!DOCTYPE e [<!ENTITY a \"aaaaaaaaaa\"><!ENTITY b \"&a;&a;&a;&a;&a;\">]><Environment>&b;</Environment>";
        assert!(ovf_properties(bomb).unwrap_err().contains("not XML"));
    }

    fn keys<'a>(
        map: &'a [(&'a str, String)],
    ) -> impl FnMut(&str) -> Result<Option<String>, String> + 'a {
        move |k| {
            Ok(map
                .iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.clone()))
        }
    }

    #[test]
    fn the_guestinfo_key_wins_over_the_ovf_property() {
        let env = ovf_env(&[
            ("guestinfo.caisson.config", &b64(b"from ovf")),
            ("guestinfo.caisson.config.encoding", "base64"),
        ]);
        let set = [
            (KEY_CONFIG, gzb64(CONFIG.as_bytes())),
            (KEY_ENCODING, "gzip+base64".to_string()),
            (KEY_OVF_ENV, env.clone()),
            (KEY_HOSTNAME, " gi-host \n".to_string()),
        ];
        let found = read(&mut keys(&set), MAX).unwrap().unwrap();
        assert_eq!(found.config, CONFIG.as_bytes());
        assert_eq!(found.from, From::Guestinfo);
        assert_eq!(found.hostname.as_deref(), Some("gi-host"));

        // Scrubbed (empty) key: the OVF property is used, with its own encoding.
        let scrubbed = [(KEY_CONFIG, String::new()), (KEY_OVF_ENV, env)];
        let found = read(&mut keys(&scrubbed), MAX).unwrap().unwrap();
        assert_eq!(
            (found.config.as_slice(), found.from),
            (&b"from ovf"[..], From::OvfEnv)
        );
    }

    #[test]
    fn ovf_properties_without_the_guestinfo_prefix_and_nothing_set() {
        let env = ovf_env(&[("caisson.config", CONFIG), ("hostname", "short")]);
        let found = read(&mut keys(&[(KEY_OVF_ENV, env)]), MAX)
            .unwrap()
            .unwrap();
        assert_eq!(found.config, CONFIG.as_bytes());
        assert_eq!(found.hostname.as_deref(), Some("short"));
        assert_eq!(read(&mut keys(&[]), MAX).unwrap(), None);
        let e = read(
            &mut keys(&[(KEY_CONFIG, "x".into()), (KEY_ENCODING, "rot13".into())]),
            MAX,
        )
        .unwrap_err();
        assert!(e.contains("rot13"), "{e}");
        let e = read(&mut keys(&[(KEY_OVF_ENV, "<oops".into())]), MAX).unwrap_err();
        assert!(e.contains("guestinfo.ovfEnv is not XML"), "{e}");
    }
}
