//! The kernel's `ip=` argument (Documentation/admin-guide/nfs/nfsroot.rst),
//! honoured by the agent so a node can have static addressing before it has
//! a config:
//!
//! `ip=<client-ip>:<server-ip>:<gw-ip>:<netmask>:<hostname>:<device>:<autoconf>:<dns0-ip>:<dns1-ip>:<ntp0-ip>`
//!
//! and the short forms `ip=dhcp`, `ip=off`/`none`.

use std::net::Ipv4Addr;

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("ip={value}: {reason}")]
pub struct IpArgError {
    pub value: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpArg {
    /// `ip=off` or `ip=none`: no early networking.
    Off,
    /// DHCP, on `device` or on every link.
    Dhcp { device: Option<String> },
    Static(StaticIp),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticIp {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub hostname: Option<String>,
    /// None: the first physical link.
    pub device: Option<String>,
    pub nameservers: Vec<Ipv4Addr>,
    pub ntp: Option<Ipv4Addr>,
}

pub(crate) fn netmask_to_prefix(mask: Ipv4Addr) -> Option<u8> {
    let bits = u32::from(mask);
    let ones = bits.leading_ones();
    (bits.checked_shl(ones).unwrap_or(0) == 0).then_some(ones as u8)
}

fn opt_ip(field: &str, what: &str, value: &str) -> Result<Option<Ipv4Addr>, IpArgError> {
    if field.is_empty() {
        return Ok(None);
    }
    field.parse().map(Some).map_err(|_| IpArgError {
        value: value.to_string(),
        reason: format!("{what} {field:?} is not an IPv4 address"),
    })
}

fn opt_str(field: &str) -> Option<String> {
    (!field.is_empty()).then(|| field.to_string())
}

impl IpArg {
    pub fn parse(value: &str) -> Result<IpArg, IpArgError> {
        let err = |reason: String| IpArgError { value: value.to_string(), reason };
        match value {
            "off" | "none" => return Ok(IpArg::Off),
            "dhcp" | "on" | "any" | "both" => return Ok(IpArg::Dhcp { device: None }),
            _ => {}
        }
        let f: Vec<&str> = value.split(':').collect();
        let field = |i: usize| f.get(i).copied().unwrap_or("");
        let autoconf = field(6);
        if field(0).is_empty() {
            return match autoconf {
                "" | "dhcp" | "on" | "any" | "both" => Ok(IpArg::Dhcp { device: opt_str(field(5)) }),
                "off" | "none" => Ok(IpArg::Off),
                other => Err(err(format!("autoconf {other:?} is not supported (use dhcp or off)"))),
            };
        }
        if !matches!(autoconf, "" | "off" | "none") {
            return Err(err(format!("a static address with autoconf {autoconf:?} is contradictory")));
        }
        let address = opt_ip(field(0), "client address", value)?.ok_or_else(|| err("no client address".into()))?;
        let prefix_len = match opt_ip(field(3), "netmask", value)? {
            None => 24,
            Some(mask) => netmask_to_prefix(mask).ok_or_else(|| err(format!("netmask {mask} is not contiguous")))?,
        };
        let mut nameservers = Vec::new();
        for (i, what) in [(7, "dns0"), (8, "dns1")] {
            if let Some(ip) = opt_ip(field(i), what, value)? {
                nameservers.push(ip);
            }
        }
        Ok(IpArg::Static(StaticIp {
            address,
            prefix_len,
            gateway: opt_ip(field(2), "gateway", value)?,
            hostname: opt_str(field(4)),
            device: opt_str(field(5)),
            nameservers,
            ntp: opt_ip(field(9), "ntp0", value)?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_static_form() {
        let a = IpArg::parse("10.0.0.5::10.0.0.1:255.255.255.0:node-1:eth0:off:10.0.0.53:10.0.0.54:10.0.0.123").unwrap();
        assert_eq!(
            a,
            IpArg::Static(StaticIp {
                address: Ipv4Addr::new(10, 0, 0, 5),
                prefix_len: 24,
                gateway: Some(Ipv4Addr::new(10, 0, 0, 1)),
                hostname: Some("node-1".into()),
                device: Some("eth0".into()),
                nameservers: vec![Ipv4Addr::new(10, 0, 0, 53), Ipv4Addr::new(10, 0, 0, 54)],
                ntp: Some(Ipv4Addr::new(10, 0, 0, 123)),
            })
        );
    }

    #[test]
    fn short_forms() {
        assert_eq!(IpArg::parse("dhcp").unwrap(), IpArg::Dhcp { device: None });
        assert_eq!(IpArg::parse(":::::eth1:dhcp").unwrap(), IpArg::Dhcp { device: Some("eth1".into()) });
        assert_eq!(IpArg::parse("off").unwrap(), IpArg::Off);
        let IpArg::Static(s) = IpArg::parse("192.168.1.9:::255.255.0.0").unwrap() else { panic!() };
        assert_eq!((s.prefix_len, s.gateway, s.device), (16, None, None));
    }

    #[test]
    fn bad_values_say_which_field() {
        let e = IpArg::parse("10.0.0.5::10.0.0.300").unwrap_err();
        assert!(e.to_string().contains("gateway \"10.0.0.300\""), "{e}");
        let e = IpArg::parse("10.0.0.5:::255.0.255.0").unwrap_err();
        assert!(e.to_string().contains("not contiguous"), "{e}");
        let e = IpArg::parse("10.0.0.5::::::dhcp").unwrap_err();
        assert!(e.to_string().contains("contradictory"), "{e}");
    }
}
