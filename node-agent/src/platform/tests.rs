//! The search's order and gates, and what is accepted as a config.

use std::collections::BTreeMap;

use super::dmi::Dmi;
use super::netdata::NetworkData;
use super::*;

const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";
const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----";

fn config(extra: &str) -> String {
    format!("version = 1\n{extra}\n[api]\nca_cert = \"\"\"{CA}\"\"\"\nca_key = \"\"\"{KEY}\"\"\"\n")
}

fn qemu() -> Dmi {
    Dmi {
        sys_vendor: "QEMU".into(),
        product_name: "Standard PC (Q35 + ICH9, 2009)".into(),
        ..Dmi::default()
    }
}

#[test]
fn the_plan_asks_in_the_documented_order_and_gates_the_slow_sources() {
    let all = plan(
        true,
        &Dmi {
            product_name: "OpenStack Nova".into(),
            sys_vendor: "VMware, Inc.".into(),
            ..Dmi::default()
        },
    );
    assert_eq!(
        all.ask,
        Kind::ORDER.to_vec(),
        "every gate open: the whole order"
    );
    assert!(all.skip.is_empty());

    let p = plan(false, &qemu());
    assert_eq!(p.ask, [Kind::ConfigDrive, Kind::NoCloud, Kind::FwCfg]);
    let skipped: BTreeMap<Kind, &str> = p.skip.iter().map(|(k, w)| (*k, w.as_str())).collect();
    assert_eq!(skipped.len(), 3);
    assert!(skipped[&Kind::CmdlineUrl].contains("no caisson.config"));
    assert!(skipped[&Kind::Metadata].contains("neither OpenStack nor EC2 (sys_vendor \"QEMU\""));
    assert!(skipped[&Kind::Guestinfo].contains("does not say VMware"));

    let ec2 = plan(
        false,
        &Dmi {
            sys_vendor: "Amazon EC2".into(),
            ..Dmi::default()
        },
    );
    assert_eq!(
        ec2.ask,
        [
            Kind::ConfigDrive,
            Kind::Metadata,
            Kind::NoCloud,
            Kind::FwCfg
        ]
    );
}

/// Answers from a table and records what was asked.
struct Fake {
    answers: BTreeMap<Kind, Probe>,
    asked: Vec<Kind>,
}

impl Prober for Fake {
    async fn probe(&mut self, kind: Kind) -> Probe {
        self.asked.push(kind);
        self.answers
            .remove(&kind)
            .unwrap_or_else(|| Probe::Absent("nothing".into()))
    }
}

fn candidate(kind: Kind, data: &str) -> Probe {
    Probe::Found(Box::new(Candidate::new(
        PlatformSource::new(kind, "here"),
        data.as_bytes().to_vec(),
    )))
}

async fn run(answers: Vec<(Kind, Probe)>, plan: &Plan) -> (Outcome, Vec<Kind>, Vec<String>) {
    let mut fake = Fake {
        answers: answers.into_iter().collect(),
        asked: Vec::new(),
    };
    let mut lines = Vec::new();
    let outcome = search(&mut fake, plan, &mut |l| lines.push(l)).await;
    (outcome, fake.asked, lines)
}

#[tokio::test]
async fn first_match_wins_and_absent_sources_pass_on() {
    let p = plan(true, &qemu());
    let (outcome, asked, lines) = run(
        vec![
            (Kind::NoCloud, candidate(Kind::NoCloud, "a")),
            (Kind::FwCfg, candidate(Kind::FwCfg, "b")),
        ],
        &p,
    )
    .await;
    let Outcome::Found(c) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(c.source.kind, Kind::NoCloud);
    assert_eq!(
        asked,
        [Kind::CmdlineUrl, Kind::ConfigDrive, Kind::NoCloud],
        "fw_cfg never asked"
    );
    assert_eq!(
        lines,
        [
            "cmdline-url: none (nothing)",
            "config-drive: none (nothing)"
        ]
    );
}

#[tokio::test]
async fn a_source_that_is_there_but_fails_ends_the_search() {
    let p = plan(true, &qemu());
    let failed = Probe::Failed {
        source: PlatformSource::new(Kind::CmdlineUrl, "http://10.0.2.2/c"),
        error: "no answer within 10s".into(),
    };
    let (outcome, asked, _) = run(
        vec![
            (Kind::CmdlineUrl, failed),
            (Kind::FwCfg, candidate(Kind::FwCfg, "b")),
        ],
        &p,
    )
    .await;
    assert!(
        matches!(outcome, Outcome::Failed { ref source, .. } if source.kind == Kind::CmdlineUrl),
        "{outcome:?}"
    );
    assert_eq!(asked, [Kind::CmdlineUrl]);

    let (outcome, asked, _) = run(Vec::new(), &p).await;
    assert_eq!(outcome, Outcome::None);
    assert_eq!(asked, p.ask);
}

#[test]
fn sources_name_themselves_for_the_console_and_health() {
    let s = PlatformSource::new(Kind::ConfigDrive, "/dev/sr0: openstack/latest/user_data");
    assert_eq!(
        s.to_string(),
        "the OpenStack config drive (/dev/sr0: openstack/latest/user_data)"
    );
    let shorts: Vec<&str> = Kind::ORDER.iter().map(|k| k.short()).collect();
    assert_eq!(
        shorts,
        [
            "cmdline-url",
            "config-drive",
            "metadata",
            "guestinfo",
            "nocloud",
            "fw_cfg"
        ]
    );
    let source = crate::config::Source::Platform(s);
    assert_eq!(source.short(), "config-drive");
    assert_eq!(
        PlatformSource::new(Kind::FwCfg, "").to_string(),
        "QEMU fw_cfg"
    );
}

fn cand(data: &str) -> Candidate {
    Candidate::new(
        PlatformSource::new(Kind::NoCloud, "/dev/sr0: user-data"),
        data.as_bytes().to_vec(),
    )
}

fn refused(c: &Candidate) -> String {
    match accept(c, &Limits::default()) {
        Err(Refused::Invalid(e)) => e.to_string(),
        other => panic!("accepted: {other:?}"),
    }
}

#[test]
fn cloud_config_user_data_is_refused_naming_the_file() {
    let e = refused(&cand("#cloud-config\nhostname: x\n"));
    assert!(
        e.starts_with("/dev/sr0: user-data: this is a cloud-init #cloud-config document"),
        "{e}"
    );
    assert!(e.contains("not a Caisson machine config"), "{e}");
}

#[test]
fn an_invalid_config_is_refused_with_line_and_key_path() {
    let e = refused(&cand(&config("[machine]\nhostname = \"not_valid!\"")));
    assert!(
        e.starts_with("/dev/sr0: user-data:3:12: machine.hostname: "),
        "{e}"
    );
    let e = refused(&cand("not toml at all"));
    assert!(e.starts_with("/dev/sr0: user-data:1:"), "{e}");
    let e = refused(&cand(&config("[machine]\nhostnam = \"x\"")));
    assert!(e.contains("machine") && e.contains("hostnam"), "{e}");
}

#[test]
fn empty_user_data_is_no_config() {
    assert_eq!(
        accept(&cand("  \n"), &Limits::default()).unwrap_err(),
        Refused::Empty
    );
}

#[test]
fn the_platforms_hostname_and_network_fill_the_config() {
    let mut c = cand(&config(""));
    c.hostname = Some("seed-host".into());
    c.hostname_from = "meta-data".into();
    c.network = Some(Ok(NetworkData {
        interfaces: vec![caisson_config::Interface {
            mac: Some("52:54:00:12:34:56".into()),
            addresses: vec!["10.0.2.20/24".parse().unwrap()],
            gateways: vec!["10.0.2.2".parse().unwrap()],
            ..Default::default()
        }],
        nameservers: vec!["10.0.2.3".parse().unwrap()],
        ..Default::default()
    }));
    c.network_from = "network-config".into();
    let a = accept(&c, &Limits::default()).unwrap();
    assert_eq!(a.config.machine.hostname.as_deref(), Some("seed-host"));
    assert_eq!(
        a.config.network.interfaces[0].addresses[0].to_string(),
        "10.0.2.20/24"
    );
    let notes = a.notes.join("\n");
    assert!(
        notes.contains("machine.hostname = \"seed-host\" (from meta-data)"),
        "{notes}"
    );
    assert!(
        notes.contains("10.0.2.20/24, gateway 10.0.2.2 (from network-config)"),
        "{notes}"
    );
    // The saved text is the user's, with the additions after it.
    assert!(a.text.starts_with("version = 1\n"), "{}", a.text);
}

#[test]
fn network_data_that_breaks_the_config_refuses_it_whole() {
    let mut c = cand(&config(""));
    c.network = Some(Ok(NetworkData {
        interfaces: vec![caisson_config::Interface {
            name: Some("eth0".into()),
            mtu: Some(10),
            ..Default::default()
        }],
        ..Default::default()
    }));
    c.network_from = "network-config".into();
    let e = refused(&c);
    assert!(
        e.contains("with the platform's settings") && e.contains("network.interfaces[0].mtu"),
        "{e}"
    );
}

#[test]
fn unreadable_network_data_is_said_and_the_config_is_used_as_it_is() {
    let mut c = cand(&config("[machine]\nhostname = \"n1\""));
    c.network = Some(Err("network-config is not YAML: …".into()));
    c.network_from = "network-config".into();
    let a = accept(&c, &Limits::default()).unwrap();
    assert_eq!(a.text, config("[machine]\nhostname = \"n1\""));
    assert!(
        a.notes[0].starts_with("network: network-config: network-config is not YAML"),
        "{:?}",
        a.notes
    );
}

#[test]
fn read_limited_reads_small_files_and_refuses_big_ones() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    assert_eq!(read_limited(&f, 10).unwrap(), None);
    std::fs::write(&f, "0123456789").unwrap();
    assert_eq!(read_limited(&f, 10).unwrap().unwrap(), b"0123456789");
    assert!(read_limited(&f, 9)
        .unwrap_err()
        .ends_with("is larger than 9 bytes"));
}
