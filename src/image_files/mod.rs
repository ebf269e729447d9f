//! Image files on disk: inspecting a file as its declared format (`inspect`), checksumming it, and
//! placing it in the shared image directory that every worker reads.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

pub mod inspect;

use md5::Md5;
use sha2::{Digest, Sha256, Sha512};

/// Glance v2 disk formats pimage can publish.
pub const DISK_FORMATS: &[&str] = &["raw", "qcow2", "vmdk", "vhd", "vhdx", "vdi", "iso", "ploop"];

#[derive(Debug)]
pub struct ImageFile {
    pub path: PathBuf,
    pub file_name: String,
    pub size: u64,
    pub md5: String,
    pub sha256: String,
    pub sha512: String,
}

/// A file's size and digests (hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksums {
    pub size: u64,
    pub md5: String,
    pub sha256: String,
    pub sha512: String,
}

/// `prepare_within` the default virtual size limit.
pub fn prepare(
    source: &Path,
    format: &str,
    image_dir: &Path,
    in_place: bool,
) -> anyhow::Result<ImageFile> {
    prepare_within(
        source,
        format,
        image_dir,
        in_place,
        inspect::DEFAULT_MAX_VIRTUAL_SIZE,
    )
}

/// Inspects `source` as a self-contained `format` image of at most `max_virtual_size` bytes
/// once expanded, copies it into `image_dir` (unless `in_place`), and returns its final path
/// and checksums.
pub fn prepare_within(
    source: &Path,
    format: &str,
    image_dir: &Path,
    in_place: bool,
    max_virtual_size: u64,
) -> anyhow::Result<ImageFile> {
    if !DISK_FORMATS.contains(&format) {
        anyhow::bail!(
            "unknown format '{format}': use one of {}",
            DISK_FORMATS.join(", ")
        );
    }
    inspect::inspect(source, format, max_virtual_size)
        .map_err(|e| anyhow::anyhow!("{} is refused: {e}", source.display()))?;
    let file_name = source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let path = if in_place {
        std::fs::canonicalize(source)?
    } else {
        std::fs::create_dir_all(image_dir)?;
        let target =
            std::fs::canonicalize(image_dir)?.join(format!("{}-{file_name}", uuid::Uuid::new_v4()));
        std::fs::copy(source, &target)?;
        target
    };
    let sums = checksums(&path)?;
    Ok(ImageFile {
        path,
        file_name,
        size: sums.size,
        md5: sums.md5,
        sha256: sums.sha256,
        sha512: sums.sha512,
    })
}

/// Size, md5, sha256 and sha512 of a file (hex), in one read.
pub fn checksums(path: &Path) -> anyhow::Result<Checksums> {
    checksums_unless_stopped(path, &AtomicBool::new(false))
}

/// `checksums`, given up (an error) as soon as `stop` is set: checked per 1 MiB read, so a
/// cancelled attempt does not keep hashing a copy of up to the virtual size limit.
pub fn checksums_unless_stopped(path: &Path, stop: &AtomicBool) -> anyhow::Result<Checksums> {
    let mut file = std::fs::File::open(path)?;
    let mut md5 = Md5::new();
    let mut sha = Sha256::new();
    let mut sha512 = Sha512::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        if stop.load(Ordering::Relaxed) {
            anyhow::bail!("stopped before the end of {}", path.display());
        }
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        md5.update(&buf[..n]);
        sha.update(&buf[..n]);
        sha512.update(&buf[..n]);
        size += n as u64;
    }
    Ok(Checksums {
        size,
        md5: hex::encode(md5.finalize()),
        sha256: hex::encode(sha.finalize()),
        sha512: hex::encode(sha512.finalize()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_unknown_formats_and_wrong_headers() {
        let dir = std::env::temp_dir().join(format!("pimage-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("x.img");
        std::fs::write(&f, b"not a qcow2 at all").unwrap();
        assert!(prepare(&f, "exe", &dir, true)
            .unwrap_err()
            .to_string()
            .contains("unknown format"));
        assert!(prepare(&f, "qcow2", &dir, true)
            .unwrap_err()
            .to_string()
            .contains("is not a qcow2 file"));
        let raw = prepare(&f, "raw", &dir.join("store"), false).unwrap();
        assert_eq!(raw.size, 18);
        assert_eq!(raw.md5, "b12e8d2f9cab8dab0bcbe923394ae31f");
        // sha512sum of the same 18 bytes
        assert_eq!(raw.sha512.len(), 128);
        assert_eq!(
            raw.sha512,
            hex::encode(Sha512::digest(b"not a qcow2 at all"))
        );
        assert!(raw
            .path
            .starts_with(std::fs::canonicalize(dir.join("store")).unwrap()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
