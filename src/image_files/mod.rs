//! Image files on disk: inspecting a file as its declared format (`inspect`) and checksumming
//! it. Where registered files are kept is `image_store`'s.

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

pub mod inspect;

use md5::Md5;
use sha2::{Digest, Sha256, Sha512};

/// Glance v2 disk formats pimage can publish.
pub const DISK_FORMATS: &[&str] = &["raw", "qcow2", "vmdk", "vhd", "vhdx", "vdi", "iso", "ploop"];

/// A file found fit to register: its name and checksums.
#[derive(Debug)]
pub struct Examined {
    pub file_name: String,
    pub sums: Checksums,
}

/// A file's size and digests (hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksums {
    pub size: u64,
    pub md5: String,
    pub sha256: String,
    pub sha512: String,
}

/// Inspects `source` as a self-contained `format` image of at most `max_virtual_size` bytes
/// once expanded, and takes its checksums: the only time they are taken from the file. A
/// refusal names the file as `shown` (an object's URL, not its scratch copy).
pub fn examine(
    source: &Path,
    shown: &str,
    format: &str,
    max_virtual_size: u64,
) -> anyhow::Result<Examined> {
    if !DISK_FORMATS.contains(&format) {
        anyhow::bail!(
            "unknown format '{format}': use one of {}",
            DISK_FORMATS.join(", ")
        );
    }
    inspect::inspect(source, format, max_virtual_size)
        .map_err(|e| anyhow::anyhow!("{shown} is refused: {e}"))?;
    let file_name = source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    Ok(Examined {
        file_name,
        sums: checksums(source)?,
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
    let mut digests = Digests::default();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        if stop.load(Ordering::Relaxed) {
            anyhow::bail!("stopped before the end of {}", path.display());
        }
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        digests.update(&buf[..n]);
    }
    Ok(digests.finish())
}

/// `Checksums` taken as the bytes come (a file read, or an object's chunks).
#[derive(Default)]
pub struct Digests {
    md5: Md5,
    sha256: Sha256,
    sha512: Sha512,
    size: u64,
}

impl Digests {
    pub fn update(&mut self, bytes: &[u8]) {
        self.md5.update(bytes);
        self.sha256.update(bytes);
        self.sha512.update(bytes);
        self.size += bytes.len() as u64;
    }

    pub fn finish(self) -> Checksums {
        Checksums {
            size: self.size,
            md5: hex::encode(self.md5.finalize()),
            sha256: hex::encode(self.sha256.finalize()),
            sha512: hex::encode(self.sha512.finalize()),
        }
    }
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
        let max = inspect::DEFAULT_MAX_VIRTUAL_SIZE;
        assert!(examine(&f, "x.img", "exe", max)
            .unwrap_err()
            .to_string()
            .contains("unknown format"));
        assert!(examine(&f, "x.img", "qcow2", max)
            .unwrap_err()
            .to_string()
            .contains("is not a qcow2 file"));
        let raw = examine(&f, "x.img", "raw", max).unwrap();
        assert_eq!(raw.file_name, "x.img");
        assert_eq!(raw.sums.size, 18);
        assert_eq!(raw.sums.md5, "b12e8d2f9cab8dab0bcbe923394ae31f");
        assert_eq!(
            raw.sums.sha512,
            hex::encode(Sha512::digest(b"not a qcow2 at all"))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
