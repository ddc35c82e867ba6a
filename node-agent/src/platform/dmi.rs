//! SMBIOS facts from sysfs (`/sys/class/dmi/id`), and the gates they open:
//! the network sources that would make every other machine wait (the
//! metadata service) and the hypervisor port that only VMware answers are
//! asked only where the firmware says so, as cloud-init's `ds-identify`
//! decides.

use std::path::Path;

/// Where the kernel shows the SMBIOS strings.
pub const DMI_DIR: &str = "/sys/class/dmi/id";
/// Xen-based EC2 instances name themselves here (`ec2…`).
pub const HYPERVISOR_UUID: &str = "/sys/hypervisor/uuid";

/// OpenStack Nova's SMBIOS product names (`ds-identify`: `dscheck_OpenStack`).
const OPENSTACK_PRODUCTS: [&str; 2] = ["OpenStack Nova", "OpenStack Compute"];
/// Clouds built on OpenStack that say so in the chassis asset tag instead.
const OPENSTACK_ASSET_TAGS: [&str; 5] = [
    "OpenStack Nova",
    "OpenStack Compute",
    "OpenTelekomCloud",
    "SAP CCloud VM",
    "HUAWEICLOUD",
];

/// The SMBIOS strings the gates and the URL variables use; a file the
/// kernel does not have reads as "".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dmi {
    pub sys_vendor: String,
    pub product_name: String,
    /// Lower-case, as the kernel prints it.
    pub product_uuid: String,
    pub product_serial: String,
    pub chassis_asset_tag: String,
    pub hypervisor_uuid: String,
}

/// Which metadata service the machine's firmware points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataFlavor {
    /// `/openstack/latest/user_data`, then EC2's path (Nova serves both).
    OpenStack,
    /// `/latest/user-data` (IMDSv2 token first, v1 if refused).
    Ec2,
}

impl Dmi {
    pub fn read() -> Dmi {
        Dmi::read_from(Path::new(DMI_DIR), Path::new(HYPERVISOR_UUID))
    }

    pub fn read_from(dir: &Path, hypervisor_uuid: &Path) -> Dmi {
        let read = |path: &Path| {
            std::fs::read_to_string(path)
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        Dmi {
            sys_vendor: read(&dir.join("sys_vendor")),
            product_name: read(&dir.join("product_name")),
            product_uuid: read(&dir.join("product_uuid")).to_ascii_lowercase(),
            product_serial: read(&dir.join("product_serial")),
            chassis_asset_tag: read(&dir.join("chassis_asset_tag")),
            hypervisor_uuid: read(hypervisor_uuid),
        }
    }

    /// OpenStack (Nova or a cloud that tags its chassis), else EC2, else none.
    pub fn metadata_flavor(&self) -> Option<MetadataFlavor> {
        let is = |value: &str, names: &[&str]| names.iter().any(|n| value.eq_ignore_ascii_case(n));
        if is(&self.product_name, &OPENSTACK_PRODUCTS)
            || is(&self.chassis_asset_tag, &OPENSTACK_ASSET_TAGS)
        {
            return Some(MetadataFlavor::OpenStack);
        }
        let ec2 = |s: &str| s.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("ec2"));
        // A random UUID starts with "ec2" once in 4096: Xen-era instances
        // say it in the serial too, Nitro ones in the vendor.
        if self.sys_vendor == "Amazon EC2"
            || (ec2(&self.product_uuid) && ec2(&self.product_serial))
            || ec2(&self.hypervisor_uuid)
        {
            return Some(MetadataFlavor::Ec2);
        }
        None
    }

    /// vSphere, Workstation, Fusion: `VMware, Inc.` / `VMware7,1`.
    pub fn is_vmware(&self) -> bool {
        self.sys_vendor.starts_with("VMware") || self.product_name.starts_with("VMware")
    }

    /// For console lines: `sys_vendor "QEMU", product_name "Standard PC (Q35 + ICH9, 2009)"`.
    pub fn describe(&self) -> String {
        let mut parts = vec![
            format!("sys_vendor {:?}", self.sys_vendor),
            format!("product_name {:?}", self.product_name),
        ];
        if !self.chassis_asset_tag.is_empty() {
            parts.push(format!("chassis_asset_tag {:?}", self.chassis_asset_tag));
        }
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dmi(vendor: &str, product: &str, tag: &str) -> Dmi {
        Dmi {
            sys_vendor: vendor.into(),
            product_name: product.into(),
            chassis_asset_tag: tag.into(),
            ..Dmi::default()
        }
    }

    #[test]
    fn openstack_is_recognised_by_product_name_or_asset_tag() {
        let nova = dmi("OpenStack Foundation", "OpenStack Nova", "");
        assert_eq!(nova.metadata_flavor(), Some(MetadataFlavor::OpenStack));
        let compute = dmi("Red Hat", "OpenStack Compute", "");
        assert_eq!(compute.metadata_flavor(), Some(MetadataFlavor::OpenStack));
        let otc = dmi("QEMU", "Standard PC", "OpenTelekomCloud");
        assert_eq!(otc.metadata_flavor(), Some(MetadataFlavor::OpenStack));
        assert!(!nova.is_vmware());
    }

    #[test]
    fn ec2_needs_the_vendor_or_both_uuid_and_serial_or_xens_uuid() {
        assert_eq!(
            dmi("Amazon EC2", "m5.large", "").metadata_flavor(),
            Some(MetadataFlavor::Ec2)
        );
        let mut xen = Dmi {
            product_uuid: "ec2e1916-9099-7caf-fd21-012345abcdef".into(),
            ..Dmi::default()
        };
        assert_eq!(xen.metadata_flavor(), None, "a UUID alone is chance");
        xen.product_serial = "ec2e1916-9099-7caf-fd21-012345abcdef".into();
        assert_eq!(xen.metadata_flavor(), Some(MetadataFlavor::Ec2));
        let hv = Dmi {
            hypervisor_uuid: "EC2E1916-9099".into(),
            ..Dmi::default()
        };
        assert_eq!(hv.metadata_flavor(), Some(MetadataFlavor::Ec2));
    }

    #[test]
    fn qemu_bare_metal_and_vmware_open_no_metadata_gate() {
        let qemu = dmi("QEMU", "Standard PC (Q35 + ICH9, 2009)", "");
        assert_eq!(qemu.metadata_flavor(), None);
        assert!(!qemu.is_vmware());
        assert_eq!(Dmi::default().metadata_flavor(), None);
        let vmw = dmi("VMware, Inc.", "VMware7,1", "No Asset Tag");
        assert!(vmw.is_vmware());
        assert_eq!(vmw.metadata_flavor(), None);
        assert!(dmi("", "VMware Virtual Platform", "").is_vmware());
        assert!(
            qemu.describe().contains("sys_vendor \"QEMU\""),
            "{}",
            qemu.describe()
        );
    }

    #[test]
    fn reads_sysfs_files_trimmed_and_missing_ones_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("sys_vendor"), "QEMU\n").unwrap();
        std::fs::write(
            dir.path().join("product_uuid"),
            "4C4C4544-0000-1000-8000-000000000001\n",
        )
        .unwrap();
        let d = Dmi::read_from(dir.path(), &dir.path().join("no-hypervisor"));
        assert_eq!(d.sys_vendor, "QEMU");
        assert_eq!(d.product_uuid, "4c4c4544-0000-1000-8000-000000000001");
        assert_eq!(d.product_serial, "");
        assert_eq!(d.hypervisor_uuid, "");
    }
}
