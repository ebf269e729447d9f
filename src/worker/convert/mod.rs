//! What goes up: the registered file, or (when the cloud's profile names another
//! `disk_format`, e.g. `raw` for Ceph) a copy converted with `qemu-img convert` into
//! `worker.scratch_dir`. Before converting, the file is inspected (`image_files::inspect`:
//! exactly its format, self-contained, its virtual size within the limit) and that size, plus
//! room for the copy's metadata, is reserved in the scratch directory (`scratch`); qemu-img
//! then runs with the format forced and nothing else to open, confined to the image and its
//! copy (`sandbox`), under CPU, memory, file and time limits. The copy and its reservation go
//! when the attempt ends.
//!
//! Landlock's network rules cover TCP only: the sandbox forbids every TCP bind and connect;
//! UDP and pathname unix sockets are not blocked by Landlock, only unreachable because
//! qemu-img is forced to the file driver (no seccomp filter yet).

mod sandbox;
mod scratch;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::process::Command;

use crate::config::WorkerSettings;
use crate::image_files::inspect::{self, Refusal};
use crate::image_files::Checksums;
use crate::store::Image;

use super::attempt::{unreadable, AttemptError};
use super::progress::Reporter;
use super::WorkerContext;

/// The bytes an attempt sends, with their size and digests.
pub(super) struct Payload {
    /// Where the bytes are (`image_store`): the registered file, or the converted copy.
    pub(super) location: String,
    pub(super) format: String,
    pub(super) size: i64,
    pub(super) md5: String,
    pub(super) sha512: Option<String>,
    /// A converted copy, removed on drop.
    scratch: Option<PathBuf>,
    /// Its room in the scratch directory, given back after the copy is removed.
    _room: Option<scratch::Reservation<'static>>,
}

impl Payload {
    /// Whether these bytes are the image's registered file itself (not a converted copy).
    pub(super) fn is_registered_file(&self, image: &Image) -> bool {
        self.location == image.file_path
    }
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

/// The registered file as it is, or converted to `wanted`, the disk format the cloud's
/// profile asks for.
pub(super) async fn payload(
    ctx: &WorkerContext<'_>,
    image: &Image,
    wanted: Option<&str>,
    progress: &Reporter<'_>,
) -> Result<Payload, AttemptError> {
    let settings = ctx.settings;
    let Some(format) = wanted.filter(|f| *f != image.format).map(str::to_string) else {
        return Ok(Payload {
            location: image.file_path.clone(),
            format: image.format.clone(),
            size: image.size_bytes,
            md5: image.md5sum.clone(),
            sha512: image.sha512sum.clone(),
            scratch: None,
            _room: None,
        });
    };
    progress
        .say(format!(
            "converting the image from {} to {format} for this cloud",
            image.format
        ))
        .await?;
    let dir = scratch_dir(&settings.scratch_dir).await?;
    // An object is copied to the scratch directory first: qemu-img reads a file.
    let _source_room = match ctx.store.is_bucket() {
        true => Some(reserve(image, &dir, image.size_bytes as u64, &image.format).await?),
        false => None,
    };
    let local = ctx
        .store
        .local_file(&image.file_path, &dir)
        .await
        .map_err(|e| unreadable(image, &e))?;
    let source = local.path.clone();
    let expanded = inspected_size(image, &source, settings).await?;
    let room = reserve(image, &dir, scratch::room_for(expanded), &format).await?;
    let target = dir.join(format!(
        "pimage-{}-{}.{format}",
        image.id,
        uuid::Uuid::new_v4()
    ));
    // From here the copy is the payload's: removed whatever happens next.
    let mut payload = Payload {
        location: target.to_string_lossy().into_owned(),
        format: format.clone(),
        size: 0,
        md5: String::new(),
        sha512: None,
        scratch: Some(target.clone()),
        _room: Some(room),
    };
    tokio::fs::File::create(&target)
        .await
        .map_err(|e| failed("the converted copy cannot be created".into(), e))?;
    let conversion = Conversion {
        image,
        source: &source,
        target: &target,
        format: &format,
    };
    run_qemu_img(&conversion, settings, progress.cancel).await?;
    let sums = checksums_unless_cancelled(target, progress.cancel).await?;
    payload.size = sums.size as i64;
    payload.md5 = sums.md5;
    payload.sha512 = Some(sums.sha512);
    Ok(payload)
}

/// One conversion: the image, its file, the copy and the copy's format.
struct Conversion<'a> {
    image: &'a Image,
    source: &'a Path,
    target: &'a Path,
    format: &'a str,
}

/// The image's virtual size, if it is safe to hand to qemu-img at all.
async fn inspected_size(
    image: &Image,
    source: &Path,
    settings: &WorkerSettings,
) -> Result<u64, AttemptError> {
    let (path, format) = (source.to_path_buf(), image.format.clone());
    let limit = settings.max_virtual_size_bytes;
    let inspected = tokio::task::spawn_blocking(move || inspect::inspect(&path, &format, limit))
        .await
        .map_err(|e| failed("the image could not be inspected".into(), e))?;
    inspected.map_err(|refusal| {
        let summary = match &refusal {
            Refusal::Unsafe(why) => format!("image {} cannot be converted: {why}", image.id),
            Refusal::Unreadable(_) => format!("image {} cannot be read to be converted", image.id),
        };
        failed(summary, refusal)
    })
}

/// Room for the expanded copy in `dir`, shared fairly with the conversions running.
async fn reserve(
    image: &Image,
    dir: &Path,
    expanded: u64,
    format: &str,
) -> Result<scratch::Reservation<'static>, AttemptError> {
    let free = free_space(dir).await?;
    scratch::LEDGER.reserve(dir, expanded, free).map_err(|no| {
        failed(
            format!(
                "no room to convert image {} to {format}: it needs {} MiB in '{}' \
                 (worker.scratch_dir), which has {} MiB free, {} MiB of it held by \
                 conversions running",
                image.id,
                expanded >> 20,
                dir.display(),
                no.free >> 20,
                no.reserved >> 20
            ),
            format!(
                "{expanded} bytes needed, {} free, {} reserved",
                no.free, no.reserved
            ),
        )
    })
}

/// qemu-img convert, confined and limited, ended on cancel and on timeout.
async fn run_qemu_img(
    conversion: &Conversion<'_>,
    settings: &WorkerSettings,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<(), AttemptError> {
    let Conversion {
        image,
        source,
        target,
        format,
    } = *conversion;
    let command = qemu_img_convert(source, &image.format, target, format, settings);
    let child = sandbox::spawn_confined(
        command,
        source,
        target,
        settings.allow_unsandboxed_conversion,
    )
    .await
    .map_err(|e| failed(format!("image {} cannot be converted: {e}", image.id), e))?;
    let limit = settings.convert_timeout;
    let out = match wait_bounded(child, limit, cancel).await {
        Ok(out) => out,
        Err(Ended::Cancelled) => return Err(AttemptError::Cancelled),
        Err(Ended::TimedOut) => {
            return Err(failed(
                format!(
                    "converting image {} took longer than {} s (worker.convert_timeout)",
                    image.id,
                    limit.as_secs()
                ),
                "qemu-img killed",
            ))
        }
        Err(Ended::Failed(e)) => {
            return Err(failed(
                "could not run qemu-img to convert the image".into(),
                e,
            ))
        }
    };
    if !out.status.success() {
        return Err(failed(
            format!(
                "qemu-img could not convert image {} from {} to {format} ({})",
                image.id, image.format, out.status
            ),
            String::from_utf8_lossy(&out.stderr).trim(),
        ));
    }
    Ok(())
}

/// Sets its flag when dropped: the blocking hash stops when its attempt ends, however it ends.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The converted copy's checksums; on cancel the hashing thread is stopped (within one
/// chunk) and awaited, so a cancelled ticket leaves no thread reading its copy.
async fn checksums_unless_cancelled(
    target: PathBuf,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<Checksums, AttemptError> {
    let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
    let flag = stop.0.clone();
    let mut hashing = tokio::task::spawn_blocking(move || {
        crate::image_files::checksums_unless_stopped(&target, &flag)
    });
    let unreadable = |e: &dyn std::fmt::Display| {
        failed(
            "the converted image could not be read".into(),
            e.to_string(),
        )
    };
    tokio::select! {
        sums = &mut hashing => sums.map_err(|e| unreadable(&e))?.map_err(|e| unreadable(&e)),
        _ = cancel.cancelled() => {
            drop(stop);
            let _ = hashing.await;
            Err(AttemptError::Cancelled)
        }
    }
}

/// Why a child ended without its output.
#[derive(Debug)]
enum Ended {
    Cancelled,
    TimedOut,
    Failed(std::io::Error),
}

/// The child's output, unless it runs past `limit` or `cancel` comes first: then it is
/// killed (a `kill_on_drop` child is killed when dropped).
async fn wait_bounded(
    child: tokio::process::Child,
    limit: Duration,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<std::process::Output, Ended> {
    tokio::select! {
        out = tokio::time::timeout(limit, child.wait_with_output()) => match out {
            Ok(out) => out.map_err(Ended::Failed),
            Err(_) => Err(Ended::TimedOut),
        },
        _ = cancel.cancelled() => Err(Ended::Cancelled),
    }
}

/// `prlimit` setting the conversion's CPU seconds, address space and open files (and no core
/// dump) for the program that follows, which gets no environment but PATH (no secret of the
/// worker), no stdin, and is killed when dropped.
fn limited(settings: &WorkerSettings) -> Command {
    let mut command = Command::new("prlimit");
    command
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .arg(format!("--cpu={}", settings.convert_cpu.as_secs().max(1)))
        .arg(format!("--as={}", settings.convert_memory_bytes))
        .arg(format!("--nofile={}", settings.convert_max_open_files))
        .args(["--core=0", "--"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Limited `qemu-img convert` reading `source` as exactly `from` (no probing, no backing
/// file, only the local file named).
fn qemu_img_convert(
    source: &Path,
    from: &str,
    target: &Path,
    to: &str,
    settings: &WorkerSettings,
) -> Command {
    let mut command = limited(settings);
    command
        .args(["qemu-img", "convert", "-U", "-O", qemu_format(to)])
        .arg("--image-opts")
        .arg(image_opts(source, from))
        .arg(target);
    command
}

/// qemu's options naming the source: its driver (the format, forced) over the plain file,
/// and for formats that can have one, no backing file at all.
fn image_opts(source: &Path, format: &str) -> String {
    // In qemu's option syntax a comma inside a value is written twice.
    let file = source.to_string_lossy().replace(',', ",,");
    let driver = qemu_format(format);
    let no_backing = if matches!(driver, "qcow2" | "vmdk") {
        ",backing="
    } else {
        ""
    };
    format!("driver={driver},file.driver=file,file.filename={file}{no_backing}")
}

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

/// The scratch directory, made if missing, as an absolute path (qemu reads `x:` as a protocol).
async fn scratch_dir(dir: &Path) -> Result<PathBuf, AttemptError> {
    let cannot = |e: std::io::Error| {
        failed(
            format!(
                "the scratch directory '{}' (worker.scratch_dir) cannot be made",
                dir.display()
            ),
            e,
        )
    };
    tokio::fs::create_dir_all(dir).await.map_err(cannot)?;
    tokio::fs::canonicalize(dir).await.map_err(cannot)
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
    use super::*;

    #[test]
    fn glance_format_names_become_qemu_img_names() {
        assert_eq!(qemu_format("vhd"), "vpc");
        assert_eq!(qemu_format("ploop"), "parallels");
        assert_eq!(qemu_format("iso"), "raw");
        assert_eq!(qemu_format("qcow2"), "qcow2");
        assert_eq!(qemu_format("vmdk"), "vmdk");
    }

    #[tokio::test]
    async fn qemu_img_converts_in_the_sandbox() {
        let dir = std::env::temp_dir().join(format!("pimage-convert-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("scratch")).unwrap();
        let (source, target) = (dir.join("disk.qcow2"), dir.join("scratch/disk.raw"));
        let made = std::process::Command::new("qemu-img")
            .args(["create", "-f", "qcow2"])
            .arg(&source)
            .arg("1M")
            .status()
            .unwrap();
        assert!(made.success());
        std::fs::write(&target, b"").unwrap();
        let command = qemu_img_convert(&source, "qcow2", &target, "raw", &test_settings());
        let child = sandbox::spawn_confined(command, &source, &target, false)
            .await
            .unwrap();
        let out = child.wait_with_output().await.unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(std::fs::metadata(&target).unwrap().len(), 1 << 20);
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn test_settings() -> WorkerSettings {
        crate::config::Settings::load(Path::new("config"))
            .unwrap()
            .worker
    }

    #[tokio::test]
    async fn the_limits_apply_to_the_program_run() {
        let mut settings = test_settings();
        settings.convert_cpu = Duration::from_secs(7);
        settings.convert_memory_bytes = 512 << 20;
        settings.convert_max_open_files = 33;
        let mut command = limited(&settings);
        command.args([
            "sh",
            "-c",
            "ulimit -t; ulimit -v; ulimit -n; ulimit -c; env",
        ]);
        let out = command.output().await.unwrap();
        let printed = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = printed.lines().filter(|l| !l.starts_with("PWD=")).collect();
        assert_eq!(
            lines,
            [
                "7",
                "524288",
                "33",
                "0",
                "PATH=/usr/sbin:/usr/bin:/sbin:/bin"
            ],
            "CPU seconds, KiB, files, no core; no variable of the worker"
        );
    }

    #[tokio::test]
    async fn a_child_past_its_time_or_cancelled_is_killed() {
        let settings = test_settings();
        let never = tokio_util::sync::CancellationToken::new();
        let sleeper = || limited(&settings).args(["sleep", "30"]).spawn().unwrap();
        let started = std::time::Instant::now();
        let child = sleeper();
        let pid = child.id().unwrap();
        let ended = wait_bounded(child, Duration::from_millis(300), &never).await;
        assert!(matches!(ended, Err(Ended::TimedOut)), "{ended:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            state.is_empty() || state.contains(") Z "),
            "the child is killed: {state}"
        );
        let cancel = tokio_util::sync::CancellationToken::new();
        cancel.cancel();
        let ended = wait_bounded(sleeper(), Duration::from_secs(60), &cancel).await;
        assert!(matches!(ended, Err(Ended::Cancelled)), "{ended:?}");
    }

    #[test]
    fn the_source_is_opened_as_its_format_over_the_local_file_only() {
        assert_eq!(
            image_opts(Path::new("/images/a,b.qcow2"), "qcow2"),
            "driver=qcow2,file.driver=file,file.filename=/images/a,,b.qcow2,backing="
        );
        assert_eq!(
            image_opts(Path::new("/images/d.vhd"), "vhd"),
            "driver=vpc,file.driver=file,file.filename=/images/d.vhd"
        );
    }

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pimage-convert-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn qemu_img(args: &[&str]) {
        let out = std::process::Command::new("qemu-img")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }

    #[tokio::test]
    async fn a_cancelled_checksum_of_a_large_copy_stops_promptly() {
        let dir = temp_dir();
        let sparse = dir.join("big.raw");
        let file = std::fs::File::create(&sparse).unwrap();
        file.set_len(64 << 30).unwrap(); // minutes of hashing
        let cancel = tokio_util::sync::CancellationToken::new();
        let canceller = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            canceller.cancel();
        });
        let started = std::time::Instant::now();
        let ended = tokio::time::timeout(
            Duration::from_secs(10),
            checksums_unless_cancelled(sparse, &cancel),
        )
        .await
        .expect("the hashing thread stops within seconds of the cancel");
        assert!(matches!(ended, Err(AttemptError::Cancelled)));
        assert!(started.elapsed() < Duration::from_secs(10));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn copies_in_each_format_fit_the_room_reserved() {
        let dir = temp_dir();
        let raw = dir.join("disk.raw");
        let bytes: Vec<u8> = (0..8u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(&raw, bytes).unwrap();
        for format in ["qcow2", "vmdk", "vhd", "vhdx", "vdi"] {
            let copy = dir.join(format!("copy.{format}"));
            let (r, c) = (raw.to_str().unwrap(), copy.to_str().unwrap());
            qemu_img(&["convert", "-f", "raw", "-O", qemu_format(format), r, c]);
            let used = std::fs::metadata(&copy).unwrap().len();
            assert!(used <= scratch::room_for(8 << 20), "{format}: {used}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Runs the sandboxed conversion of `source` (a qcow2) to raw, skipping the inspector.
    async fn convert_unchecked(source: &Path, target: &Path) -> std::process::Output {
        std::fs::write(target, b"").unwrap();
        let command = qemu_img_convert(source, "qcow2", target, "raw", &test_settings());
        let child = sandbox::spawn_confined(command, source, target, false)
            .await
            .unwrap();
        child.wait_with_output().await.unwrap()
    }

    #[tokio::test]
    async fn the_sandboxed_conversion_alone_reads_no_backing_file() {
        let dir = temp_dir();
        let (source, target) = (dir.join("b.qcow2"), dir.join("b.raw"));
        let s = source.to_str().unwrap();
        qemu_img(&[
            "create",
            "-f",
            "qcow2",
            "-b",
            "/etc/passwd",
            "-F",
            "raw",
            s,
            "1M",
        ]);
        let out = convert_unchecked(&source, &target).await;
        assert!(out.status.success(), "{out:?}");
        let copied = std::fs::read(&target).unwrap();
        assert_eq!(copied.len(), 1 << 20);
        let passwd = std::fs::read("/etc/passwd").unwrap();
        assert!(!copied.windows(16).any(|w| w == &passwd[..16]));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn the_sandboxed_conversion_alone_opens_no_nbd_connection() {
        let dir = temp_dir();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let nbd = format!("nbd://{}", listener.local_addr().unwrap());
        let (source, target) = (dir.join("n.qcow2"), dir.join("n.raw"));
        let s = source.to_str().unwrap();
        // -u: the backing is not opened to create the file.
        qemu_img(&[
            "create", "-f", "qcow2", "-u", "-b", &nbd, "-F", "raw", s, "1M",
        ]);
        let out = convert_unchecked(&source, &target).await;
        assert!(out.status.success(), "{out:?}");
        listener.set_nonblocking(true).unwrap();
        let connections = std::iter::from_fn(|| listener.accept().ok()).count();
        assert_eq!(connections, 0, "qemu-img connected to {nbd}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
