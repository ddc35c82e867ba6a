//! `/proc/self/mountinfo`, parsed ourselves (see proc(5)): which mounts exist,
//! in mount order, and which of them hold storage that shutdown must unmount.

use std::path::{Path, PathBuf};

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub id: u32,
    pub parent_id: u32,
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
    pub options: String,
}

/// Parse the whole file. Lines that do not parse are skipped: a kernel that
/// adds fields must not stop shutdown from unmounting the rest.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

/// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`
fn parse_line(line: &str) -> Option<MountEntry> {
    let (before, after) = line.split_once(" - ")?;
    let mut left = before.split(' ');
    let id = left.next()?.parse().ok()?;
    let parent_id = left.next()?.parse().ok()?;
    let _major_minor = left.next()?;
    let _root = left.next()?;
    let mount_point = PathBuf::from(unescape(left.next()?));
    let options = left.next()?.to_string();
    let mut right = after.split(' ');
    let fs_type = right.next()?.to_string();
    let source = unescape(right.next().unwrap_or(""));
    Some(MountEntry {
        id,
        parent_id,
        mount_point,
        fs_type,
        source,
        options,
    })
}

/// The kernel escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape(field: &str) -> String {
    let is_octal = |d: &u8| (b'0'..=b'7').contains(d);
    let mut out = Vec::with_capacity(field.len());
    let mut rest = field.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        match (first, tail) {
            (b'\\', [a, b, c, after @ ..]) if [a, b, c].into_iter().all(is_octal) => {
                let value =
                    (u32::from(a - b'0') << 6) | (u32::from(b - b'0') << 3) | u32::from(c - b'0');
                out.push(u8::try_from(value).unwrap_or(b'?'));
                rest = after;
            }
            _ => {
                out.push(first);
                rest = tail;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Filesystems with no backing storage: nothing to flush, nothing lost if the
/// power goes, so shutdown leaves them mounted.
const VIRTUAL_FS_TYPES: &[&str] = &[
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "tmpfs",
    "ramfs",
    "cgroup",
    "cgroup2",
    "securityfs",
    "debugfs",
    "tracefs",
    "pstore",
    "bpf",
    "configfs",
    "mqueue",
    "hugetlbfs",
    "fusectl",
    "efivarfs",
    "binfmt_misc",
    "autofs",
    "nsfs",
    "rpc_pipefs",
    "selinuxfs",
];

pub fn is_virtual(fs_type: &str) -> bool {
    VIRTUAL_FS_TYPES.contains(&fs_type)
}

fn is_strictly_below(path: &Path, ancestor: &Path) -> bool {
    path != ancestor && path.starts_with(ancestor)
}

/// True if `path` is a mount point in `entries`.
pub fn is_mount_point(entries: &[MountEntry], path: &Path) -> bool {
    entries.iter().any(|e| e.mount_point == path)
}

/// The mounts shutdown must unmount, in the order to unmount them: every
/// mount backed by storage (not virtual, not the read-only root), plus every
/// mount of any kind nested below one of those (a tmpfs that containerd put
/// under /var would otherwise keep /var busy). Reverse mount order, so a
/// mount always goes before the one it sits on.
pub fn unmount_order(entries: &[MountEntry]) -> Vec<MountEntry> {
    let root = Path::new("/");
    let storage: Vec<&Path> = entries
        .iter()
        .filter(|e| e.mount_point != root && !is_virtual(&e.fs_type))
        .map(|e| e.mount_point.as_path())
        .collect();
    let mut order: Vec<MountEntry> = entries
        .iter()
        .filter(|e| storage.iter().any(|s| e.mount_point.starts_with(s)))
        .cloned()
        .collect();
    order.reverse();
    // Mount order already puts a child after its parent, except when a mount
    // was moved; make "children first" hold regardless, keeping reverse mount
    // order otherwise.
    let mut sorted: Vec<MountEntry> = Vec::with_capacity(order.len());
    for entry in order {
        let first_ancestor = sorted
            .iter()
            .position(|placed| is_strictly_below(&entry.mount_point, &placed.mount_point));
        sorted.insert(first_ancestor.unwrap_or(sorted.len()), entry);
    }
    sorted
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
21 1 0:5 / /dev rw,nosuid,relatime shared:2 - devtmpfs devtmpfs rw,size=240k,mode=755
1 0 254:2 / / ro,relatime shared:1 - squashfs /dev/vda2 ro,errors=continue
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:3 - proc proc rw
23 1 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:4 - sysfs sysfs rw
24 1 0:23 / /run rw,nosuid,nodev shared:5 - tmpfs tmpfs rw,mode=755
25 21 0:24 / /dev/pts rw,relatime - devpts devpts rw,mode=620,ptmxmode=666
26 23 0:25 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate
27 1 0:26 / /etc rw,nosuid,nodev,noexec - tmpfs tmpfs rw,mode=755
28 24 254:4 / /run/caisson/state rw,nosuid,nodev,noexec,relatime - ext4 /dev/vda4 rw
29 1 254:5 / /var rw,nosuid,nodev,relatime - ext4 /dev/vda5 rw
30 29 0:27 / /var/lib/kubelet/pods/x\\040y/secret rw - tmpfs tmpfs rw
31 29 0:28 / /var/lib/containerd/rootfs rw - overlay overlay rw,lowerdir=/a
";

    fn points(entries: &[MountEntry]) -> Vec<String> {
        entries
            .iter()
            .map(|e| e.mount_point.display().to_string())
            .collect()
    }

    #[test]
    fn parses_fields_and_unescapes_paths() {
        let entries = parse(SAMPLE);
        assert_eq!(entries.len(), 12);
        let var = &entries[9];
        assert_eq!((var.id, var.parent_id), (29, 1));
        assert_eq!(var.mount_point, PathBuf::from("/var"));
        assert_eq!(var.fs_type, "ext4");
        assert_eq!(var.source, "/dev/vda5");
        assert_eq!(var.options, "rw,nosuid,nodev,relatime");
        assert_eq!(
            entries[10].mount_point,
            PathBuf::from("/var/lib/kubelet/pods/x y/secret")
        );
    }

    #[test]
    fn optional_fields_and_garbage_lines_are_tolerated() {
        let entries = parse("40 1 0:1 / /a rw shared:1 master:2 - ext4 /dev/x rw\nnonsense\n\n41 1 0:2 / /b rw - tmpfs none rw");
        assert_eq!(points(&entries), ["/a", "/b"]);
    }

    #[test]
    fn shutdown_unmounts_storage_and_whatever_sits_on_it_children_first() {
        let order = unmount_order(&parse(SAMPLE));
        assert_eq!(
            points(&order),
            [
                "/var/lib/containerd/rootfs",
                "/var/lib/kubelet/pods/x y/secret",
                "/var",
                "/run/caisson/state"
            ]
        );
    }

    #[test]
    fn children_go_first_even_when_a_parent_was_mounted_later() {
        // /var/lib was mounted (moved) before /var appears in the table.
        let text = "\
1 0 1:1 / / ro - squashfs /dev/vda2 ro
50 1 1:5 / /var/lib rw - ext4 /dev/vdb1 rw
51 1 1:6 / /var rw - ext4 /dev/vda5 rw
52 1 1:7 / /srv rw - xfs /dev/vdc rw
";
        assert_eq!(
            points(&unmount_order(&parse(text))),
            ["/srv", "/var/lib", "/var"]
        );
    }

    #[test]
    fn virtual_filesystems_and_the_root_stay_mounted() {
        let order = unmount_order(&parse(SAMPLE));
        assert!(order.iter().all(|e| e.mount_point != Path::new("/")));
        assert!(order
            .iter()
            .all(|e| !["/dev", "/proc", "/sys/fs/cgroup", "/etc", "/run"]
                .contains(&e.mount_point.to_str().unwrap_or(""))));
        assert!(is_mount_point(&parse(SAMPLE), Path::new("/dev/pts")));
        assert!(!is_mount_point(&parse(SAMPLE), Path::new("/tmp")));
    }
}
