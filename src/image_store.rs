//! Where image files are kept (`storage.url`): a directory (shared by every host that runs a
//! worker), or a bucket of an S3-compatible server, through `object_store`.
//!
//! A registered image's `file_path` is its location: an absolute path, or `s3://bucket/key`.
//! Its bytes are read as a stream of chunks: a local file in 1 MiB reads on the blocking pool,
//! an object in ranged GETs of `RANGE` bytes, one after the other. So nothing is copied to
//! local disk (but for a conversion's scratch copy), and an upload that a slow cloud holds
//! back keeps no request to the store open for longer than one range.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore};
use tokio::io::AsyncWriteExt;

use crate::config::StorageSettings;
use crate::image_files::{Checksums, Digests};

/// Bytes one GET reads from an object store.
const RANGE: u64 = 64 << 20;
/// Bytes one read takes from a local file: 1 MiB reads cost a quarter of the syscalls and
/// wake-ups of 256 KiB ones (docs/BENCHMARKS.md), and memory stays flat whatever the size.
const FILE_CHUNK: usize = 1 << 20;
/// Local reads ahead of the consumer, so the disk and the network overlap.
const READ_AHEAD: usize = 2;
/// Bytes one part of a multipart put holds (S3's parts are 5 MiB at least).
const PART: usize = 16 << 20;
const S3_SCHEME: &str = "s3://";

/// An image file's bytes, in order.
pub type Chunks = BoxStream<'static, std::io::Result<Bytes>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage.url {0}")]
    Setting(String),
    #[error("{location} is in bucket '{bucket}', which is not this store's (storage.url)")]
    Foreign { location: String, bucket: String },
    #[error("{location}: {source}")]
    Object {
        location: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{location}: {source}")]
    File {
        location: String,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// The file or object is not there (as opposed to a store that failed to answer).
    pub fn is_missing(&self) -> bool {
        match self {
            StoreError::Object { source, .. } => {
                matches!(source, object_store::Error::NotFound { .. })
            }
            StoreError::File { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
            StoreError::Setting(_) | StoreError::Foreign { .. } => false,
        }
    }
}

/// Where a registered image's bytes are.
#[derive(Debug, PartialEq, Eq)]
pub enum Location<'a> {
    File(&'a Path),
    Object { bucket: &'a str, key: &'a str },
}

impl<'a> Location<'a> {
    /// `file_path` as stored: `s3://bucket/key`, or a path.
    pub fn of(file_path: &'a str) -> Location<'a> {
        match file_path.strip_prefix(S3_SCHEME) {
            Some(rest) => {
                let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
                Location::Object { bucket, key }
            }
            None => Location::File(Path::new(file_path)),
        }
    }
}

/// The image store of `storage.url`: cheap to clone, one per process.
#[derive(Clone)]
pub struct ImageStore {
    kind: Arc<Kind>,
}

enum Kind {
    Directory(PathBuf),
    Bucket {
        name: String,
        prefix: String,
        store: Arc<dyn ObjectStore>,
    },
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl ImageStore {
    /// The store `settings` name; an `s3://` store is only configured here (no call is made).
    pub fn new(settings: &StorageSettings) -> Result<ImageStore, StoreError> {
        let kind = match settings.url.strip_prefix(S3_SCHEME) {
            Some(rest) => bucket(rest, settings)?,
            None => {
                let dir = settings
                    .url
                    .strip_prefix("file://")
                    .unwrap_or(&settings.url);
                if dir.is_empty() || dir.contains("://") {
                    return Err(StoreError::Setting(format!(
                        "'{}': use a directory, file:///path or s3://bucket[/prefix]",
                        settings.url
                    )));
                }
                Kind::Directory(PathBuf::from(dir))
            }
        };
        Ok(ImageStore {
            kind: Arc::new(kind),
        })
    }

    /// The store in words, for logs and errors (no credential).
    pub fn describe(&self) -> String {
        match &*self.kind {
            Kind::Directory(dir) => format!("directory {}", dir.display()),
            Kind::Bucket { name, prefix, .. } => format!("{S3_SCHEME}{name}/{prefix}"),
        }
    }

    /// Whether images live in an object store (a conversion then copies its source first).
    pub fn is_bucket(&self) -> bool {
        matches!(&*self.kind, Kind::Bucket { .. })
    }

    /// Puts the local file `source` into the store as a new image file named after
    /// `file_name`, and returns its location.
    pub async fn put(&self, source: &Path, file_name: &str) -> Result<String, StoreError> {
        let unique = format!("{}-{file_name}", uuid::Uuid::new_v4());
        match &*self.kind {
            Kind::Directory(dir) => copy_into(dir, source, &unique).await,
            Kind::Bucket {
                name,
                prefix,
                store,
            } => {
                let key = format!("{prefix}{unique}");
                let location = format!("{S3_SCHEME}{name}/{key}");
                put_object(store.clone(), &key, source)
                    .await
                    .map_err(|e| match e {
                        PutError::Read(e) => file_error(&source.display().to_string(), e),
                        PutError::Store(e) => object_error(&location, e),
                    })?;
                Ok(location)
            }
        }
    }

    /// The size of the file or object at `location`; an error when it is not there.
    pub async fn size(&self, location: &str) -> Result<u64, StoreError> {
        match Location::of(location) {
            Location::File(path) => tokio::fs::metadata(path)
                .await
                .map(|m| m.len())
                .map_err(|source| file_error(location, source)),
            Location::Object { bucket, key } => {
                let store = self.bucket_of(location, bucket)?;
                let meta = store
                    .head(&ObjectPath::from(key))
                    .await
                    .map_err(|source| object_error(location, source))?;
                Ok(meta.size)
            }
        }
    }

    /// The bytes at `location`, in order, and how many there are.
    pub async fn chunks(&self, location: &str) -> Result<(u64, Chunks), StoreError> {
        match Location::of(location) {
            Location::File(path) => {
                let file = std::fs::File::open(path).map_err(|e| file_error(location, e))?;
                let size = file.metadata().map_err(|e| file_error(location, e))?.len();
                // Read from the first poll on: an attempt opens the file before it logs in
                // (a missing file fails at once) and may end without reading it.
                let lazy = futures::stream::once(async move { file_chunks(file) }).flatten();
                Ok((size, lazy.boxed()))
            }
            Location::Object { bucket, key } => {
                let store = self.bucket_of(location, bucket)?.clone();
                let size = self.size(location).await?;
                Ok((size, object_chunks(store, ObjectPath::from(key), size)))
            }
        }
    }

    /// A local file holding `location`'s bytes: the file itself, or a copy made in `dir`
    /// (removed when the returned value drops), for what must read a file (qemu-img, the
    /// format inspector).
    pub async fn local_file(&self, location: &str, dir: &Path) -> Result<LocalFile, StoreError> {
        if let Location::File(path) = Location::of(location) {
            return Ok(LocalFile {
                path: path.to_path_buf(),
                copy: false,
            });
        }
        let copy = LocalFile {
            path: dir.join(format!("pimage-source-{}", uuid::Uuid::new_v4())),
            copy: true,
        };
        let (_, mut chunks) = self.chunks(location).await?;
        let mut out = tokio::fs::File::create(&copy.path)
            .await
            .map_err(|e| file_error(&copy.path.display().to_string(), e))?;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| file_error(location, e))?;
            out.write_all(&chunk)
                .await
                .map_err(|e| file_error(&copy.path.display().to_string(), e))?;
        }
        out.flush()
            .await
            .map_err(|e| file_error(&copy.path.display().to_string(), e))?;
        Ok(copy)
    }

    /// The checksums of the bytes at `location`, read again (hashed on the blocking pool).
    pub async fn checksums(&self, location: &str) -> Result<Checksums, StoreError> {
        let (_, mut chunks) = self.chunks(location).await?;
        let mut digests = Digests::default();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| file_error(location, e))?;
            digests = tokio::task::spawn_blocking(move || {
                digests.update(&chunk);
                digests
            })
            .await
            .map_err(|e| file_error(location, std::io::Error::other(e)))?;
        }
        Ok(digests.finish())
    }

    fn bucket_of(&self, location: &str, bucket: &str) -> Result<&Arc<dyn ObjectStore>, StoreError> {
        match &*self.kind {
            Kind::Bucket { name, store, .. } if name == bucket => Ok(store),
            _ => Err(StoreError::Foreign {
                location: location.to_string(),
                bucket: bucket.to_string(),
            }),
        }
    }
}

/// A local file to read an image from; a copy is removed on drop.
#[derive(Debug)]
pub struct LocalFile {
    pub path: PathBuf,
    copy: bool,
}

impl Drop for LocalFile {
    fn drop(&mut self) {
        if self.copy {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn bucket(rest: &str, settings: &StorageSettings) -> Result<Kind, StoreError> {
    let (name, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if name.is_empty() {
        return Err(StoreError::Setting(format!(
            "'{}' names no bucket: s3://bucket[/prefix]",
            settings.url
        )));
    }
    let prefix = match prefix.trim_matches('/') {
        "" => String::new(),
        p => format!("{p}/"),
    };
    let s3 = &settings.s3;
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(name)
        .with_region(&s3.region)
        .with_access_key_id(&s3.access_key_id)
        .with_secret_access_key(s3.secret_access_key.expose())
        .with_allow_http(s3.allow_http);
    if !s3.endpoint.is_empty() {
        builder = builder.with_endpoint(&s3.endpoint);
    }
    let store = builder
        .build()
        .map_err(|e| StoreError::Setting(format!("'{}': {e}", settings.url)))?;
    Ok(Kind::Bucket {
        name: name.to_string(),
        prefix,
        store: Arc::new(store),
    })
}

async fn copy_into(dir: &Path, source: &Path, unique: &str) -> Result<String, StoreError> {
    let (dir, source) = (dir.to_path_buf(), source.to_path_buf());
    let unique = unique.to_string();
    let copied = tokio::task::spawn_blocking(move || -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(&dir)?;
        let target = std::fs::canonicalize(&dir)?.join(unique);
        std::fs::copy(&source, &target)?;
        Ok(target)
    })
    .await
    .map_err(std::io::Error::other)
    .and_then(|r| r);
    copied
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|source| StoreError::File {
            location: "storage.url".into(),
            source,
        })
}

enum PutError {
    Read(std::io::Error),
    Store(object_store::Error),
}

/// A multipart put (parts of `PART` bytes) of the local file `source`; aborted on error.
async fn put_object(store: Arc<dyn ObjectStore>, key: &str, source: &Path) -> Result<(), PutError> {
    let file = std::fs::File::open(source).map_err(PutError::Read)?;
    let mut chunks = file_chunks(file);
    // At most 4 parts in flight: 64 MiB of memory, whatever the file's size.
    let mut writer =
        BufWriter::with_capacity(store, ObjectPath::from(key), PART).with_max_concurrency(4);
    while let Some(chunk) = chunks.next().await {
        let written = match chunk {
            Ok(bytes) => writer.put(bytes).await.map_err(PutError::Store),
            Err(e) => Err(PutError::Read(e)),
        };
        if let Err(e) = written {
            let _ = writer.abort().await;
            return Err(e);
        }
    }
    writer.shutdown().await.map_err(|e| {
        PutError::Store(object_store::Error::Generic {
            store: "S3",
            source: Box::new(e),
        })
    })
}

/// A local file's bytes. One blocking thread reads it straight into each chunk's own buffer
/// (no zeroing, no copy between buffers: tokio's `File` reads into a buffer of its own and
/// copies out, one thread hop per read); dropping the stream ends it at its next chunk.
fn file_chunks(file: std::fs::File) -> Chunks {
    let (chunks, receiver) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(READ_AHEAD);
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        loop {
            let mut buffer = Vec::with_capacity(FILE_CHUNK);
            let chunk = match (&file).take(FILE_CHUNK as u64).read_to_end(&mut buffer) {
                Ok(0) => return,
                Ok(_) => Ok(Bytes::from(buffer)),
                Err(e) => Err(e),
            };
            let failed = chunk.is_err();
            if chunks.blocking_send(chunk).is_err() || failed {
                return;
            }
        }
    });
    tokio_stream_of(receiver)
}

fn tokio_stream_of(mut receiver: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>) -> Chunks {
    futures::stream::poll_fn(move |cx| receiver.poll_recv(cx)).boxed()
}

/// An object's bytes: one ranged GET after the other, each started when the last ended.
fn object_chunks(store: Arc<dyn ObjectStore>, key: ObjectPath, size: u64) -> Chunks {
    let starts = (0..size).step_by(RANGE as usize);
    futures::stream::iter(starts)
        .then(move |start| {
            let (store, key) = (store.clone(), key.clone());
            async move {
                let options = GetOptions {
                    range: Some(GetRange::Bounded(start..(start + RANGE).min(size))),
                    ..GetOptions::default()
                };
                let got = store.get_opts(&key, options).await?;
                Ok::<_, object_store::Error>(got.into_stream())
            }
        })
        .try_flatten()
        .map_err(std::io::Error::other)
        .boxed()
}

fn file_error(location: &str, source: std::io::Error) -> StoreError {
    StoreError::File {
        location: location.to_string(),
        source,
    }
}

fn object_error(location: &str, source: object_store::Error) -> StoreError {
    StoreError::Object {
        location: location.to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_location_is_an_object_or_a_path() {
        assert_eq!(
            Location::of("s3://images/a/b.qcow2"),
            Location::Object {
                bucket: "images",
                key: "a/b.qcow2"
            }
        );
        assert_eq!(
            Location::of("/var/lib/pimage/images/x.raw"),
            Location::File(Path::new("/var/lib/pimage/images/x.raw"))
        );
    }
}
