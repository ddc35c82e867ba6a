//! Host ports for QEMU's user-mode port forwards.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Mutex;

use crate::{HarnessError, Result};

/// Ports this process has handed out: the kernel may offer a port again once
/// its probe socket is closed, and two VMs of one test binary must not share.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A TCP port on 127.0.0.1 that nothing listens on right now. QEMU binds it a
/// moment later; another program could take it in between, in which case
/// QEMU exits at once with "Could not set up host forwarding rule".
pub fn free_port() -> Result<u16> {
    let mut taken = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    let taken = taken.get_or_insert_with(HashSet::new);
    for _ in 0..100 {
        let probe = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(HarnessError::io("cannot bind a port on", "127.0.0.1"))?;
        let port = probe
            .local_addr()
            .map_err(HarnessError::io("cannot read the address of", "127.0.0.1"))?
            .port();
        if taken.insert(port) {
            return Ok(port);
        }
    }
    Err(HarnessError::io("no free port on", "127.0.0.1")(
        std::io::Error::other("100 probes gave ports already handed out"),
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn never_hands_out_a_port_twice() {
        let a = super::free_port().unwrap();
        let b = super::free_port().unwrap();
        assert_ne!(a, b);
    }
}
