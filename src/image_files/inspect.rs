//! What an image file really is, read from its headers only (bounded reads), before any
//! tool opens it: OpenStack's format inspector (oslo.utils `format_inspector`, the fix for
//! CVE-2024-32498) in Rust. A file passes when it is exactly its declared format, names no
//! other file (backing file, external data file, VMDK extents elsewhere) and its virtual size
//! is within the limit given; anything else is refused in plain words.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The default limit on an image's virtual size (the size it expands to): 1 TiB.
pub const DEFAULT_MAX_VIRTUAL_SIZE: u64 = 1 << 40;

/// A VMDK descriptor longer than this is refused (qemu-img writes 1 KiB-ish ones).
const MAX_VMDK_DESCRIPTOR: u64 = 64 << 10;

/// Why a file cannot be converted or published.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("cannot read the image file: {0}")]
    Unreadable(#[from] std::io::Error),
    #[error("{0}")]
    Unsafe(String),
}

fn refuse<T>(why: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal::Unsafe(why.into()))
}

/// Checks `path` is a self-contained image of `format` (a Glance disk format) no larger than
/// `max_virtual_size` once expanded; returns its virtual size in bytes.
pub fn inspect(path: &Path, format: &str, max_virtual_size: u64) -> Result<u64, Refusal> {
    let file = File::open(path)?;
    let image = Image {
        len: file.metadata()?.len(),
        file,
    };
    let head = image.read(0, 0x9006)?;
    let mut found = formats_in(&head);
    if format == "vhd"
        && found.is_empty()
        && image.read(image.len.saturating_sub(512), 8)? == b"conectix"
    {
        found.push("vhd"); // a fixed VHD: its only footer is at the end
    }
    let expected: &[&str] = match format {
        "raw" => &[],
        other => &[other],
    };
    if found != expected {
        return refuse(confusion(format, &found));
    }
    let size = match format {
        "qcow2" => qcow2(&image, &head)?,
        "vmdk" => vmdk(&image, &head)?,
        "vhd" => vhd(&image, &head)?,
        "vhdx" => vhdx(&image)?,
        "vdi" => vdi(&head)?,
        "ploop" => u64_le(&head, 36).saturating_mul(512),
        "raw" | "iso" => image.len,
        other => return refuse(format!("pimage cannot inspect '{other}' images")),
    };
    if size > max_virtual_size {
        return refuse(format!(
            "its virtual size ({} MiB once expanded) is above the limit of {} MiB \
             (worker.max_virtual_size_bytes)",
            size >> 20,
            max_virtual_size >> 20
        ));
    }
    Ok(size)
}

fn confusion(declared: &str, found: &[&str]) -> String {
    match found {
        [] => format!("it is not a {declared} file (its header does not match)"),
        [one] => format!("it was declared {declared} but it is a {one} image"),
        many => format!(
            "it was declared {declared} but it looks like several formats at once ({}): \
             a file must be exactly one format",
            many.join(", ")
        ),
    }
}

/// Every format whose signature the first bytes carry, as qemu would probe them (a tool that
/// guesses could take the file for any of these).
fn formats_in(head: &[u8]) -> Vec<&'static str> {
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    let signatures: &[(&str, bool)] = &[
        ("qcow2", at(0, b"QFI\xfb")),
        (
            "vmdk",
            at(0, b"KDMV") || at(0, b"COWD") || at(0, b"# Disk DescriptorFile"),
        ),
        ("vhd", at(0, b"conectix")),
        ("vhdx", at(0, b"vhdxfile")),
        ("vdi", at(0x40, &0xbeda_107f_u32.to_le_bytes())),
        (
            "ploop",
            at(0, b"WithoutFreeSpace") || at(0, b"WithouFreSpacExt"),
        ),
        (
            "iso",
            [0x8001, 0x8801, 0x9001].iter().any(|&o| at(o, b"CD001")),
        ),
        ("qed", at(0, b"QEVM")),
        ("luks", at(0, b"LUKS\xba\xbe")),
        ("bochs", at(0, b"Bochs Virtual HD Image")),
        ("cloop", at(0, b"#!/bin/sh\n#V2.0 Format")),
    ];
    signatures
        .iter()
        .filter(|(_, seen)| *seen)
        .map(|(name, _)| *name)
        .collect()
}

struct Image {
    file: File,
    len: u64,
}

impl Image {
    /// Up to `len` bytes at `offset` (fewer at the end of the file).
    fn read(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let len = len.min(self.len.saturating_sub(offset) as usize);
        let mut buf = vec![0; len];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }
}

fn u16_le(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}
fn u32_le(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}
fn u64_le(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}
fn u32_be(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_be_bytes)
}
fn u64_be(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// A name read from the file, shown quoted and cut short (it is the attacker's text).
fn shown(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
    format!("{text:?}")
}

/// qcow2 incompatible feature bits qemu knows: dirty, corrupt, external data file,
/// compression type, extended L2 entries.
const QCOW2_EXTERNAL_DATA_FILE: u64 = 1 << 2;
const QCOW2_KNOWN_INCOMPATIBLE: u64 = (1 << 5) - 1;

fn qcow2(image: &Image, head: &[u8]) -> Result<u64, Refusal> {
    let version = u32_be(head, 4);
    if !(2..=3).contains(&version) {
        return refuse(format!("it is a qcow version {version} image, not qcow2"));
    }
    let backing_offset = u64_be(head, 8);
    if backing_offset != 0 {
        let name_len = (u32_be(head, 16) as usize).min(1023);
        let name = image.read(backing_offset, name_len)?;
        return refuse(format!(
            "the qcow2 image names a backing file ({}): only self-contained images are accepted",
            shown(&name)
        ));
    }
    if version == 3 {
        let incompatible = u64_be(head, 72);
        if incompatible & QCOW2_EXTERNAL_DATA_FILE != 0 {
            return refuse(
                "the qcow2 image keeps its data in an external data file: only \
                 self-contained images are accepted",
            );
        }
        if incompatible & !QCOW2_KNOWN_INCOMPATIBLE != 0 {
            return refuse(format!(
                "the qcow2 image uses unknown incompatible features ({incompatible:#x})"
            ));
        }
    }
    Ok(u64_be(head, 24))
}

fn vmdk(image: &Image, head: &[u8]) -> Result<u64, Refusal> {
    if !head.starts_with(b"KDMV") {
        return refuse(
            "the VMDK is a descriptor or an old (COWD) file that takes its data from other \
             files: only monolithicSparse and streamOptimized VMDKs are accepted",
        );
    }
    let capacity = vmdk_capacity(image, head)?;
    let (desc_offset, desc_size) = (u64_le(head, 28), u64_le(head, 36));
    // qemu reads the extents of an embedded descriptor when the capacity is 0.
    if capacity == 0 || desc_offset == 0 {
        return refuse("the VMDK has no size or no embedded descriptor of its own");
    }
    if desc_size.saturating_mul(512) > MAX_VMDK_DESCRIPTOR {
        return refuse(format!(
            "the VMDK's descriptor is larger than {} KiB",
            MAX_VMDK_DESCRIPTOR >> 10
        ));
    }
    let descriptor = image.read(
        desc_offset.saturating_mul(512),
        desc_size.saturating_mul(512) as usize,
    )?;
    check_vmdk_descriptor(&String::from_utf8_lossy(&descriptor))?;
    check_vmdk_parent_at_sector_one(image)?;
    Ok(capacity.saturating_mul(512))
}

/// qemu marks a streamOptimized VMDK's grain directory "at the end" and then takes the whole
/// header (capacity included) from the footer, 1536 bytes before the end of the file.
const VMDK_GD_AT_END: u64 = u64::MAX;

/// The capacity in sectors qemu will use: the footer's when the header sends it there (both
/// must agree, so the file cannot expand past what is reported).
fn vmdk_capacity(image: &Image, head: &[u8]) -> Result<u64, Refusal> {
    let capacity = u64_le(head, 12);
    if u64_le(head, 56) != VMDK_GD_AT_END {
        return Ok(capacity);
    }
    let footer = image.read(image.len.saturating_sub(1024), 512)?;
    if !footer.starts_with(b"KDMV") {
        return refuse("the streamOptimized VMDK has no footer header at its end");
    }
    let in_footer = u64_le(&footer, 12);
    if in_footer != capacity {
        return refuse(format!(
            "the VMDK's footer gives another size ({} MiB) than its header ({} MiB)",
            in_footer.saturating_mul(512) >> 20,
            capacity.saturating_mul(512) >> 20
        ));
    }
    Ok(capacity)
}

/// qemu looks for `parentFileNameHint` in the text at 0x200 (sector 1), wherever the
/// header says the descriptor is: up to 1 MiB, to the first NUL, anywhere in it.
fn check_vmdk_parent_at_sector_one(image: &Image) -> Result<(), Refusal> {
    let text = image.read(0x200, (1 << 20) - 1)?;
    let text = text.split(|&b| b == 0).next().unwrap_or_default();
    if text
        .windows(b"parentFileNameHint".len())
        .any(|w| w == b"parentFileNameHint")
    {
        return refuse(
            "the VMDK names a parent disk (parentFileNameHint at sector 1): only \
             self-contained images are accepted",
        );
    }
    Ok(())
}

/// An embedded descriptor: the right type, no parent, one sparse extent that is the file itself.
fn check_vmdk_descriptor(text: &str) -> Result<(), Refusal> {
    let text = text.trim_end_matches('\0');
    let value = |key: &str| {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix(key))
            .find_map(|rest| rest.trim_start().strip_prefix('='))
            .map(|v| v.trim().trim_matches('"').to_string())
    };
    match value("createType").as_deref() {
        Some("monolithicSparse" | "streamOptimized") => {}
        other => {
            return refuse(format!(
                "the VMDK's type is {}: only monolithicSparse and streamOptimized are accepted",
                other.map_or("missing".into(), |t| shown(t.as_bytes()))
            ))
        }
    }
    if let Some(parent) = value("parentFileNameHint") {
        return refuse(format!(
            "the VMDK names a parent disk ({}): only self-contained images are accepted",
            shown(parent.as_bytes())
        ));
    }
    let extents: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| {
            ["RW ", "RDONLY ", "NOACCESS "]
                .iter()
                .any(|a| l.starts_with(a))
        })
        .collect();
    match extents.as_slice() {
        [one] if one.split_whitespace().nth(2) == Some("SPARSE") && !one.contains('/') => Ok(()),
        [one] => refuse(format!(
            "the VMDK's extent ({}) is not the file itself",
            shown(one.as_bytes())
        )),
        many => refuse(format!(
            "the VMDK has {} extents: only a single sparse extent (the file itself) is accepted",
            many.len()
        )),
    }
}

const VHD_DIFFERENCING: u32 = 4;

/// A dynamic VHD starts with a copy of its footer; a fixed one has it only at the end.
fn vhd(image: &Image, head: &[u8]) -> Result<u64, Refusal> {
    let footer = if head.starts_with(b"conectix") {
        head[..512.min(head.len())].to_vec()
    } else {
        image.read(image.len.saturating_sub(512), 512)?
    };
    if u32_be(&footer, 60) == VHD_DIFFERENCING {
        return refuse(
            "the VHD is a differencing disk with a parent: only self-contained images are accepted",
        );
    }
    Ok(u64_be(&footer, 48).max(vhd_chs_size(&footer)))
}

/// qemu's vpc driver sizes the disk by its geometry (cylinders × heads × sectors) for most
/// creator apps, by `current_size` for others: the larger of the two bounds both.
fn vhd_chs_size(footer: &[u8]) -> u64 {
    let geometry = u32_be(footer, 56);
    let (cylinders, heads, sectors) = (geometry >> 16, (geometry >> 8) & 0xff, geometry & 0xff);
    u64::from(cylinders) * u64::from(heads) * u64::from(sectors) * 512
}

/// VHDX GUIDs as stored (the first three fields little-endian).
const VHDX_METADATA_REGION: [u8; 16] = guid(0x8B7CA206, 0x4790, 0x4B9A, 0xB8FE575F050F886E);
const VHDX_VIRTUAL_DISK_SIZE: [u8; 16] = guid(0x2FA54224, 0xCD1B, 0x4876, 0xB2115DBED83BF4B8);
const VHDX_PARENT_LOCATOR: [u8; 16] = guid(0xA8D35F2D, 0xB30B, 0x454D, 0xABF7D3D84834AB0C);

const fn guid(a: u32, b: u16, c: u16, d: u64) -> [u8; 16] {
    let (a, b, c, d) = (
        a.to_le_bytes(),
        b.to_le_bytes(),
        c.to_le_bytes(),
        d.to_be_bytes(),
    );
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

/// The region table (at 192 KiB) points to the metadata region, whose table holds the
/// virtual disk size and, for a differencing disk, a parent locator.
fn vhdx(image: &Image) -> Result<u64, Refusal> {
    let regions = image.read(192 << 10, 64 << 10)?;
    if !regions.starts_with(b"regi") {
        return refuse("the VHDX has no region table");
    }
    let count = (u32_le(&regions, 8) as usize).min(2047);
    let metadata = (0..count)
        .map(|i| 16 + i * 32)
        .find(|&e| regions.get(e..e + 16) == Some(&VHDX_METADATA_REGION[..]))
        .map(|e| u64_le(&regions, e + 16));
    let Some(metadata) = metadata else {
        return refuse("the VHDX has no metadata region");
    };
    let table = image.read(metadata, 64 << 10)?;
    if !table.starts_with(b"metadata") {
        return refuse("the VHDX's metadata table is missing");
    }
    let entries = (u16_le(&table, 10) as usize).min(2047);
    let mut size = None;
    for e in (0..entries).map(|i| 32 + i * 32) {
        let id = table.get(e..e + 16);
        if id == Some(&VHDX_PARENT_LOCATOR[..]) {
            return refuse("the VHDX is a differencing disk with a parent: only self-contained images are accepted");
        }
        if id == Some(&VHDX_VIRTUAL_DISK_SIZE[..]) {
            let at = vhdx_item_offset(metadata, u32_le(&table, e + 16))?;
            size = Some(u64_le(&image.read(at, 8)?, 0));
        }
    }
    size.map_or_else(|| refuse("the VHDX does not give its virtual size"), Ok)
}

/// A metadata item's place in the file: the table's offset plus the item's, both the file's.
fn vhdx_item_offset(metadata: u64, item: u32) -> Result<u64, Refusal> {
    metadata
        .checked_add(u64::from(item))
        .map_or_else(|| refuse("the VHDX's metadata points past any file"), Ok)
}

const VDI_NORMAL: u32 = 1;
const VDI_FIXED: u32 = 2;

fn vdi(head: &[u8]) -> Result<u64, Refusal> {
    match u32_le(head, 0x4c) {
        VDI_NORMAL | VDI_FIXED => Ok(u64_le(head, 0x170)),
        kind => refuse(format!(
            "the VDI is of type {kind} (undo or differencing, with a parent): only \
             self-contained images are accepted"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::process::Command;

    fn dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pimage-inspect-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn qemu_img(args: &[&str]) {
        let out = Command::new("qemu-img").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn refusal(path: &Path, format: &str) -> String {
        inspect(path, format, DEFAULT_MAX_VIRTUAL_SIZE)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn real_images_of_each_format_pass_with_their_virtual_size() {
        let dir = dir();
        for (glance, qemu) in [
            ("qcow2", "qcow2"),
            ("vmdk", "vmdk"),
            ("vhd", "vpc"),
            ("vhdx", "vhdx"),
            ("vdi", "vdi"),
            ("ploop", "parallels"),
        ] {
            let path = dir.join(format!("disk.{glance}"));
            qemu_img(&["create", "-f", qemu, path.to_str().unwrap(), "64M"]);
            let size = inspect(&path, glance, DEFAULT_MAX_VIRTUAL_SIZE)
                .unwrap_or_else(|e| panic!("{glance}: {e}"));
            // VHD rounds up to its disk geometry.
            assert!((64 << 20..=65 << 20).contains(&size), "{glance}: {size}");
        }
        let fixed = dir.join("fixed.vhd");
        qemu_img(&[
            "create",
            "-f",
            "vpc",
            "-o",
            "subformat=fixed",
            fixed.to_str().unwrap(),
            "8M",
        ]);
        assert!(inspect(&fixed, "vhd", DEFAULT_MAX_VIRTUAL_SIZE).is_ok());
        let stream = dir.join("stream.vmdk");
        qemu_img(&[
            "create",
            "-f",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
            stream.to_str().unwrap(),
            "8M",
        ]);
        assert_eq!(
            inspect(&stream, "vmdk", DEFAULT_MAX_VIRTUAL_SIZE).unwrap(),
            8 << 20
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn backing_files_data_files_and_foreign_extents_are_refused() {
        let dir = dir();
        let p = |n: &str| dir.join(n).to_str().unwrap().to_string();
        qemu_img(&[
            "create",
            "-f",
            "qcow2",
            "-b",
            "/etc/passwd",
            "-F",
            "raw",
            &p("b.qcow2"),
        ]);
        assert!(refusal(&dir.join("b.qcow2"), "qcow2").contains("backing file (\"/etc/passwd\")"));
        qemu_img(&[
            "create",
            "-f",
            "qcow2",
            "-o",
            &format!("data_file={}", p("data")),
            &p("d.qcow2"),
            "1M",
        ]);
        assert!(refusal(&dir.join("d.qcow2"), "qcow2").contains("external data file"));
        qemu_img(&[
            "create",
            "-f",
            "vmdk",
            "-o",
            "subformat=monolithicFlat",
            &p("flat.vmdk"),
            "1M",
        ]);
        assert!(refusal(&dir.join("flat.vmdk"), "vmdk").contains("descriptor"));
        qemu_img(&[
            "create",
            "-f",
            "vmdk",
            "-o",
            "subformat=twoGbMaxExtentSparse",
            &p("split.vmdk"),
            "1M",
        ]);
        assert!(refusal(&dir.join("split.vmdk"), "vmdk").contains("descriptor"));
        qemu_img(&["create", "-f", "vmdk", &p("base.vmdk"), "1M"]);
        qemu_img(&[
            "create",
            "-f",
            "vmdk",
            "-b",
            &p("base.vmdk"),
            "-F",
            "vmdk",
            &p("child.vmdk"),
        ]);
        assert!(refusal(&dir.join("child.vmdk"), "vmdk").contains("parent disk"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_vmdk_descriptor_must_be_one_sparse_extent_of_the_right_type() {
        let ok = "createType=\"monolithicSparse\"\nRW 2048 SPARSE \"disk.vmdk\"\n";
        assert!(check_vmdk_descriptor(ok).is_ok());
        let flat = "createType=\"monolithicSparse\"\nRW 2048 FLAT \"/etc/shadow\" 0\n";
        assert!(check_vmdk_descriptor(flat).is_err());
        let two = format!("{ok}RW 2048 SPARSE \"other.vmdk\"\n");
        assert!(check_vmdk_descriptor(&two)
            .unwrap_err()
            .to_string()
            .contains("2 extents"));
        let typed = "createType=\"vmfs\"\nRW 2048 VMFS \"disk-flat.vmdk\"\n";
        assert!(check_vmdk_descriptor(typed)
            .unwrap_err()
            .to_string()
            .contains("\"vmfs\""));
    }

    #[test]
    fn a_file_is_exactly_its_declared_format() {
        let dir = dir();
        let q = dir.join("q.qcow2");
        qemu_img(&["create", "-f", "qcow2", q.to_str().unwrap(), "1M"]);
        assert_eq!(
            refusal(&q, "raw"),
            "it was declared raw but it is a qcow2 image"
        );
        assert_eq!(
            refusal(&q, "vmdk"),
            "it was declared vmdk but it is a qcow2 image"
        );
        let raw = dir.join("r.raw");
        std::fs::write(&raw, b"just bytes").unwrap();
        assert_eq!(inspect(&raw, "raw", 100).unwrap(), 10);
        assert!(refusal(&raw, "iso").contains("is not a iso file"));
        let mut iso = vec![0u8; 0x9000];
        iso[0x8001..0x8006].copy_from_slice(b"CD001");
        std::fs::write(&raw, &iso).unwrap();
        assert_eq!(inspect(&raw, "iso", 1 << 20).unwrap(), 0x9000);
        assert_eq!(
            refusal(&raw, "raw"),
            "it was declared raw but it is a iso image"
        );
        // A qcow2 header that is also a VDI: two formats at once.
        let mut both = std::fs::read(&q).unwrap();
        both[0x40..0x44].copy_from_slice(&0xbeda_107f_u32.to_le_bytes());
        std::fs::write(&q, both).unwrap();
        assert!(refusal(&q, "qcow2").contains("several formats at once (qcow2, vdi)"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_virtual_size_above_the_limit_is_refused() {
        let dir = dir();
        let q = dir.join("huge.qcow2");
        qemu_img(&["create", "-f", "qcow2", q.to_str().unwrap(), "2T"]);
        assert!(refusal(&q, "qcow2")
            .contains("(2097152 MiB once expanded) is above the limit of 1048576 MiB"));
        assert_eq!(inspect(&q, "qcow2", 4 << 40).unwrap(), 2 << 40);
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn put_u64_le(bytes: &mut [u8], at: usize, value: u64) {
        bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
    }

    fn qemu_img_virtual_size(path: &Path, format: &str) -> String {
        let out = Command::new("qemu-img")
            .args(["info", "-f", format, path.to_str().unwrap()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn a_stream_optimized_vmdk_whose_footer_gives_a_larger_size_is_refused() {
        let dir = dir();
        let (raw, vmdk) = (dir.join("r.raw"), dir.join("s.vmdk"));
        std::fs::write(&raw, vec![7u8; 1 << 20]).unwrap();
        let (r, v) = (raw.to_str().unwrap(), vmdk.to_str().unwrap());
        qemu_img(&[
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
            r,
            v,
        ]);
        let mut bytes = std::fs::read(&vmdk).unwrap();
        // The footer: a footer marker (type 3), a copy of the header saying 1 GiB, an end marker.
        let mut header = bytes[..512].to_vec();
        put_u64_le(&mut header, 12, 1 << 21);
        put_u64_le(&mut bytes, 56, VMDK_GD_AT_END);
        let mut marker = vec![0u8; 512];
        marker[12..16].copy_from_slice(&3u32.to_le_bytes());
        bytes.extend(marker.iter().chain(&header).chain(&[0u8; 512]));
        std::fs::write(&vmdk, bytes).unwrap();
        // qemu believes the footer.
        assert!(qemu_img_virtual_size(&vmdk, "vmdk").contains("virtual size: 1 GiB"));
        assert!(refusal(&vmdk, "vmdk")
            .contains("the VMDK's footer gives another size (1024 MiB) than its header (1 MiB)"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_vhd_sized_by_its_geometry_reports_the_larger_size() {
        let dir = dir();
        let vhd = dir.join("g.vhd");
        let v = vhd.to_str().unwrap();
        qemu_img(&["create", "-f", "vpc", "-o", "subformat=fixed", v, "1M"]);
        let mut bytes = std::fs::read(&vhd).unwrap();
        let footer = bytes.len() - 512;
        assert_eq!(&bytes[footer + 28..footer + 32], b"qemu");
        // 1000 cylinders, 16 heads, 63 sectors: 492 MiB; the checksum made right again.
        bytes[footer + 56..footer + 60].copy_from_slice(&[0x03, 0xe8, 16, 63]);
        bytes[footer + 64..footer + 68].fill(0);
        let sum = bytes[footer..].iter().map(|&b| u32::from(b)).sum::<u32>();
        bytes[footer + 64..footer + 68].copy_from_slice(&(!sum).to_be_bytes());
        std::fs::write(&vhd, bytes).unwrap();
        assert!(qemu_img_virtual_size(&vhd, "vpc").contains("(516096000 bytes)"));
        assert_eq!(
            inspect(&vhd, "vhd", DEFAULT_MAX_VIRTUAL_SIZE).unwrap(),
            516_096_000
        );
        assert!(inspect(&vhd, "vhd", 256 << 20).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_vmdk_parent_named_at_sector_one_is_refused() {
        let dir = dir();
        let vmdk = dir.join("p.vmdk");
        qemu_img(&["create", "-f", "vmdk", vmdk.to_str().unwrap(), "1M"]);
        let mut bytes = std::fs::read(&vmdk).unwrap();
        // The clean descriptor moves to sector 2; sector 1 names a parent.
        bytes.copy_within(0x200..0x200 + 19 * 512, 0x400);
        put_u64_le(&mut bytes, 28, 2);
        put_u64_le(&mut bytes, 36, 19);
        let hint: &[u8] = b"# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n\
            parentFileNameHint=\"/etc/passwd\"\n";
        bytes[0x200..0x400].fill(0);
        bytes[0x200..0x200 + hint.len()].copy_from_slice(hint);
        std::fs::write(&vmdk, bytes).unwrap();
        assert!(qemu_img_virtual_size(&vmdk, "vmdk").contains("backing file: /etc/passwd"));
        assert!(refusal(&vmdk, "vmdk").contains("parentFileNameHint at sector 1"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_vhdx_metadata_offset_past_any_file_is_refused_not_overflowed() {
        assert_eq!(
            vhdx_item_offset(1 << 20, 0x1000).unwrap(),
            (1 << 20) + 0x1000
        );
        assert!(vhdx_item_offset(u64::MAX - 4, 0x1000)
            .unwrap_err()
            .to_string()
            .contains("points past any file"));
    }
}
