//! A minimal ELF64 relocatable object with a `.modinfo` section, built by
//! hand so the tests need no real kernel tree and no ELF writer crate.

/// Sections: null, `.modinfo` (the given strings, NUL-separated, with a
/// padding NUL between them as the kernel's alignment leaves), `.shstrtab`.
pub fn module_elf(modinfo: &[&str]) -> Vec<u8> {
    let mut info = Vec::new();
    for s in modinfo {
        info.extend_from_slice(s.as_bytes());
        info.extend_from_slice(b"\0\0");
    }
    let shstrtab = b"\0.modinfo\0.shstrtab\0";
    let info_off = 64u64;
    let shstr_off = info_off + info.len() as u64;
    let sh_off = shstr_off + shstrtab.len() as u64;

    let mut out = Vec::new();
    out.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&1u16.to_le_bytes()); // ET_REL
    out.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes()); // entry
    out.extend_from_slice(&0u64.to_le_bytes()); // phoff
    out.extend_from_slice(&sh_off.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // flags
    out.extend_from_slice(&64u16.to_le_bytes()); // ehsize
    out.extend_from_slice(&0u16.to_le_bytes()); // phentsize
    out.extend_from_slice(&0u16.to_le_bytes()); // phnum
    out.extend_from_slice(&64u16.to_le_bytes()); // shentsize
    out.extend_from_slice(&3u16.to_le_bytes()); // shnum
    out.extend_from_slice(&2u16.to_le_bytes()); // shstrndx
    assert_eq!(out.len(), 64);
    out.extend_from_slice(&info);
    out.extend_from_slice(shstrtab);
    section_header(&mut out, 0, 0, 0, 0);
    section_header(&mut out, 1, 1, info_off, info.len() as u64); // PROGBITS
    section_header(&mut out, 10, 3, shstr_off, shstrtab.len() as u64); // STRTAB
    out
}

fn section_header(out: &mut Vec<u8>, name: u32, kind: u32, offset: u64, size: u64) {
    out.extend_from_slice(&name.to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes()); // flags
    out.extend_from_slice(&0u64.to_le_bytes()); // addr
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // link
    out.extend_from_slice(&0u32.to_le_bytes()); // info
    out.extend_from_slice(&1u64.to_le_bytes()); // addralign
    out.extend_from_slice(&0u64.to_le_bytes()); // entsize
}
