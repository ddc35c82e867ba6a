//! The power button, read the way systemd-logind reads it: every evdev
//! device that reports EV_KEY/KEY_POWER is opened and its events read. This
//! is what `virsh shutdown`, `nova stop` and QMP `system_powerdown` press
//! (the ACPI power button, once `button` and `evdev` are loaded).
//!
//! Devices can appear at any time (coldplug, hotplug), so /dev/input is
//! rescanned periodically; a device that goes away ends its reader.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::power::{Request, ShutdownAction, ShutdownReason};

pub const DEV_INPUT: &str = "/dev/input";
const RESCAN_INTERVAL: Duration = Duration::from_secs(5);

pub const EV_KEY: u16 = 0x01;
pub const KEY_POWER: u16 = 116;
const KEY_MAX: usize = 0x2ff;
/// `struct input_event` on 64-bit: struct timeval (16), type, code, value.
pub const INPUT_EVENT_SIZE: usize = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputEvent {
    pub kind: u16,
    pub code: u16,
    pub value: i32,
}

impl InputEvent {
    pub fn parse(raw: &[u8; INPUT_EVENT_SIZE]) -> InputEvent {
        let [.., t0, t1, c0, c1, v0, v1, v2, v3] = *raw;
        InputEvent {
            kind: u16::from_ne_bytes([t0, t1]),
            code: u16::from_ne_bytes([c0, c1]),
            value: i32::from_ne_bytes([v0, v1, v2, v3]),
        }
    }

    /// Key down (1); releases (0) and autorepeat (2) are ignored.
    pub fn is_power_press(&self) -> bool {
        self.kind == EV_KEY && self.code == KEY_POWER && self.value == 1
    }
}

/// All complete events in `buf`, in order (a trailing partial one is dropped;
/// evdev never returns one).
pub fn parse_events(buf: &[u8]) -> impl Iterator<Item = InputEvent> + '_ {
    buf.chunks_exact(INPUT_EVENT_SIZE)
        .filter_map(|chunk| <&[u8; INPUT_EVENT_SIZE]>::try_from(chunk).ok())
        .map(InputEvent::parse)
}

/// Bit `bit` of an EVIOCGBIT bitmap. The kernel fills arrays of unsigned
/// long; on little-endian machines that is the same as bytes, LSB first.
pub fn test_bit(bitmap: &[u8], bit: usize) -> bool {
    bitmap
        .get(bit / 8)
        .is_some_and(|byte| byte & (1 << (bit % 8)) != 0)
}

/// Does a device with these capability bitmaps have a power key?
pub fn has_power_key(event_types: &[u8], keys: &[u8]) -> bool {
    test_bit(event_types, usize::from(EV_KEY)) && test_bit(keys, usize::from(KEY_POWER))
}

// EVIOCGBIT(ev, len) = _IOC(_IOC_READ, 'E', 0x20 + ev, len).
nix::ioctl_read_buf!(eviocgbit_types, b'E', 0x20, u8);
nix::ioctl_read_buf!(eviocgbit_keys, b'E', 0x20 + EV_KEY as u8, u8);

fn is_power_button(device: &File) -> io::Result<bool> {
    let mut types = [0u8; 4];
    let mut keys = [0u8; KEY_MAX / 8 + 1];
    let fd = device.as_raw_fd();
    // SAFETY: both ioctls write at most the buffer length encoded in the
    // request, which the macro takes from the slice it is given.
    unsafe {
        eviocgbit_types(fd, &mut types).map_err(io::Error::from)?;
        eviocgbit_keys(fd, &mut keys).map_err(io::Error::from)?;
    }
    Ok(has_power_key(&types, &keys))
}

fn event_devices(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("event"))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// Device nodes already looked at, by path and inode: a node that is
/// removed and created again is a new device and is looked at again.
type Seen = Arc<Mutex<HashSet<(PathBuf, u64)>>>;

/// Start watching for power buttons: the devices present now are opened
/// before this returns, so a press from here on is never lost (evdev
/// queues events from the moment a device is opened); a task then rescans
/// every [`RESCAN_INTERVAL`] for new ones. Each press is sent to
/// `requests` as a power-off request. Returns how many buttons are watched.
pub fn arm_power_buttons(requests: mpsc::Sender<Request>) -> usize {
    let seen: Seen = Arc::default();
    let armed = scan(&seen, &requests);
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(RESCAN_INTERVAL);
        // The first tick is immediate, and that scan was just done.
        interval.tick().await;
        loop {
            interval.tick().await;
            scan(&seen, &requests);
        }
    });
    armed
}

/// Opens the power buttons not seen before and spawns a reader for each.
fn scan(seen: &Seen, requests: &mpsc::Sender<Request>) -> usize {
    let mut armed = 0;
    for path in event_devices(Path::new(DEV_INPUT)) {
        let Ok(inode) = std::fs::metadata(&path).map(|m| m.ino()) else {
            continue;
        };
        let key = (path, inode);
        if !seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone())
        {
            continue;
        }
        let path = &key.0;
        match open_power_button(path) {
            Ok(Some(device)) => {
                info!("input: watching {} for the power button", path.display());
                armed += 1;
                let (requests, seen) = (requests.clone(), seen.clone());
                tokio::spawn(async move {
                    if let Err(e) = read_presses(device, &requests).await {
                        warn!("input: {}: {e}; no longer watched", key.0.display());
                    }
                    seen.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
                });
            }
            Ok(None) => {}
            Err(e) => debug!("input: {}: {e}", path.display()),
        }
    }
    armed
}

fn open_power_button(path: &Path) -> io::Result<Option<AsyncFd<File>>> {
    let device = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open(path)?;
    if !is_power_button(&device)? {
        return Ok(None);
    }
    // SAFETY: the AsyncFd owns the File, so the descriptor stays open and
    // the same for the AsyncFd's whole lifetime, as `register` requires.
    let registered = unsafe { AsyncFd::register_with_interest(device, Interest::READABLE) };
    registered.map(Some).map_err(|e| e.into_parts().1)
}

async fn read_presses(device: AsyncFd<File>, requests: &mpsc::Sender<Request>) -> io::Result<()> {
    let mut buf = [0u8; INPUT_EVENT_SIZE * 32];
    loop {
        let mut guard = device.readable().await?;
        match guard.try_io(|fd| fd.get_ref().read(&mut buf)) {
            Ok(Ok(0)) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "device closed",
                ))
            }
            Ok(Ok(n)) => {
                let pressed =
                    parse_events(buf.get(..n).unwrap_or_default()).any(|e| e.is_power_press());
                if pressed {
                    let request = Request {
                        action: ShutdownAction::PowerOff,
                        reason: ShutdownReason::PowerButton,
                    };
                    if requests.send(request).await.is_err() {
                        return Ok(());
                    }
                }
            }
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_event(kind: u16, code: u16, value: i32) -> [u8; INPUT_EVENT_SIZE] {
        let mut raw = [0u8; INPUT_EVENT_SIZE];
        raw[..8].copy_from_slice(&1_700_000_000i64.to_ne_bytes());
        raw[8..16].copy_from_slice(&123_456i64.to_ne_bytes());
        raw[16..18].copy_from_slice(&kind.to_ne_bytes());
        raw[18..20].copy_from_slice(&code.to_ne_bytes());
        raw[20..24].copy_from_slice(&value.to_ne_bytes());
        raw
    }

    #[test]
    fn input_events_are_parsed_from_the_kernel_layout() {
        let e = InputEvent::parse(&raw_event(EV_KEY, KEY_POWER, 1));
        assert_eq!(
            e,
            InputEvent {
                kind: EV_KEY,
                code: KEY_POWER,
                value: 1
            }
        );
        assert!(e.is_power_press());
    }

    #[test]
    fn only_a_power_key_press_counts() {
        assert!(!InputEvent::parse(&raw_event(EV_KEY, KEY_POWER, 0)).is_power_press()); // release
        assert!(!InputEvent::parse(&raw_event(EV_KEY, KEY_POWER, 2)).is_power_press()); // repeat
        assert!(!InputEvent::parse(&raw_event(EV_KEY, 30, 1)).is_power_press()); // KEY_A
        assert!(!InputEvent::parse(&raw_event(0, 0, 0)).is_power_press()); // EV_SYN
    }

    #[test]
    fn a_read_buffer_holds_several_events() {
        let mut buf = Vec::new();
        buf.extend_from_slice(&raw_event(EV_KEY, KEY_POWER, 1));
        buf.extend_from_slice(&raw_event(0, 0, 0));
        buf.extend_from_slice(&[0u8; 10]); // partial trailer ignored
        let events: Vec<_> = parse_events(&buf).collect();
        assert_eq!(events.len(), 2);
        assert!(events[0].is_power_press());
        assert_eq!(events[1].kind, 0);
    }

    #[test]
    fn power_key_capability_needs_ev_key_and_key_power_bits() {
        // EV_SYN | EV_KEY, as the ACPI power button reports.
        let types = [0b0000_0011u8, 0, 0, 0];
        let mut keys = [0u8; KEY_MAX / 8 + 1];
        assert!(!has_power_key(&types, &keys));
        keys[usize::from(KEY_POWER) / 8] |= 1 << (KEY_POWER % 8); // byte 14, bit 4
        assert_eq!(keys[14], 0b0001_0000);
        assert!(has_power_key(&types, &keys));
        assert!(!has_power_key(&[0b0000_0001], &keys));
        assert!(!test_bit(&[], 3));
    }
}
