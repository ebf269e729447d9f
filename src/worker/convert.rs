//! What goes up: the registered file, or (when the cloud's profile names another
//! `disk_format`, e.g. `raw` for Ceph) a copy converted with `qemu-img convert` into
//! `worker.scratch_dir`, after checking that it fits the free space there; the copy is
//! removed when the attempt ends, whatever happened.

use std::path::{Path, PathBuf};

use tokio::process::Command;

use crate::cloud::Glance;

use super::attempt::{AttemptError, Job};

/// The bytes an attempt sends, with their size and digests.
pub(super) struct Payload {
    pub(super) path: PathBuf,
    pub(super) format: String,
    pub(super) size: i64,
    pub(super) md5: String,
    pub(super) sha512: Option<String>,
    /// A converted copy, removed on drop.
    scratch: Option<PathBuf>,
}

impl Drop for Payload {
    fn drop(&mut self) {
        if let Some(path) = &self.scratch {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn failed(summary: String, detail: impl ToString) -> AttemptError {
    AttemptError::Permanent {
        summary,
        detail: Some(detail.to_string()),
    }
}

impl Job<'_> {
    /// The registered file as it is, or converted to the disk format the cloud's profile wants.
    pub(super) async fn payload(&self, glance: &Glance) -> Result<Payload, AttemptError> {
        let image = self.image;
        let wanted = glance.profile().and_then(|p| p.disk_format.clone());
        let Some(format) = wanted.filter(|f| *f != image.format) else {
            return Ok(Payload {
                path: PathBuf::from(&image.file_path),
                format: image.format.clone(),
                size: image.size_bytes,
                md5: image.md5sum.clone(),
                sha512: image.sha512sum.clone(),
                scratch: None,
            });
        };
        self.report(&self.step(format!(
            "converting the image from {} to {format} for this cloud",
            image.format
        )))
        .await?;
        let dir = &self.worker.settings.scratch_dir;
        tokio::fs::create_dir_all(dir).await.map_err(|e| {
            failed(
                format!(
                    "the scratch directory '{}' (worker.scratch_dir) cannot be made",
                    dir.display()
                ),
                e,
            )
        })?;
        let needed = virtual_size(Path::new(&image.file_path), &image.format).await?;
        let free = free_space(dir).await?;
        if needed > free {
            return Err(failed(
                format!(
                    "no room to convert image {} to {format}: it needs {} MiB in '{}' \
                     (worker.scratch_dir), which has {} MiB free",
                    image.id,
                    needed >> 20,
                    dir.display(),
                    free >> 20
                ),
                format!("{needed} bytes needed, {free} free"),
            ));
        }
        let target = dir.join(format!(
            "pimage-{}-{}.{format}",
            image.id,
            uuid::Uuid::new_v4()
        ));
        // From here the copy is the payload's: removed whatever happens next.
        let mut payload = Payload {
            path: target.clone(),
            format: format.clone(),
            size: 0,
            md5: String::new(),
            sha512: None,
            scratch: Some(target.clone()),
        };
        let convert = Command::new("qemu-img")
            .args([
                "convert",
                "-f",
                qemu_format(&image.format),
                "-O",
                qemu_format(&format),
            ])
            .arg(&image.file_path)
            .arg(&target)
            .kill_on_drop(true)
            .output();
        let out = tokio::select! {
            out = convert => out.map_err(|e| failed("could not run qemu-img to convert the image".into(), e))?,
            _ = self.cancel.cancelled() => return Err(AttemptError::Cancelled),
        };
        if !out.status.success() {
            return Err(failed(
                format!(
                    "qemu-img could not convert image {} from {} to {format}",
                    image.id, image.format
                ),
                String::from_utf8_lossy(&out.stderr).trim(),
            ));
        }
        let sums = tokio::task::spawn_blocking(move || crate::image_files::checksums(&target))
            .await
            .map_err(|e| failed("the converted image could not be read".into(), e))?
            .map_err(|e| failed("the converted image could not be read".into(), e))?;
        payload.size = sums.size as i64;
        payload.md5 = sums.md5;
        payload.sha512 = Some(sums.sha512);
        Ok(payload)
    }
}

/// The size a converted copy may take at most: the image's virtual size.
/// qemu-img's name for a Glance disk format (Glance says `vhd` for qemu's `vpc`, `ploop` for
/// `parallels`; `iso` and the Amazon formats are raw bytes to qemu).
fn qemu_format(glance: &str) -> &str {
    match glance {
        "vhd" => "vpc",
        "ploop" => "parallels",
        "iso" | "ami" | "ari" | "aki" => "raw",
        other => other,
    }
}

async fn virtual_size(path: &Path, format: &str) -> Result<u64, AttemptError> {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", "-f", qemu_format(format)])
        .arg(path)
        .output()
        .await
        .map_err(|e| failed("could not run qemu-img to read the image's size".into(), e))?;
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    info["virtual-size"].as_u64().ok_or_else(|| {
        failed(
            "qemu-img could not read the image's virtual size".into(),
            String::from_utf8_lossy(&out.stderr).trim(),
        )
    })
}

/// Free bytes in `dir` (df).
async fn free_space(dir: &Path) -> Result<u64, AttemptError> {
    let out = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(dir)
        .output()
        .await
        .map_err(|e| {
            failed(
                "could not tell the scratch directory's free space".into(),
                e,
            )
        })?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| {
            failed(
                "could not tell the scratch directory's free space".into(),
                String::from_utf8_lossy(&out.stderr).trim(),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::qemu_format;

    #[test]
    fn glance_format_names_become_qemu_img_names() {
        assert_eq!(qemu_format("vhd"), "vpc");
        assert_eq!(qemu_format("ploop"), "parallels");
        assert_eq!(qemu_format("iso"), "raw");
        assert_eq!(qemu_format("qcow2"), "qcow2");
        assert_eq!(qemu_format("vmdk"), "vmdk");
    }
}
