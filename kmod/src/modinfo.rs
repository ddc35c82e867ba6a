//! Reading a module's `.modinfo` section: NUL-separated `key=value` strings
//! that modpost writes into every `.ko` (the same data `modinfo(8)` shows).

use std::path::Path;

use goblin::container::Ctx;
use goblin::elf::{Elf, SectionHeader};

use crate::{name_from_path, normalize, KmodError};

/// What our depmod needs from one module.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModInfo {
    /// Normalized (`_`, never `-`).
    pub name: String,
    /// Direct dependencies (modules providing symbols it uses), normalized,
    /// in the order modpost wrote them.
    pub depends: Vec<String>,
    /// Device alias globs, e.g. `pci:v00001AF4d*sv*sd*bc*sc*i*`.
    pub aliases: Vec<String>,
    /// `softdep=pre: a b` modules, normalized. Recorded for the agent;
    /// our index does not act on them (nothing in our initrd needs one).
    pub softdep_pre: Vec<String>,
    /// `softdep=... post: c` modules, normalized.
    pub softdep_post: Vec<String>,
}

/// Parse `.modinfo` from a module image. The name comes from `name=`, which
/// every kernel since 5.3 writes; images without it are an error here (use
/// [`modinfo_from_file`] to fall back on the file name).
pub fn modinfo_from_elf(bytes: &[u8]) -> Result<ModInfo, KmodError> {
    let section = modinfo_section(bytes)?;
    let (name, info) = parse_modinfo(section);
    match name {
        Some(name) => Ok(ModInfo { name, ..info }),
        None => Err(KmodError::NoModuleName),
    }
}

/// Read and parse a module file; without `name=` the file stem names it.
pub fn modinfo_from_file(path: &Path) -> Result<ModInfo, KmodError> {
    let bytes = std::fs::read(path).map_err(|e| KmodError::io(path, e))?;
    let section = modinfo_section(&bytes).map_err(|e| KmodError::InModule {
        path: path.display().to_string(),
        source: Box::new(e),
    })?;
    let (name, info) = parse_modinfo(section);
    let name = name.unwrap_or_else(|| name_from_path(&path.to_string_lossy()));
    Ok(ModInfo { name, ..info })
}

/// The bytes of the `.modinfo` section. Only the ELF header and section
/// headers are parsed: a full `Elf::parse` would also decode symbols and
/// relocations of ~1000 modules for nothing.
fn modinfo_section(bytes: &[u8]) -> Result<&[u8], KmodError> {
    let elf_err = |e: goblin::error::Error| KmodError::Elf {
        reason: e.to_string(),
    };
    let header = Elf::parse_header(bytes).map_err(elf_err)?;
    let ctx = Ctx::new(
        header.container().map_err(elf_err)?,
        header.endianness().map_err(elf_err)?,
    );
    let sections = SectionHeader::parse(
        bytes,
        to_usize(header.e_shoff)?,
        usize::from(header.e_shnum),
        ctx,
    )
    .map_err(elf_err)?;
    let shstrtab = sections
        .get(usize::from(header.e_shstrndx))
        .ok_or_else(|| KmodError::Elf {
            reason: format!(
                "section name table index {} out of range",
                header.e_shstrndx
            ),
        })?;
    let names = slice(bytes, shstrtab.sh_offset, shstrtab.sh_size)?;
    for sh in &sections {
        let name = names.get(sh.sh_name..).map(until_nul).unwrap_or_default();
        if name == b".modinfo" {
            return slice(bytes, sh.sh_offset, sh.sh_size);
        }
    }
    Err(KmodError::NoModinfo)
}

fn to_usize(v: u64) -> Result<usize, KmodError> {
    usize::try_from(v).map_err(|_| KmodError::Elf {
        reason: format!("offset {v} does not fit in memory"),
    })
}

fn slice(bytes: &[u8], offset: u64, size: u64) -> Result<&[u8], KmodError> {
    let start = to_usize(offset)?;
    let end = start.checked_add(to_usize(size)?);
    end.and_then(|end| bytes.get(start..end))
        .ok_or_else(|| KmodError::Elf {
            reason: format!(
                "section at {offset}+{size} runs past the end of the file ({} bytes)",
                bytes.len()
            ),
        })
}

fn until_nul(b: &[u8]) -> &[u8] {
    b.split(|&c| c == 0).next().unwrap_or_default()
}

/// Split the section into its key=value strings. Padding NULs between
/// strings are skipped; non-UTF-8 values are decoded lossily (only
/// descriptions and authors ever contain any).
fn parse_modinfo(section: &[u8]) -> (Option<String>, ModInfo) {
    let mut name = None;
    let mut info = ModInfo::default();
    for raw in section.split(|&c| c == 0).filter(|s| !s.is_empty()) {
        let entry = String::from_utf8_lossy(raw);
        let Some((key, value)) = entry.split_once('=') else {
            continue;
        };
        match key {
            "name" if !value.is_empty() => name = Some(normalize(value)),
            "depends" => info
                .depends
                .extend(value.split(',').filter(|d| !d.is_empty()).map(normalize)),
            "alias" if !value.is_empty() => info.aliases.push(value.to_string()),
            "softdep" => parse_softdep(value, &mut info),
            _ => {}
        }
    }
    (name, info)
}

/// `softdep=pre: a b post: c` (either part optional).
fn parse_softdep(value: &str, info: &mut ModInfo) {
    let mut target: Option<&mut Vec<String>> = None;
    for word in value.split_whitespace() {
        match word {
            "pre:" => target = Some(&mut info.softdep_pre),
            "post:" => target = Some(&mut info.softdep_post),
            name => {
                if let Some(list) = target.as_deref_mut() {
                    list.push(normalize(name));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf_fixture::module_elf;

    #[test]
    fn modinfo_is_read_from_a_synthetic_module() {
        let elf = module_elf(&[
            "license=GPL",
            "alias=pci:v00001AF4d*sv*sd*bc*sc*i*",
            "alias=virtio:d00000002v*",
            "softdep=pre: crc32c-generic post: foo",
            "depends=virtio,virtio_ring",
            "name=virtio-blk",
        ]);
        let info = modinfo_from_elf(&elf).unwrap();
        assert_eq!(info.name, "virtio_blk");
        assert_eq!(info.depends, ["virtio", "virtio_ring"]);
        assert_eq!(
            info.aliases,
            ["pci:v00001AF4d*sv*sd*bc*sc*i*", "virtio:d00000002v*"]
        );
        assert_eq!(info.softdep_pre, ["crc32c_generic"]);
        assert_eq!(info.softdep_post, ["foo"]);
    }

    #[test]
    fn empty_depends_means_no_dependencies() {
        let info = modinfo_from_elf(&module_elf(&["depends=", "name=virtio"])).unwrap();
        assert!(info.depends.is_empty());
        assert!(info.aliases.is_empty());
    }

    #[test]
    fn missing_name_is_an_error_from_bytes_but_the_file_stem_names_a_file() {
        let elf = module_elf(&["depends=a"]);
        assert!(matches!(
            modinfo_from_elf(&elf),
            Err(KmodError::NoModuleName)
        ));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("virtio-rng.ko");
        std::fs::write(&path, &elf).unwrap();
        let info = modinfo_from_file(&path).unwrap();
        assert_eq!(info.name, "virtio_rng");
        assert_eq!(info.depends, ["a"]);
    }

    #[test]
    fn non_elf_and_truncated_images_are_rejected_with_a_reason() {
        assert!(matches!(
            modinfo_from_elf(b"not an elf at all, just text......................................"),
            Err(KmodError::Elf { .. })
        ));
        let elf = module_elf(&["name=x"]);
        let cut = &elf[..elf.len() - 8];
        assert!(
            matches!(modinfo_from_elf(cut), Err(KmodError::Elf { .. })),
            "truncated section headers must not parse"
        );
    }
}
