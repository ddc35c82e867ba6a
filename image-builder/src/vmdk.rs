//! Stream-optimized VMDK, written from the raw disk image: what vSphere
//! imports from an OVA (VMware "Virtual Disk Format 1.1", section
//! "Stream-Optimized Compressed Sparse Extents").
//!
//! ```text
//! sector 0        sparse extent header: version 3, flags 0x30001 (newline
//!                 test, compressed grains, markers), gdOffset = GD_AT_END
//! sector 1..21    embedded descriptor, createType="streamOptimized"
//! sector 128..    for each run of 512 grains (32 MiB of disk) that holds data:
//!                   each non-zero grain: lba (u64), size (u32), zlib data,
//!                   padded to a sector
//!                   GT marker (4 sectors follow), its grain table
//!                 GD marker, the grain directory (0 = no table: all zeros)
//!                 footer marker, footer (the header with the real gdOffset)
//!                 end-of-stream marker
//! ```
//!
//! Everything is written in one pass in disk order, as VMware's own
//! exporters do, so a reader never has to seek backwards; all-zero grains
//! are left out. The descriptor's CID and content ID are derived from the
//! image identity and the data, the disk UUID from the identity alone, so
//! the same raw image always gives the same bytes. Why not `qemu-img
//! convert -O vmdk -o subformat=streamOptimized`: it preallocates a
//! redundant grain directory and the grain tables at the front of the file
//! (a hosted-sparse layout with compressed grains, flag 0x30003, no footer),
//! picks a random CID, declares an IDE disk and claims VMware Tools; ESXi's
//! OVF import rejected its output in Flatcar's tests. See
//! docs/architecture.md, "Outputs and formats".

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use flate2::write::ZlibEncoder;
use flate2::Compression;
use sha2::{Digest, Sha256};

use crate::formats::{data_ranges, FormatError};

pub const SECTOR: u64 = 512;
/// 64 KiB grains, as VMware writes them.
pub const GRAIN_SECTORS: u64 = 128;
pub const GRAIN_BYTES: u64 = GRAIN_SECTORS * SECTOR;
/// Grain-table entries per table (the only value ESXi's disklib accepts).
pub const GTES_PER_GT: u64 = 512;
const GT_SECTORS: u64 = GTES_PER_GT * 4 / SECTOR;
const DESCRIPTOR_OFFSET: u64 = 1;
const DESCRIPTOR_SECTORS: u64 = 20;
/// Grains start on a grain boundary after header and descriptor.
const OVERHEAD_SECTORS: u64 = GRAIN_SECTORS;

const MAGIC: u32 = 0x564d_444b; // "KDMV"
const VERSION: u32 = 3;
const FLAG_NEWLINE_TEST: u32 = 1 << 0;
const FLAG_COMPRESSED: u32 = 1 << 16;
const FLAG_MARKERS: u32 = 1 << 17;
const COMPRESS_DEFLATE: u16 = 1;
const GD_AT_END: u64 = u64::MAX;

const MARKER_EOS: u32 = 0;
const MARKER_GT: u32 = 1;
const MARKER_GD: u32 = 2;
const MARKER_FOOTER: u32 = 3;

/// What a written VMDK holds, for the OVF and the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmdkInfo {
    /// The virtual disk's size in bytes (the raw image's size).
    pub capacity: u64,
    /// Bytes of the .vmdk file.
    pub file_size: u64,
    /// Grains that hold data (the rest read as zeros).
    pub grains: u64,
    /// The descriptor's content ID.
    pub cid: u32,
}

impl VmdkInfo {
    /// Disk bytes the VMDK carries data for (OVF `populatedSize`).
    pub fn populated(&self) -> u64 {
        self.grains * GRAIN_BYTES
    }
}

/// Write `raw` as a stream-optimized VMDK to `out` (at its start). The
/// descriptor names the extent `file_name`, the name the file will have
/// (also inside an OVA); `identity` is the image's `<name>-<version>`.
pub fn write(
    raw: &Path,
    identity: &str,
    file_name: &str,
    out: &mut File,
    out_path: &Path,
) -> Result<VmdkInfo, FormatError> {
    let input = File::open(raw).map_err(FormatError::io("cannot open the raw image", raw))?;
    let capacity = input
        .metadata()
        .map_err(FormatError::io("cannot stat the raw image", raw))?
        .len();
    if capacity == 0 || capacity % SECTOR != 0 {
        return Err(FormatError::Unaligned {
            path: raw.to_path_buf(),
            size: capacity,
        });
    }
    let mut stream = Stream::new(out, out_path, identity, capacity)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    // One grain table's worth of non-zero grains at a time (at most 32 MiB),
    // compressed on every core, written in disk order.
    let mut batch: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut next_grain = 0;
    for range in data_ranges(&input, raw, capacity)? {
        let first = range.start / GRAIN_BYTES;
        let end = range.end.div_ceil(GRAIN_BYTES);
        for grain in next_grain.max(first)..end {
            next_grain = grain + 1;
            let offset = grain * GRAIN_BYTES;
            let len = GRAIN_BYTES.min(capacity - offset) as usize;
            let mut buf = vec![0u8; GRAIN_BYTES as usize];
            read_at(&input, raw, &mut buf[..len], offset)?;
            if buf.iter().all(|&b| b == 0) {
                continue;
            }
            if batch
                .first()
                .is_some_and(|(g, _)| g / GTES_PER_GT != grain / GTES_PER_GT)
            {
                stream.grains(&std::mem::take(&mut batch), threads)?;
            }
            batch.push((grain, buf));
        }
    }
    stream.grains(&batch, threads)?;
    let cid = stream.finish(file_name)?;
    Ok(VmdkInfo {
        capacity,
        file_size: stream.pos * SECTOR,
        grains: stream.grains,
        cid,
    })
}

fn read_at(input: &File, path: &Path, buf: &mut [u8], offset: u64) -> Result<(), FormatError> {
    input
        .read_exact_at(buf, offset)
        .map_err(FormatError::io("cannot read the raw image", path))
}

/// The output as it is written: position, the open grain table, the
/// directory, and a digest of the data for the content ID.
struct Stream<'a> {
    out: &'a mut File,
    path: PathBuf,
    identity: &'a str,
    capacity_sectors: u64,
    /// Next free sector of the output.
    pos: u64,
    /// Grain directory: sector of each grain table, 0 for none.
    gd: Vec<u32>,
    /// The grain table being filled, and which one it is.
    gt: Vec<u32>,
    gt_index: Option<u64>,
    grains: u64,
    content: Sha256,
}

impl<'a> Stream<'a> {
    fn new(
        out: &'a mut File,
        path: &Path,
        identity: &'a str,
        capacity: u64,
    ) -> Result<Stream<'a>, FormatError> {
        let capacity_sectors = capacity / SECTOR;
        let tables = capacity_sectors.div_ceil(GRAIN_SECTORS * GTES_PER_GT);
        let mut content = Sha256::new();
        content.update(b"caisson-vmdk-content\0");
        content.update(identity.as_bytes());
        content.update(b"\0");
        content.update(capacity.to_le_bytes());
        let mut stream = Stream {
            out,
            path: path.to_path_buf(),
            identity,
            capacity_sectors,
            pos: 0,
            gd: vec![0; tables as usize],
            gt: vec![0; GTES_PER_GT as usize],
            gt_index: None,
            grains: 0,
            content,
        };
        // Header and descriptor are filled in at the end; reserve them.
        stream
            .out
            .seek(SeekFrom::Start(0))
            .map_err(FormatError::io("cannot write", path))?;
        stream.put(&vec![0u8; (OVERHEAD_SECTORS * SECTOR) as usize])?;
        Ok(stream)
    }

    /// Append whole sectors (`bytes` is zero-padded to the next sector).
    fn put(&mut self, bytes: &[u8]) -> Result<(), FormatError> {
        let padded = (bytes.len() as u64).div_ceil(SECTOR) * SECTOR;
        let pad = vec![0u8; (padded - bytes.len() as u64) as usize];
        let path = self.path.clone();
        let err = FormatError::io("cannot write", &path);
        self.out.write_all(bytes).map_err(&err)?;
        self.out.write_all(&pad).map_err(&err)?;
        self.pos += padded / SECTOR;
        Ok(())
    }

    /// Non-zero grains `(index, whole grain)` of one grain table, in
    /// order: compressed on `threads` threads, then written in order.
    fn grains(&mut self, batch: &[(u64, Vec<u8>)], threads: usize) -> Result<(), FormatError> {
        let compressed = compress_all(batch, threads)
            .map_err(FormatError::io("cannot compress a grain for", &self.path))?;
        for ((index, data), compressed) in batch.iter().zip(compressed) {
            self.grain(*index, data, &compressed)?;
        }
        Ok(())
    }

    /// One non-zero grain and its zlib stream, after the grains before it.
    fn grain(&mut self, index: u64, data: &[u8], compressed: &[u8]) -> Result<(), FormatError> {
        let table = index / GTES_PER_GT;
        if self.gt_index != Some(table) {
            self.flush_table()?;
            self.gt_index = Some(table);
        }
        let lba = index * GRAIN_SECTORS;
        self.content.update(lba.to_le_bytes());
        self.content.update(data);
        let size = u32::try_from(compressed.len()).map_err(|_| FormatError::TooLarge {
            path: self.path.clone(),
        })?;
        let at = self.sector_u32()?;
        let mut marker = Vec::with_capacity(12 + compressed.len());
        marker.extend_from_slice(&lba.to_le_bytes());
        marker.extend_from_slice(&size.to_le_bytes());
        marker.extend_from_slice(compressed);
        self.put(&marker)?;
        self.gt[(index % GTES_PER_GT) as usize] = at;
        self.grains += 1;
        Ok(())
    }

    /// Write the open grain table (after its grains), if there is one.
    fn flush_table(&mut self) -> Result<(), FormatError> {
        let Some(table) = self.gt_index.take() else {
            return Ok(());
        };
        self.put(&metadata_marker(GT_SECTORS, MARKER_GT))?;
        let at = self.sector_u32()?;
        let bytes: Vec<u8> = self.gt.iter().flat_map(|e| e.to_le_bytes()).collect();
        self.put(&bytes)?;
        self.gd[table as usize] = at;
        self.gt.fill(0);
        Ok(())
    }

    /// Grain directory, footer, end-of-stream marker; then header and
    /// descriptor at the start. Returns the CID.
    fn finish(&mut self, file_name: &str) -> Result<u32, FormatError> {
        self.flush_table()?;
        let gd_bytes: Vec<u8> = self.gd.iter().flat_map(|e| e.to_le_bytes()).collect();
        let gd_sectors = (gd_bytes.len() as u64).div_ceil(SECTOR);
        self.put(&metadata_marker(gd_sectors, MARKER_GD))?;
        let gd_offset = self.pos;
        self.put(&gd_bytes)?;
        self.put(&metadata_marker(1, MARKER_FOOTER))?;
        let footer = self.header(gd_offset);
        self.put(&footer)?;
        self.put(&metadata_marker(0, MARKER_EOS))?;

        let digest = self.content.clone().finalize();
        let cid = content_id(&digest);
        let descriptor = descriptor(&Descriptor {
            cid,
            long_content_id: hex::encode(&digest[..16]),
            uuid: vmware_uuid(self.identity),
            capacity_sectors: self.capacity_sectors,
            file_name,
        });
        if descriptor.len() as u64 > DESCRIPTOR_SECTORS * SECTOR {
            return Err(FormatError::DescriptorTooLong {
                path: self.path.clone(),
                len: descriptor.len(),
            });
        }
        let header = self.header(GD_AT_END);
        let path = self.path.clone();
        let err = FormatError::io("cannot write", &path);
        self.out.write_all_at(&header, 0).map_err(&err)?;
        self.out
            .write_all_at(descriptor.as_bytes(), DESCRIPTOR_OFFSET * SECTOR)
            .map_err(&err)?;
        self.out.set_len(self.pos * SECTOR).map_err(&err)?;
        self.out.flush().map_err(&err)?;
        Ok(cid)
    }

    /// The sparse extent header; the footer is the same with the real
    /// `gd_offset`.
    fn header(&self, gd_offset: u64) -> Vec<u8> {
        let mut h = Vec::with_capacity(SECTOR as usize);
        h.extend_from_slice(&MAGIC.to_le_bytes());
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.extend_from_slice(&(FLAG_NEWLINE_TEST | FLAG_COMPRESSED | FLAG_MARKERS).to_le_bytes());
        h.extend_from_slice(&self.capacity_sectors.to_le_bytes());
        h.extend_from_slice(&GRAIN_SECTORS.to_le_bytes());
        h.extend_from_slice(&DESCRIPTOR_OFFSET.to_le_bytes());
        h.extend_from_slice(&DESCRIPTOR_SECTORS.to_le_bytes());
        h.extend_from_slice(&(GTES_PER_GT as u32).to_le_bytes());
        h.extend_from_slice(&0u64.to_le_bytes()); // no redundant grain directory
        h.extend_from_slice(&gd_offset.to_le_bytes());
        h.extend_from_slice(&OVERHEAD_SECTORS.to_le_bytes());
        h.push(0); // uncleanShutdown
        h.extend_from_slice(b"\n \r\n"); // a transfer that mangles line ends shows here
        h.extend_from_slice(&COMPRESS_DEFLATE.to_le_bytes());
        h.resize(SECTOR as usize, 0);
        h
    }

    /// The current sector as a grain-table entry (32 bits: 2 TiB of file).
    fn sector_u32(&self) -> Result<u32, FormatError> {
        u32::try_from(self.pos).map_err(|_| FormatError::TooLarge {
            path: self.path.clone(),
        })
    }
}

/// zlib streams of the grains, in order, made by up to `threads` threads.
fn compress_all(batch: &[(u64, Vec<u8>)], threads: usize) -> io::Result<Vec<Vec<u8>>> {
    let chunk = batch.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = batch
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|(_, data)| compress(data))
                        .collect::<io::Result<Vec<_>>>()
                })
            })
            .collect();
        let mut out = Vec::with_capacity(batch.len());
        for worker in workers {
            let part = worker
                .join()
                .map_err(|_| io::Error::other("a compression thread panicked"))??;
            out.extend(part);
        }
        Ok(out)
    })
}

/// Deflate's fastest level: a disk's data is mostly squashfs (zstd) and a
/// compressed kernel and initrd, where the default level won 0.2% of size
/// for 4-5 times the time (measured on the test image: 74.7 vs 74.8 MB,
/// 6.2 s vs 1.3 s).
fn compress(data: &[u8]) -> io::Result<Vec<u8>> {
    let mut z = ZlibEncoder::new(Vec::with_capacity(data.len() / 2), Compression::fast());
    z.write_all(data)?;
    z.finish()
}

/// A marker sector that announces `sectors` of metadata of kind `kind`.
fn metadata_marker(sectors: u64, kind: u32) -> Vec<u8> {
    let mut m = vec![0u8; SECTOR as usize];
    m[..8].copy_from_slice(&sectors.to_le_bytes());
    // bytes 8..12 (size) stay 0: that is what tells a marker from a grain
    m[12..16].copy_from_slice(&kind.to_le_bytes());
    m
}

/// A CID from the digest; never ffffffff/fffffffe, which some readers take
/// for "no parent".
fn content_id(digest: &[u8]) -> u32 {
    let cid = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    if cid >= 0xffff_fffe {
        cid & 0x7fff_ffff
    } else {
        cid
    }
}

/// `ddb.uuid` as VMware writes it: "60 00 c2 9b … 4a-5c …".
fn vmware_uuid(identity: &str) -> String {
    let bytes = caisson_layout::derive_guid(identity, "vmdk/uuid").into_bytes();
    let half = |b: &[u8]| {
        b.iter()
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!("{}-{}", half(&bytes[..8]), half(&bytes[8..]))
}

struct Descriptor<'a> {
    cid: u32,
    long_content_id: String,
    uuid: String,
    capacity_sectors: u64,
    file_name: &'a str,
}

/// The embedded descriptor. `ddb.adapterType` is lsilogic, the SCSI value
/// the format knows (the OVF puts the disk on a pvscsi controller; the
/// adapter type only matters when a VMDK is attached without an OVF).
/// Geometry: 255 heads, 63 sectors, as VMware uses above 8 GB. No
/// `ddb.toolsVersion`/`ddb.toolsInstallType`: a node runs no VMware Tools,
/// and claiming them makes vSphere wait for a tools heartbeat and attempt
/// guest operations that never answer.
fn descriptor(d: &Descriptor<'_>) -> String {
    let cylinders = d.capacity_sectors.div_ceil(255 * 63).min(65535);
    format!(
        "# Disk DescriptorFile\n\
         version=1\n\
         encoding=\"UTF-8\"\n\
         CID={cid:08x}\n\
         parentCID=ffffffff\n\
         createType=\"streamOptimized\"\n\
         \n\
         # Extent description\n\
         RW {sectors} SPARSE \"{file}\"\n\
         \n\
         # The Disk Data Base\n\
         #DDB\n\
         \n\
         ddb.adapterType = \"lsilogic\"\n\
         ddb.geometry.cylinders = \"{cylinders}\"\n\
         ddb.geometry.heads = \"255\"\n\
         ddb.geometry.sectors = \"63\"\n\
         ddb.longContentID = \"{long}\"\n\
         ddb.uuid = \"{uuid}\"\n\
         ddb.virtualHWVersion = \"4\"\n",
        cid = d.cid,
        sectors = d.capacity_sectors,
        file = d.file_name,
        long = d.long_content_id,
        uuid = d.uuid,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sparse_raw(dir: &Path, size: u64, chunks: &[(u64, &[u8])]) -> PathBuf {
        let path = dir.join("disk.raw");
        let f = File::create(&path).unwrap();
        f.set_len(size).unwrap();
        for (offset, bytes) in chunks {
            f.write_all_at(bytes, *offset).unwrap();
        }
        path
    }

    fn convert(raw: &Path, identity: &str) -> Vec<u8> {
        let out_path = raw.with_extension("vmdk");
        let mut out = File::create(&out_path).unwrap();
        write(raw, identity, "disk.vmdk", &mut out, &out_path).unwrap();
        let mut bytes = Vec::new();
        File::open(&out_path)
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        bytes
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    /// Our own reader of the layout, independent of the writer's state:
    /// footer → directory → tables → grains.
    fn read_back(v: &[u8]) -> Vec<u8> {
        let s = SECTOR as usize;
        let n = v.len();
        assert_eq!(n % s, 0);
        // end-of-stream, footer, footer marker
        assert!(v[n - s..].iter().all(|&b| b == 0), "EOS marker");
        assert_eq!(u64_at(v, n - 3 * s), 1);
        assert_eq!(u32_at(v, n - 3 * s + 8), 0);
        assert_eq!(u32_at(v, n - 3 * s + 12), MARKER_FOOTER);
        let footer = &v[n - 2 * s..n - s];
        assert_eq!(&footer[..4], b"KDMV");
        let capacity = u64_at(footer, 12);
        let gd_offset = u64_at(footer, 56) as usize;
        assert_eq!(u32_at(v, gd_offset * s - s + 12), MARKER_GD);
        let tables = (capacity as usize).div_ceil(128 * 512);
        let mut disk = vec![0u8; capacity as usize * s];
        for t in 0..tables {
            let gt = u32_at(v, gd_offset * s + 4 * t) as usize;
            if gt == 0 {
                continue;
            }
            assert_eq!(u32_at(v, gt * s - s + 12), MARKER_GT);
            for e in 0..512 {
                let at = u32_at(v, gt * s + 4 * e) as usize * s;
                if at == 0 {
                    continue;
                }
                let lba = u64_at(v, at) as usize;
                assert_eq!(lba, (t * 512 + e) * 128);
                let size = u32_at(v, at + 8) as usize;
                let mut grain = Vec::new();
                flate2::read::ZlibDecoder::new(&v[at + 12..at + 12 + size])
                    .read_to_end(&mut grain)
                    .unwrap();
                assert_eq!(grain.len(), GRAIN_BYTES as usize);
                let end = (lba * s + grain.len()).min(disk.len());
                disk[lba * s..end].copy_from_slice(&grain[..end - lba * s]);
            }
        }
        disk
    }

    #[test]
    fn header_descriptor_and_footer_say_stream_optimized() {
        let dir = tempfile::tempdir().unwrap();
        let raw = sparse_raw(dir.path(), 4 << 20, &[(0, b"boot sector")]);
        let v = convert(&raw, "test-1.0");
        assert_eq!(&v[..4], b"KDMV");
        assert_eq!(
            u32_at(&v, 4),
            3,
            "version 3: ESXi refuses older stream VMDKs"
        );
        assert_eq!(u32_at(&v, 8), 0x0003_0001);
        assert_eq!(u64_at(&v, 12), (4 << 20) / 512);
        assert_eq!(u64_at(&v, 20), 128);
        assert_eq!(u64_at(&v, 28), 1);
        assert_eq!(u64_at(&v, 56), u64::MAX, "GD_AT_END in the header");
        assert_eq!(u64_at(&v, 64), 128);
        assert_eq!(&v[73..77], b"\n \r\n");
        assert_eq!(u16::from_le_bytes([v[77], v[78]]), 1);
        let desc = String::from_utf8_lossy(&v[512..512 * 21]);
        let desc = desc.trim_end_matches('\0');
        assert!(desc.contains("createType=\"streamOptimized\""), "{desc}");
        assert!(desc.contains("RW 8192 SPARSE \"disk.vmdk\""), "{desc}");
        assert!(desc.contains("ddb.adapterType = \"lsilogic\""), "{desc}");
        assert!(!desc.contains("toolsVersion"), "{desc}");
        let footer_at = v.len() - 1024;
        assert_eq!(v[..56], v[footer_at..footer_at + 56]);
        assert_ne!(u64_at(&v, footer_at + 56), u64::MAX);
    }

    #[test]
    fn zero_grains_are_left_out_and_the_data_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let noise: Vec<u8> = (0..200_000u32).map(|i| (i * 7919 % 251) as u8).collect();
        // 70 MiB + 3 sectors: three grain tables, the middle one empty,
        // and a last grain cut short by the end of the disk.
        let size = (70 << 20) + 3 * 512;
        let raw = sparse_raw(
            dir.path(),
            size,
            &[
                (0, b"first"),
                (GRAIN_BYTES * 3 - 2, b"spans two grains"),
                (1 << 20, &noise),
                (size - 4, b"end!"),
            ],
        );
        let v = convert(&raw, "test-1.0");
        let disk = read_back(&v);
        let mut expected = Vec::new();
        File::open(&raw)
            .unwrap()
            .read_to_end(&mut expected)
            .unwrap();
        assert!(disk == expected, "the VMDK must read back as the raw image");
        // first, 2 grains straddled, noise = 4 grains, the last one
        let footer = &v[v.len() - 1024..];
        let gd = u64_at(footer, 56) as usize * 512;
        assert_eq!(u32_at(&v, gd + 4), 0, "no table for 32 MiB of zeros");
        assert!(v.len() < 2 << 20, "sparse: {} bytes", v.len());
    }

    #[test]
    fn same_input_same_bytes_and_the_cid_follows_content() {
        let dir = tempfile::tempdir().unwrap();
        let raw = sparse_raw(dir.path(), 1 << 20, &[(4096, b"abc")]);
        let a = convert(&raw, "test-1.0");
        let b = convert(&raw, "test-1.0");
        assert!(a == b);
        let c = convert(&raw, "test-1.1");
        let cid = |v: &[u8]| {
            let d = String::from_utf8_lossy(&v[512..1024]).into_owned();
            d.lines()
                .find(|l| l.starts_with("CID="))
                .unwrap()
                .to_string()
        };
        assert_ne!(cid(&a), cid(&c));
        File::options()
            .write(true)
            .open(&raw)
            .unwrap()
            .write_all_at(b"x", 9000)
            .unwrap();
        assert_ne!(cid(&a), cid(&convert(&raw, "test-1.0")));
    }

    #[test]
    fn threads_do_not_change_the_bytes_or_their_order() {
        let batch: Vec<(u64, Vec<u8>)> = (0..7u64)
            .map(|i| (i, vec![i as u8 + 1; GRAIN_BYTES as usize]))
            .collect();
        let one = compress_all(&batch, 1).unwrap();
        assert_eq!(one.len(), 7);
        assert_eq!(one, compress_all(&batch, 3).unwrap());
        assert_eq!(one, compress_all(&batch, 16).unwrap());
        assert_eq!(one[4], compress(&batch[4].1).unwrap());
    }

    #[test]
    fn unaligned_raw_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let raw = sparse_raw(dir.path(), 1000, &[]);
        let out_path = dir.path().join("x.vmdk");
        let mut out = File::create(&out_path).unwrap();
        let e = write(&raw, "t-1", "x.vmdk", &mut out, &out_path).unwrap_err();
        assert!(e.to_string().contains("1000 bytes"), "{e}");
    }

    #[test]
    fn vmware_uuid_is_sixteen_bytes_in_two_halves() {
        let u = vmware_uuid("caisson-0.1.0");
        assert_eq!(u.len(), 16 * 3 - 1);
        assert_eq!(u.as_bytes()[23], b'-');
        assert_eq!(u, vmware_uuid("caisson-0.1.0"));
        assert_eq!(content_id(&[0xff, 0xff, 0xff, 0xff]), 0x7fff_ffff);
    }
}
