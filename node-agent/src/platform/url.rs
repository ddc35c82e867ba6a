//! `caisson.config=<url>` on the kernel command line: the URL's parts, and
//! the variables substituted into it the way Talos does for `talos.config`:
//!
//! - `${uuid}`, `${serial}`, `${mac}`, `${hostname}`, in any case, inside
//!   the *values of the query string* (an `http://` URL's path is sent as
//!   written, as Talos does). Each value is decoded, substituted and
//!   percent-encoded again (`:` → `%3A`, space → `+`); arguments without a
//!   variable keep their bytes, and the arguments keep their order (Talos
//!   sorts them; no server cares).
//! - The legacy form `?uuid=` (an empty `uuid` argument) gets the UUID.
//! - A `tftp://` URL has no query: the variables are substituted into its
//!   file name, as they are, not encoded.
//!
//! Values: `uuid` the SMBIOS product UUID, `serial` the SMBIOS product
//! serial, `mac` the first physical link's MAC (`52:54:00:12:34:56`),
//! `hostname` the host name the node has while it has no config (DHCP's,
//! else the one derived from the machine-id).

use std::fmt;

/// The kernel argument.
pub const KEY_CONFIG_URL: &str = "caisson.config";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Tftp,
}

impl Scheme {
    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Tftp => 69,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Tftp => "tftp",
        }
    }
}

/// A parsed `http://` or `tftp://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigUrl {
    pub scheme: Scheme,
    /// A name or an address; IPv6 without its brackets.
    pub host: String,
    pub port: u16,
    /// Starts with `/`.
    pub path: String,
    /// Without the `?`.
    pub query: Option<String>,
}

impl ConfigUrl {
    pub fn parse(url: &str) -> Result<ConfigUrl, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or("expected http://HOST[:PORT]/PATH or tftp://HOST[:PORT]/FILE")?;
        let scheme =
            match scheme.to_ascii_lowercase().as_str() {
                "http" => Scheme::Http,
                "tftp" => Scheme::Tftp,
                "https" => return Err(
                    "https:// is not fetched: the node has no CA bundle to check a server with; \
                     serve the config over http:// or tftp:// on a network you trust"
                        .into(),
                ),
                other => {
                    return Err(format!(
                        "unsupported scheme {other:?}: expected http or tftp"
                    ))
                }
            };
        let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
        let (authority, path_query) = match rest.find(['/', '?']) {
            Some(i) => (rest.get(..i).unwrap_or(""), rest.get(i..).unwrap_or("")),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err("user information (user@host) is not supported".into());
        }
        let (host, port) = split_host_port(authority)?;
        let port = port.unwrap_or(scheme.default_port());
        let (path, query) = match path_query.split_once('?') {
            Some((p, q)) => (p, Some(q.to_string())),
            None => (path_query, None),
        };
        let path = if path.is_empty() { "/" } else { path }.to_string();
        if scheme == Scheme::Tftp {
            if query.is_some() {
                return Err(
                    "a tftp:// URL has no query string (put the variables in the file name)".into(),
                );
            }
            if path == "/" {
                return Err("a tftp:// URL needs a file name".into());
            }
        }
        Ok(ConfigUrl {
            scheme,
            host,
            port,
            path,
            query,
        })
    }

    /// `path?query`, for an HTTP request line.
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }

    /// What a TFTP read request names: the path without its leading `/`
    /// (RFC 3617).
    pub fn tftp_file(&self) -> &str {
        self.path.strip_prefix('/').unwrap_or(&self.path)
    }

    /// The variables this URL uses (so only those are looked up).
    pub fn variables(&self) -> Vec<Var> {
        let text = match self.scheme {
            Scheme::Http => self.query.clone().map(|q| decode_component(&q)),
            Scheme::Tftp => Some(self.path.clone()),
        };
        let Some(text) = text else {
            return Vec::new();
        };
        let mut used: Vec<Var> = Var::ALL
            .into_iter()
            .filter(|v| find_ci(&text, &v.placeholder()).is_some())
            .collect();
        if self.scheme == Scheme::Http && self.has_legacy_uuid() && !used.contains(&Var::Uuid) {
            used.push(Var::Uuid);
        }
        used
    }

    fn has_legacy_uuid(&self) -> bool {
        self.query.as_deref().is_some_and(|q| {
            q.split('&').any(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                k == "uuid" && decode_component(v).trim().is_empty()
            })
        })
    }

    /// The URL with `values` substituted (see the module's rules).
    pub fn substitute(&self, values: &Values) -> ConfigUrl {
        let mut out = self.clone();
        match self.scheme {
            Scheme::Tftp => out.path = replace_all(&self.path, values),
            Scheme::Http => {
                out.query = self.query.as_ref().map(|q| {
                    q.split('&')
                        .map(|pair| substitute_pair(pair, values))
                        .collect::<Vec<_>>()
                        .join("&")
                })
            }
        }
        out
    }
}

impl fmt::Display for ConfigUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(f, "{}://{host}", self.scheme.as_str())?;
        if self.port != self.scheme.default_port() {
            write!(f, ":{}", self.port)?;
        }
        f.write_str(&self.path_and_query())
    }
}

fn split_host_port(authority: &str) -> Result<(String, Option<u16>), String> {
    let bad_port = |p: &str| format!("{p:?} is not a port (1-65535)");
    let parse_port = |p: &str| match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(bad_port(p)),
    };
    if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or("an IPv6 host needs its closing ']'")?;
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{v6:?} is not an IPv6 address"));
        }
        let port = match after {
            "" => None,
            p => Some(parse_port(
                p.strip_prefix(':').ok_or("expected ':' after ']'")?,
            )?),
        };
        return Ok((v6.to_string(), port));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, Some(parse_port(p)?)),
        None => (authority, None),
    };
    if host.is_empty() {
        return Err("the URL has no host".into());
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(format!("{host:?} is not a host name or IPv4 address"));
    }
    Ok((host.to_string(), port))
}

/// A variable Talos (and we) substitute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    Uuid,
    Serial,
    Mac,
    Hostname,
}

impl Var {
    pub const ALL: [Var; 4] = [Var::Uuid, Var::Serial, Var::Mac, Var::Hostname];

    pub fn name(self) -> &'static str {
        match self {
            Var::Uuid => "uuid",
            Var::Serial => "serial",
            Var::Mac => "mac",
            Var::Hostname => "hostname",
        }
    }

    fn placeholder(self) -> String {
        format!("${{{}}}", self.name())
    }
}

/// What the variables stand for on this machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Values {
    pub uuid: String,
    pub serial: String,
    pub mac: String,
    pub hostname: String,
}

impl Values {
    pub fn get(&self, var: Var) -> &str {
        match var {
            Var::Uuid => &self.uuid,
            Var::Serial => &self.serial,
            Var::Mac => &self.mac,
            Var::Hostname => &self.hostname,
        }
    }
}

fn replace_all(text: &str, values: &Values) -> String {
    let mut out = text.to_string();
    for var in Var::ALL {
        out = replace_ci(&out, &var.placeholder(), values.get(var));
    }
    out
}

fn substitute_pair(pair: &str, values: &Values) -> String {
    let (key, value) = match pair.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (pair, None),
    };
    let decoded = value.map(decode_component).unwrap_or_default();
    if key == "uuid" && decoded.trim().is_empty() {
        return format!("{key}={}", encode_component(&values.uuid));
    }
    let replaced = replace_all(&decoded, values);
    if replaced == decoded {
        return pair.to_string();
    }
    format!("{key}={}", encode_component(&replaced))
}

/// The byte offset of `needle` in `haystack`, ignoring ASCII case.
fn find_ci(haystack: &str, needle: &str) -> Option<usize> {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    if n.is_empty() || n.len() > h.len() {
        return None;
    }
    (0..=h.len() - n.len()).find(|&i| {
        h.get(i..i + n.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(n))
    })
}

fn replace_ci(text: &str, needle: &str, with: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = find_ci(rest, needle) {
        out.push_str(rest.get(..i).unwrap_or(""));
        out.push_str(with);
        rest = rest.get(i + needle.len()..).unwrap_or("");
    }
    out.push_str(rest);
    out
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a
/// byte; a malformed escape stays as written.
pub fn decode_component(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Go's `url.QueryEscape`: letters, digits and `-_.~` stay, a space is
/// `+`, every other byte `%XX`.
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> Values {
        Values {
            uuid: "0000-0000".into(),
            serial: "12345".into(),
            mac: "12:34:56:78:90:ab".into(),
            hostname: "example-node".into(),
        }
    }

    fn sub(url: &str) -> String {
        ConfigUrl::parse(url)
            .unwrap()
            .substitute(&values())
            .to_string()
    }

    #[test]
    fn parses_http_and_tftp_urls() {
        let u = ConfigUrl::parse("http://10.0.2.2:8080/configs/node.toml?x=1#frag").unwrap();
        assert_eq!(u.scheme, Scheme::Http);
        assert_eq!(u.host, "10.0.2.2");
        assert_eq!(u.port, 8080);
        assert_eq!(u.path, "/configs/node.toml");
        assert_eq!(u.query.as_deref(), Some("x=1"));
        assert_eq!(u.path_and_query(), "/configs/node.toml?x=1");
        assert_eq!(u.to_string(), "http://10.0.2.2:8080/configs/node.toml?x=1");

        let bare = ConfigUrl::parse("HTTP://config.example.com?uuid=").unwrap();
        assert_eq!((bare.port, bare.path.as_str()), (80, "/"));
        assert_eq!(bare.to_string(), "http://config.example.com/?uuid=");

        let v6 = ConfigUrl::parse("http://[fd00::1]:81/c").unwrap();
        assert_eq!(v6.host, "fd00::1");
        assert_eq!(v6.to_string(), "http://[fd00::1]:81/c");

        let t = ConfigUrl::parse("tftp://10.0.2.2/nodes/${mac}.toml").unwrap();
        assert_eq!((t.scheme, t.port), (Scheme::Tftp, 69));
        assert_eq!(t.tftp_file(), "nodes/${mac}.toml");
    }

    #[test]
    fn refuses_what_it_cannot_fetch_with_a_reason() {
        for (url, why) in [
            ("https://x/c", "CA bundle"),
            ("ftp://x/c", "unsupported scheme"),
            ("10.0.2.2/c", "expected http://"),
            ("http://:80/c", "no host"),
            ("http://h:0/c", "not a port"),
            ("http://h:99999/c", "not a port"),
            ("http://user@h/c", "user information"),
            ("http://[fd00::1/c", "closing ']'"),
            ("http://h_x/c", "not a host name"),
            ("tftp://h/", "needs a file name"),
            ("tftp://h/f?x=1", "no query"),
        ] {
            let e = ConfigUrl::parse(url).unwrap_err();
            assert!(e.contains(why), "{url}: {e}");
        }
    }

    #[test]
    fn substitutes_in_query_values_only_in_any_case_and_encodes_them() {
        // The path is sent as written; keys are never touched.
        assert_eq!(
            sub("http://h/${mac}/c?${mac}=${MAC}&Host=${HostName}"),
            "http://h/${mac}/c?${mac}=12%3A34%3A56%3A78%3A90%3Aab&Host=example-node"
        );
        // A value already percent-encoded is decoded first, as Go's
        // url.Query() does; untouched arguments keep their bytes.
        assert_eq!(
            sub("http://h/c?id=%24%7Buuid%7D&raw=a%2Fb+c"),
            "http://h/c?id=0000-0000&raw=a%2Fb+c"
        );
        let spaced = Values {
            hostname: "a b/c".into(),
            ..values()
        };
        let u = ConfigUrl::parse("http://h/c?n=node-${hostname}").unwrap();
        assert_eq!(
            u.substitute(&spaced).to_string(),
            "http://h/c?n=node-a+b%2Fc"
        );
        // `uuid` with a value of its own is left alone.
        assert_eq!(sub("http://h/c?uuid=fixed"), "http://h/c?uuid=fixed");
    }

    #[test]
    fn tftp_substitutes_into_the_file_name_unencoded() {
        let u = ConfigUrl::parse("tftp://10.0.2.2/nodes/${MAC}-${serial}.toml").unwrap();
        let s = u.substitute(&values());
        assert_eq!(s.tftp_file(), "nodes/12:34:56:78:90:ab-12345.toml");
    }

    #[test]
    fn lists_only_the_variables_used() {
        let used = |url: &str| ConfigUrl::parse(url).unwrap().variables();
        assert_eq!(
            used("http://h/${uuid}/c"),
            vec![],
            "path variables are not substituted"
        );
        assert_eq!(
            used("http://h/c?a=${Serial}&b=${mac}"),
            vec![Var::Serial, Var::Mac]
        );
        assert_eq!(used("http://h/c?uuid="), vec![Var::Uuid]);
        assert_eq!(used("http://h/c?x=%24%7Bhostname%7D"), vec![Var::Hostname]);
        assert_eq!(used("tftp://h/${hostname}.toml"), vec![Var::Hostname]);
        assert_eq!(used("http://h/c"), vec![]);
    }

    #[test]
    fn component_codec_matches_go() {
        assert_eq!(encode_component("12:34 ~_-.é"), "12%3A34+~_-.%C3%A9");
        assert_eq!(decode_component("12%3a34+x%zz%"), "12:34 x%zz%");
    }

    #[test]
    fn talos_cases() {
        // Talos's own test table (url_test.go), order kept instead of sorted.
        assert_eq!(
            sub("http://example.com?foo=bar"),
            "http://example.com/?foo=bar"
        );
        assert_eq!(
            sub("http://example.com?uuid="),
            "http://example.com/?uuid=0000-0000"
        );
        assert_eq!(
            sub("http://example.com?uuid=${uuid}&no=${serial}"),
            "http://example.com/?uuid=0000-0000&no=12345"
        );
        assert_eq!(
            sub("http://example.com?uuid=${uuid}&mac=${mac}&hostname=${hostname}"),
            "http://example.com/?uuid=0000-0000&mac=12%3A34%3A56%3A78%3A90%3Aab&hostname=example-node"
        );
    }
}
