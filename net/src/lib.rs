//! Node networking that does not depend on the kernel: parsing the `ip=`
//! kernel argument, and rendering `/etc/resolv.conf` and `/etc/hosts`.
//! (Netlink configuration and the DHCPv4 client build on these.)

pub mod ipcmdline;
pub mod render;
