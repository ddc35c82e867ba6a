//! OVA for vSphere: a ustar archive holding, in this order, the OVF
//! descriptor, the manifest (SHA256 of each file) and the stream-optimized
//! VMDK, as the OVF specification wants (descriptor first, manifest next,
//! so an import can check files as they stream past).
//!
//! The OVF (envelope 1.x, as VMware's tools write it) describes one virtual
//! machine: EFI firmware (Secure Boot off: our boot chain is not signed
//! yet), hardware version vmx-14 (ESXi 6.7 and later), a vmxnet3 NIC, the
//! disk on a pvscsi (VirtualSCSI) controller, `disk.EnableUUID` (what the
//! vSphere CSI driver needs), and a ProductSection whose properties are
//! handed to the guest over guestinfo (`ovf:transport="com.vmware.guestInfo"`):
//! `guestinfo.caisson.config`, `guestinfo.caisson.config.encoding` and
//! `guestinfo.hostname`. Archive headers are fixed (mtime from the build's
//! epoch, root:root, 0644), so the archive reproduces.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::formats::FormatError;
use crate::vmdk::VmdkInfo;

/// Virtual hardware the OVF asks for; users change it at deploy time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmHardware {
    pub cpus: u32,
    pub memory_mib: u64,
}

/// What goes into the OVF besides the disk.
#[derive(Debug, Clone)]
pub struct OvaInputs<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub hardware: VmHardware,
    /// mtime of every archive member.
    pub epoch: u64,
}

/// Member names inside the archive.
pub fn member_names(identity: &str) -> [String; 3] {
    [
        format!("{identity}.ovf"),
        format!("{identity}.mf"),
        format!("{identity}.vmdk"),
    ]
}

/// Write the OVA for `vmdk` (a stream-optimized VMDK made by
/// [`crate::vmdk::write`], described by `info`) to `out`.
pub fn write(
    vmdk: &Path,
    info: &VmdkInfo,
    inputs: &OvaInputs<'_>,
    out: &mut File,
    out_path: &Path,
) -> Result<u64, FormatError> {
    let identity = format!("{}-{}", inputs.name, inputs.version);
    let [ovf_name, mf_name, vmdk_name] = member_names(&identity);
    let mut disk = File::open(vmdk).map_err(FormatError::io("cannot open", vmdk))?;
    let disk_size = disk
        .metadata()
        .map_err(FormatError::io("cannot stat", vmdk))?
        .len();
    let ovf = ovf_descriptor(inputs, &vmdk_name, disk_size, info);
    let disk_sha = sha256_of(&mut disk, vmdk)?;
    let manifest = format!(
        "SHA256({ovf_name})= {}\nSHA256({vmdk_name})= {disk_sha}\n",
        hex::encode(Sha256::digest(ovf.as_bytes()))
    );

    let werr = FormatError::io("cannot write", out_path);
    out.seek(SeekFrom::Start(0)).map_err(&werr)?;
    let mut tar = tar::Builder::new(&mut *out);
    let mut append = |name: &str, size: u64, data: &mut dyn Read| -> io::Result<()> {
        let mut header = tar::Header::new_ustar();
        header.set_path(name)?;
        header.set_size(size);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_username("root")?;
        header.set_groupname("root")?;
        header.set_mtime(inputs.epoch);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        tar.append(&header, data)
    };
    append(&ovf_name, ovf.len() as u64, &mut ovf.as_bytes()).map_err(&werr)?;
    append(&mf_name, manifest.len() as u64, &mut manifest.as_bytes()).map_err(&werr)?;
    disk.seek(SeekFrom::Start(0))
        .map_err(FormatError::io("cannot read", vmdk))?;
    append(&vmdk_name, disk_size, &mut disk).map_err(&werr)?;
    let out = tar.into_inner().map_err(&werr)?;
    out.flush().map_err(&werr)?;
    out.stream_position().map_err(&werr)
}

fn sha256_of(file: &mut File, path: &Path) -> Result<String, FormatError> {
    let mut h = Sha256::new();
    io::copy(file, &mut h).map_err(FormatError::io("cannot read", path))?;
    Ok(hex::encode(h.finalize()))
}

/// The OVF descriptor. Element order inside each RASD `Item` is
/// alphabetical, as the CIM schema's sequence requires.
pub fn ovf_descriptor(
    inputs: &OvaInputs<'_>,
    vmdk_name: &str,
    vmdk_size: u64,
    info: &VmdkInfo,
) -> String {
    let identity = format!("{}-{}", inputs.name, inputs.version);
    let hw = inputs.hardware;
    let mut x = Xml::new();
    x.open(
        "Envelope",
        &[
            ("xmlns", "http://schemas.dmtf.org/ovf/envelope/1"),
            ("xmlns:ovf", "http://schemas.dmtf.org/ovf/envelope/1"),
            (
                "xmlns:rasd",
                "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData",
            ),
            (
                "xmlns:vssd",
                "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData",
            ),
            ("xmlns:vmw", "http://www.vmware.com/schema/ovf"),
            ("xmlns:xsi", "http://www.w3.org/2001/XMLSchema-instance"),
        ],
    );
    x.open("References", &[]);
    x.empty(
        "File",
        &[
            ("ovf:href", vmdk_name),
            ("ovf:id", "file1"),
            ("ovf:size", &vmdk_size.to_string()),
        ],
    );
    x.close("References");

    x.open("DiskSection", &[]);
    x.text("Info", &[], "Virtual disk information");
    x.empty(
        "Disk",
        &[
            ("ovf:capacity", &info.capacity.to_string()),
            ("ovf:capacityAllocationUnits", "byte"),
            ("ovf:diskId", "vmdisk1"),
            ("ovf:fileRef", "file1"),
            (
                "ovf:format",
                "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized",
            ),
            ("ovf:populatedSize", &info.populated().to_string()),
        ],
    );
    x.close("DiskSection");

    x.open("NetworkSection", &[]);
    x.text("Info", &[], "The list of logical networks");
    x.open("Network", &[("ovf:name", "VM Network")]);
    x.text("Description", &[], "The network of the node's first NIC");
    x.close("Network");
    x.close("NetworkSection");

    x.open("VirtualSystem", &[("ovf:id", &identity)]);
    x.text("Info", &[], "A Caisson node");
    x.text("Name", &[], &identity);
    x.open(
        "OperatingSystemSection",
        &[("ovf:id", "101"), ("vmw:osType", "other4xLinux64Guest")],
    );
    x.text("Info", &[], "The kind of installed guest operating system");
    x.text("Description", &[], "Other 4.x or later Linux (64-bit)");
    x.close("OperatingSystemSection");

    x.open(
        "VirtualHardwareSection",
        &[("ovf:transport", "com.vmware.guestInfo")],
    );
    x.text("Info", &[], "Virtual hardware requirements");
    x.open("System", &[]);
    x.text("vssd:ElementName", &[], "Virtual Hardware Family");
    x.text("vssd:InstanceID", &[], "0");
    x.text("vssd:VirtualSystemIdentifier", &[], &identity);
    x.text("vssd:VirtualSystemType", &[], "vmx-14");
    x.close("System");
    let cpus = hw.cpus.to_string();
    x.item(&[
        ("AllocationUnits", "hertz * 10^6"),
        ("Description", "Number of virtual CPUs"),
        ("ElementName", &format!("{cpus} virtual CPU(s)")),
        ("InstanceID", "1"),
        ("ResourceType", "3"),
        ("VirtualQuantity", &cpus),
    ]);
    let memory = hw.memory_mib.to_string();
    x.item(&[
        ("AllocationUnits", "byte * 2^20"),
        ("Description", "Memory size"),
        ("ElementName", &format!("{memory} MB of memory")),
        ("InstanceID", "2"),
        ("ResourceType", "4"),
        ("VirtualQuantity", &memory),
    ]);
    x.item(&[
        ("Address", "0"),
        ("Description", "SCSI controller"),
        ("ElementName", "SCSI controller 0"),
        ("InstanceID", "3"),
        ("ResourceSubType", "VirtualSCSI"),
        ("ResourceType", "6"),
    ]);
    x.item(&[
        ("AddressOnParent", "0"),
        ("ElementName", "Hard disk 1"),
        ("HostResource", "ovf:/disk/vmdisk1"),
        ("InstanceID", "4"),
        ("Parent", "3"),
        ("ResourceType", "17"),
    ]);
    x.item(&[
        ("AddressOnParent", "7"),
        ("AutomaticAllocation", "true"),
        ("Connection", "VM Network"),
        ("Description", "VmxNet3 ethernet adapter on \"VM Network\""),
        ("ElementName", "Network adapter 1"),
        ("InstanceID", "5"),
        ("ResourceSubType", "VmxNet3"),
        ("ResourceType", "10"),
    ]);
    let config = |x: &mut Xml, key: &str, value: &str| {
        x.empty(
            "vmw:Config",
            &[
                ("ovf:required", "false"),
                ("vmw:key", key),
                ("vmw:value", value),
            ],
        )
    };
    config(&mut x, "firmware", "efi");
    config(&mut x, "bootOptions.efiSecureBootEnabled", "false");
    x.empty(
        "vmw:ExtraConfig",
        &[
            ("ovf:required", "false"),
            ("vmw:key", "disk.EnableUUID"),
            ("vmw:value", "TRUE"),
        ],
    );
    x.close("VirtualHardwareSection");

    x.open("ProductSection", &[("ovf:required", "false")]);
    x.text(
        "Info",
        &[],
        "Caisson node settings, read by the node from guestinfo at boot",
    );
    x.text("Product", &[], "Caisson");
    x.text("Version", &[], inputs.version);
    x.text("FullVersion", &[], &identity);
    x.text("Category", &[], "Machine config");
    for p in PROPERTIES {
        let mut attrs = vec![("ovf:key", p.key), ("ovf:type", "string")];
        if let Some(q) = p.qualifiers {
            attrs.push(("ovf:qualifiers", q));
        }
        attrs.push(("ovf:userConfigurable", "true"));
        attrs.push(("ovf:value", p.default));
        x.open("Property", &attrs);
        x.text("Label", &[], p.label);
        x.text("Description", &[], p.description);
        x.close("Property");
    }
    x.close("ProductSection");
    x.close("VirtualSystem");
    x.close("Envelope");
    x.finish()
}

/// One user-configurable OVF property.
pub struct Property {
    pub key: &'static str,
    pub label: &'static str,
    pub description: &'static str,
    pub default: &'static str,
    pub qualifiers: Option<&'static str>,
}

/// The properties a deployer fills in; the node reads them from guestinfo.
pub const PROPERTIES: &[Property] = &[
    Property {
        key: "guestinfo.caisson.config",
        label: "Machine config",
        description: "The node's machine config (TOML), encoded as the encoding property says. Empty: the node starts in maintenance mode and waits for `nodectl apply-config --insecure`.",
        default: "",
        qualifiers: None,
    },
    Property {
        key: "guestinfo.caisson.config.encoding",
        label: "Machine config encoding",
        description: "How the machine config is encoded: base64, or gzip+base64 (gzip first, then base64).",
        default: "base64",
        qualifiers: Some("ValueMap{\"base64\",\"gzip+base64\"}"),
    },
    Property {
        key: "guestinfo.hostname",
        label: "Host name",
        description: "The node's host name. Empty: the machine config's, else the node's default.",
        default: "",
        qualifiers: None,
    },
];

/// A small XML writer: two-space indentation, escaped text and attributes.
struct Xml {
    out: String,
    depth: usize,
}

impl Xml {
    fn new() -> Xml {
        Xml {
            out: String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"),
            depth: 0,
        }
    }

    fn start(&mut self, tag: &str, attrs: &[(&str, &str)]) {
        self.out.push_str(&"  ".repeat(self.depth));
        self.out.push('<');
        self.out.push_str(tag);
        for (k, v) in attrs {
            self.out.push(' ');
            self.out.push_str(k);
            self.out.push_str("=\"");
            self.out.push_str(&escape(v));
            self.out.push('"');
        }
    }

    fn open(&mut self, tag: &str, attrs: &[(&str, &str)]) {
        self.start(tag, attrs);
        self.out.push_str(">\n");
        self.depth += 1;
    }

    fn close(&mut self, tag: &str) {
        self.depth = self.depth.saturating_sub(1);
        self.out.push_str(&"  ".repeat(self.depth));
        self.out.push_str("</");
        self.out.push_str(tag);
        self.out.push_str(">\n");
    }

    fn empty(&mut self, tag: &str, attrs: &[(&str, &str)]) {
        self.start(tag, attrs);
        self.out.push_str("/>\n");
    }

    fn text(&mut self, tag: &str, attrs: &[(&str, &str)], text: &str) {
        self.start(tag, attrs);
        self.out.push('>');
        self.out.push_str(&escape(text));
        self.out.push_str("</");
        self.out.push_str(tag);
        self.out.push_str(">\n");
    }

    /// A RASD `Item` from (element, value) pairs, already in schema order.
    fn item(&mut self, fields: &[(&str, &str)]) {
        self.open("Item", &[]);
        for (k, v) in fields {
            self.text(&format!("rasd:{k}"), &[], v);
        }
        self.close("Item");
    }

    fn finish(self) -> String {
        self.out
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> VmdkInfo {
        VmdkInfo {
            capacity: 5 << 30,
            file_size: 70 << 20,
            grains: 1200,
            cid: 0x1234_5678,
        }
    }

    fn inputs() -> OvaInputs<'static> {
        OvaInputs {
            name: "caisson",
            version: "0.1.0",
            hardware: VmHardware {
                cpus: 2,
                memory_mib: 4096,
            },
            epoch: 1_700_000_000,
        }
    }

    #[test]
    fn escapes_what_xml_needs() {
        assert_eq!(escape(r#"a<b>&"c"'"#), "a&lt;b&gt;&amp;&quot;c&quot;&apos;");
    }

    #[test]
    fn descriptor_names_the_disk_its_size_and_the_hardware() {
        let ovf = ovf_descriptor(&inputs(), "caisson-0.1.0.vmdk", 73_400_320, &info());
        assert!(ovf.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Envelope "));
        for needle in [
            "<File ovf:href=\"caisson-0.1.0.vmdk\" ovf:id=\"file1\" ovf:size=\"73400320\"/>",
            "ovf:capacity=\"5368709120\" ovf:capacityAllocationUnits=\"byte\"",
            "<rasd:ResourceSubType>VirtualSCSI</rasd:ResourceSubType>",
            "<rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>",
            "vmw:key=\"firmware\" vmw:value=\"efi\"",
            "<vssd:VirtualSystemType>vmx-14</vssd:VirtualSystemType>",
            "<rasd:VirtualQuantity>4096</rasd:VirtualQuantity>",
            "ovf:transport=\"com.vmware.guestInfo\"",
            "ovf:qualifiers=\"ValueMap{&quot;base64&quot;,&quot;gzip+base64&quot;}\"",
            "`nodectl apply-config --insecure`",
        ] {
            assert!(ovf.contains(needle), "no {needle:?} in\n{ovf}");
        }
        let opens = ovf.matches("<Item>").count();
        assert_eq!(opens, 5);
        assert_eq!(opens, ovf.matches("</Item>").count());
    }
}
