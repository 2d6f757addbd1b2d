//! The remote: boot images shared between nodes through an object store
//! that clouds already run (S3: AWS, Ceph's RADOS Gateway; or a directory).
//! docs/remote.md specifies the layout and the protocol:
//!
//! - `yolo-remote.json`: layout version and the chunking every node must use.
//! - `packs/<2 hex>/<64 hex>`: chunks' stored values end to end, a few MiB,
//!   named by the BLAKE3 of the pack's bytes; created, never replaced.
//! - `index/<64 hex>`: which pack holds which chunk; immutable, merged on
//!   read, cached by nodes (they are named by their hash).
//! - `manifests/<name>/<64 hex>`: a VMI's manifest, its chunks referenced by
//!   pack and position, named by the BLAKE3 of the full manifest's bytes;
//!   the newest version of a name is the VMI's boot image.
//! - `locks/<kind>-<id>`: who is pushing, pulling or collecting now.
//!
//! Order alone makes it consistent: packs before the index that lists
//! them, the index before the manifests that reference it (layout.rs).

mod fault;
mod gc;
mod layout;
mod lock;
mod pull;
mod push;
mod tier;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{
    ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
};
use serde::{Deserialize, Serialize};

use crate::chunking::Chunking;
use crate::id::{ChunkId, ManifestHash};
use crate::store::StoreConfig;
use crate::{Error, Result};
use layout::{Index, PackId};

pub use fault::{ObjectDefect, RemoteFault};
pub use gc::{remote_gc, RemoteGcPlan, RemoteGcReport};
pub use pull::{pull, PullFailure, PullReport};
pub use push::{push, PushReport};
pub use tier::{RemoteTier, RemoteTierStats, Stored, DOWN_FOR};

const LAYOUT: u32 = 2;
const CONFIG_KEY: &str = "yolo-remote.json";

/// How to reach a remote. Credentials are not here: they come from the
/// usual `AWS_*` environment variables (or an instance role), and are never
/// printed.
#[derive(Clone)]
pub struct RemoteOptions {
    /// S3 endpoint, e.g. `http://127.0.0.1:7480` for a local radosgw
    /// (default: `AWS_ENDPOINT`, else AWS itself).
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Called with (bytes moved so far, bytes to move in all).
    pub progress: Option<Arc<dyn Fn(u64, u64) + Send + Sync>>,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            endpoint: None,
            region: None,
            concurrency: 32,
            progress: None,
        }
    }
}

/// What the remote records about itself; the first push writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteConfig {
    pub layout: u32,
    pub chunking: Chunking,
    pub fastcdc_version: String,
}

impl RemoteConfig {
    fn of(store: &StoreConfig) -> Self {
        RemoteConfig {
            layout: LAYOUT,
            chunking: store.chunking,
            fastcdc_version: store.fastcdc_version.clone(),
        }
    }

    /// A new local store made to pull from this remote.
    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            chunking: self.chunking,
            fastcdc_version: self.fastcdc_version.clone(),
            ..StoreConfig::default()
        }
    }
}

/// Whether `url` carries `user[:password]@` before its host.
fn has_userinfo(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or("");
    authority.contains('@')
}

/// `url` with any `user[:password]@` before its host replaced by `***@`.
fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            match authority.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://***@{host}{path}"),
                None => url.to_string(),
            }
        }
        None => url.to_string(),
    }
}

/// A connection to one remote (a bucket and prefix, or a directory).
pub struct Remote {
    objects: Arc<dyn ObjectStore>,
    root: String,
    url: String,
    options: RemoteOptions,
    runtime: tokio::runtime::Runtime,
}

impl Remote {
    /// Opens `s3://BUCKET[/PREFIX]` or `file:///DIR`. Nothing is sent yet.
    pub fn open(url: &str, options: RemoteOptions) -> Result<Self> {
        let bad = |fault: RemoteFault| Error::Remote {
            remote: redact(url),
            fault: Box::new(fault),
        };
        // Credentials in a URL end up in shells' histories, process lists
        // and our messages: refuse them, and never print them.
        let endpoint_has_credentials = options.endpoint.as_deref().is_some_and(has_userinfo);
        if has_userinfo(url) || endpoint_has_credentials {
            return Err(bad(RemoteFault::CredentialsInUrl));
        }
        let (objects, root): (Arc<dyn ObjectStore>, String) =
            if let Some(rest) = url.strip_prefix("s3://") {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(bad(RemoteFault::NoBucket));
                }
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(RetryConfig {
                        max_retries: 8,
                        retry_timeout: Duration::from_secs(120),
                        ..RetryConfig::default()
                    });
                let endpoint = options
                    .endpoint
                    .clone()
                    .or_else(|| std::env::var("AWS_ENDPOINT").ok());
                if let Some(endpoint) = endpoint {
                    // A plain-HTTP endpoint is a local gateway the user named.
                    builder = builder
                        .with_allow_http(endpoint.starts_with("http://"))
                        .with_endpoint(endpoint);
                }
                if let Some(region) = &options.region {
                    builder = builder.with_region(region);
                }
                let s3 = builder.build().map_err(|e| bad(RemoteFault::Client(e)))?;
                (Arc::new(s3), prefix.trim_matches('/').to_string())
            } else if let Some(dir) = url.strip_prefix("file://") {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
                let local = LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| bad(RemoteFault::Client(e)))?;
                (Arc::new(local), String::new())
            } else {
                return Err(bad(RemoteFault::NotARemoteUrl));
            };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| bad(RemoteFault::Runtime(e)))?;
        Ok(Remote {
            objects,
            root,
            url: url.to_string(),
            options,
            runtime,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn error(&self, fault: RemoteFault) -> Error {
        Error::Remote {
            remote: self.url.clone(),
            fault: Box::new(fault),
        }
    }

    fn path(&self, key: &str) -> ObjectPath {
        if self.root.is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{}/{key}", self.root))
        }
    }

    /// A key relative to the remote's root.
    fn key_of(&self, path: &ObjectPath) -> String {
        let full = path.as_ref();
        if self.root.is_empty() {
            full.to_string()
        } else {
            full.strip_prefix(&self.root)
                .map(|k| k.trim_start_matches('/'))
                .unwrap_or(full)
                .to_string()
        }
    }

    fn report_progress(&self, done: u64, total: u64) {
        if let Some(progress) = &self.options.progress {
            progress(done, total);
        }
    }

    /// The remote's config, or `None` when nothing was pushed to it yet.
    pub fn config(&self) -> Result<Option<RemoteConfig>> {
        let Some(bytes) = self.runtime.block_on(self.get_if_exists(CONFIG_KEY))? else {
            return Ok(None);
        };
        let config: RemoteConfig = serde_json::from_slice(&bytes)
            .map_err(|e| self.error(RemoteFault::ConfigUnreadable(e)))?;
        if config.layout == 1 {
            // Layout 1 keeps a chunk per object and needs the full listing
            // that layout 2 exists to avoid; its manifests cannot be read
            // without it. Migrating is one push from a node that holds the
            // images, so this build refuses it rather than keep both.
            return Err(self.error(RemoteFault::Layout1));
        }
        if config.layout != LAYOUT {
            return Err(self.error(RemoteFault::UnknownLayout(config.layout)));
        }
        Ok(Some(config))
    }

    /// Checks that `store` chunks the way the remote does (they would not
    /// deduplicate otherwise), writing the remote's config if it has none.
    fn agree_on_config(&self, store: &StoreConfig, create: bool) -> Result<RemoteConfig> {
        let ours = RemoteConfig::of(store);
        let theirs = match self.config()? {
            Some(config) => config,
            None if create => {
                let json = serde_json::to_vec_pretty(&ours)
                    .map_err(|e| self.error(RemoteFault::ConfigEncoding(e)))?;
                self.runtime
                    .block_on(self.put_create(CONFIG_KEY, json.into()))?;
                // Another node may have created it first: read it back.
                self.config()?
                    .ok_or_else(|| self.error(RemoteFault::ConfigVanished))?
            }
            None => return Err(self.error(RemoteFault::NeverPushed)),
        };
        if theirs.chunking != ours.chunking || theirs.fastcdc_version != ours.fastcdc_version {
            return Err(self.error(RemoteFault::ChunkingMismatch {
                theirs: theirs.chunking,
                theirs_fastcdc: theirs.fastcdc_version,
                ours: ours.chunking,
                ours_fastcdc: ours.fastcdc_version,
            }));
        }
        Ok(theirs)
    }

    async fn get_if_exists(&self, key: &str) -> Result<Option<bytes::Bytes>> {
        match self.objects.get(&self.path(key)).await {
            Ok(result) => Ok(Some(
                result
                    .bytes()
                    .await
                    .map_err(|e| self.error(RemoteFault::Request(e)))?,
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(RemoteFault::Request(e))),
        }
    }

    async fn get(&self, key: &str) -> Result<bytes::Bytes> {
        let result = self
            .objects
            .get(&self.path(key))
            .await
            .map_err(|e| self.error(RemoteFault::Request(e)))?;
        result
            .bytes()
            .await
            .map_err(|e| self.error(RemoteFault::Request(e)))
    }

    /// Creates `key` unless it exists; `Ok(false)` when it already did.
    async fn put_create(&self, key: &str, payload: PutPayload) -> Result<bool> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self.objects.put_opts(&self.path(key), payload, opts).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(self.error(RemoteFault::Request(e))),
        }
    }

    async fn put_overwrite(&self, key: &str, payload: PutPayload) -> Result<()> {
        self.objects
            .put(&self.path(key), payload)
            .await
            .map(|_| ())
            .map_err(|e| self.error(RemoteFault::Request(e)))
    }

    async fn delete(&self, key: &str) -> Result<()> {
        match self.objects.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(RemoteFault::Request(e))),
        }
    }

    /// Every object under `prefix`, with keys relative to the root.
    async fn list(&self, prefix: &str) -> Result<Vec<(String, ObjectMeta)>> {
        let metas: Vec<ObjectMeta> = self
            .objects
            .list(Some(&self.path(prefix)))
            .try_collect()
            .await
            .map_err(|e| self.error(RemoteFault::Request(e)))?;
        Ok(metas
            .into_iter()
            .map(|meta| (self.key_of(&meta.location), meta))
            .collect())
    }

    /// The remote's index: every index object, merged. Index objects are
    /// immutable and named by their hash, so those in `cache` (a directory
    /// of the local store) are read from disk, checked against their name;
    /// only new ones cross the network, and are kept there for next time.
    ///
    /// `strict` (gc) fails on any index object that does not hash to its
    /// name or decode; otherwise (push, pull) such an object is left out
    /// and returned with why: pull then refuses only the VMIs whose packs
    /// no other index object lists, and push re-sends their chunks.
    async fn load_index(
        &self,
        cache: Option<&std::path::Path>,
        max_raw: u32,
        strict: bool,
    ) -> Result<(Index, u64, Vec<(String, ObjectDefect)>)> {
        let listed = self.list("index/").await?;
        let keys: Vec<(String, IndexHash)> = listed
            .into_iter()
            .filter_map(|(key, _)| {
                let hash = key.strip_prefix("index/")?.parse::<ChunkId>().ok()?;
                Some((key, hash.0))
            })
            .collect();
        if let Some(dir) = cache {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            // Index objects gc replaced are gone from the listing: forget them.
            let listed: std::collections::HashSet<String> =
                keys.iter().map(|(_, h)| hex32(h)).collect();
            if let Ok(entries) = std::fs::read_dir(dir) {
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if !listed.contains(&name) {
                        let _ = std::fs::remove_file(entry.path());
                    }
                }
            }
        }
        type Got = std::result::Result<bytes::Bytes, ObjectDefect>;
        let fetched: Vec<(String, Got, bool)> = futures::stream::iter(keys)
            .map(|(key, hash)| async move {
                let cached = cache.and_then(|dir| std::fs::read(dir.join(hex32(&hash))).ok());
                if let Some(bytes) = cached.filter(|b| blake3::hash(b).as_bytes() == &hash) {
                    return Ok::<_, Error>((key, Ok(bytes::Bytes::from(bytes)), false));
                }
                let bytes = self.get(&key).await?;
                if blake3::hash(&bytes).as_bytes() != &hash {
                    return Ok((key, Err(ObjectDefect::NotItsName), true));
                }
                Ok((key, Ok(bytes), true))
            })
            .buffer_unordered(self.options.concurrency)
            .try_collect()
            .await?;
        let mut index = Index::default();
        let mut moved = 0u64;
        let mut refused = Vec::new();
        for (key, bytes, fresh) in fetched {
            let decoded = bytes.and_then(|b| match layout::decode_index(&b, max_raw) {
                Ok(packs) => Ok((b, packs)),
                Err(e) => Err(ObjectDefect::Format(e)),
            });
            let (bytes, packs) = match decoded {
                Ok(decoded) => decoded,
                Err(defect) if strict => {
                    return Err(self.error(RemoteFault::Object { key, defect }))
                }
                Err(why) => {
                    refused.push((key, why));
                    continue;
                }
            };
            if fresh {
                moved += bytes.len() as u64;
                if let (Some(dir), Some(hex)) = (cache, key.strip_prefix("index/")) {
                    // A cache that cannot be written only costs a download.
                    let tmp = dir.join(format!(".{hex}.tmp"));
                    if std::fs::write(&tmp, &bytes).is_ok() {
                        let _ = std::fs::rename(&tmp, dir.join(hex));
                    }
                }
            }
            for pack in packs {
                index.add(pack);
            }
            index.objects.push(key);
        }
        Ok((index, moved, refused))
    }

    /// Every pack object, with when it was written and its size.
    async fn list_packs(&self) -> Result<HashMap<PackId, (SystemTime, u64)>> {
        Ok(self
            .list("packs/")
            .await?
            .into_iter()
            .filter_map(|(key, meta)| {
                Some((
                    PackId::of_key(&key)?,
                    (meta.last_modified.into(), meta.size),
                ))
            })
            .collect())
    }

    /// Every manifest version on the remote.
    async fn list_manifests(&self) -> Result<Vec<ManifestVersion>> {
        Ok(self
            .list("manifests/")
            .await?
            .into_iter()
            .filter_map(|(key, meta)| ManifestVersion::parse(&key, &meta))
            .collect())
    }
}

type IndexHash = [u8; 32];

/// Where a store keeps the remote index objects it has read (any remote's:
/// they are named by their hash). Deleting it costs one download.
fn index_cache(store: &crate::store::Store) -> std::path::PathBuf {
    store.path().join("remote-index")
}

fn hex32(bytes: &[u8; 32]) -> String {
    ChunkId(*bytes).to_hex()
}

/// One object under `manifests/`: a version of a VMI's manifest.
#[derive(Clone, Debug)]
struct ManifestVersion {
    name: String,
    hash: ManifestHash,
    written: SystemTime,
}

impl ManifestVersion {
    fn key(&self) -> String {
        manifest_key(&self.name, &self.hash)
    }

    fn parse(key: &str, meta: &ObjectMeta) -> Option<Self> {
        let (encoded, hex) = key.strip_prefix("manifests/")?.split_once('/')?;
        Some(ManifestVersion {
            name: decode_name(encoded)?,
            hash: hex.parse::<ManifestHash>().ok()?,
            written: meta.last_modified.into(),
        })
    }

    /// The order that picks a name's current version: newest written, and
    /// the larger hash between two written in the same instant. Every node
    /// applies the same order, so all agree on the winner.
    fn order(&self) -> (SystemTime, [u8; 32]) {
        (self.written, self.hash.0)
    }
}

/// The current (newest) version of every VMI name.
fn current_versions(versions: &[ManifestVersion]) -> HashMap<String, ManifestVersion> {
    let mut current: HashMap<String, ManifestVersion> = HashMap::new();
    for v in versions {
        match current.get(&v.name) {
            Some(have) if have.order() >= v.order() => {}
            _ => {
                current.insert(v.name.clone(), v.clone());
            }
        }
    }
    current
}

fn manifest_key(name: &str, hash: &ManifestHash) -> String {
    format!("manifests/{}/{}", encode_name(name), hash.to_hex())
}

/// A VMI name as one path segment every S3 server and object_store accept
/// unescaped: bytes other than `[A-Za-z0-9._-]` become `=XX`.
fn encode_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

fn decode_name(encoded: &str) -> Option<String> {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let name = String::from_utf8(out).ok()?;
    crate::name::validate_name(&name).ok()?;
    Some(name)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod key_tests {
    use super::*;

    #[test]
    fn names_survive_the_key_encoding() {
        for name in ["web.qcow2", "a/b c=d+é.img", "x-y_z.0"] {
            let encoded = encode_name(name);
            assert!(!encoded.contains('/'));
            assert_eq!(decode_name(&encoded).as_deref(), Some(name));
        }
        assert_eq!(decode_name("=2E=2E"), None, "`..` is not a VMI name");
        assert_eq!(decode_name("bad=Z1"), None);
    }

    #[test]
    fn pack_keys_round_trip() {
        let id = PackId::of(b"pack");
        assert_eq!(PackId::of_key(&id.key()), Some(id));
        assert_eq!(PackId::of_key("packs/00/nothex"), None);
    }
}

#[cfg(test)]
mod url_tests {
    use super::{has_userinfo, redact, Error, Remote, RemoteFault, RemoteOptions};

    #[test]
    fn credentials_in_a_url_are_refused_and_never_printed() {
        let url = "s3://AKIAEXAMPLE:s3cr3t@bucket/prefix";
        assert!(has_userinfo(url));
        assert!(!has_userinfo("s3://bucket/pre@fix"));
        assert_eq!(redact(url), "s3://***@bucket/prefix");
        let Err(err) = Remote::open(url, RemoteOptions::default()) else {
            panic!("a URL with credentials was accepted");
        };
        assert!(
            matches!(&err, Error::Remote { fault, .. } if matches!(**fault, RemoteFault::CredentialsInUrl))
        );
        let text = err.to_string();
        assert!(
            !text.contains("s3cr3t") && !text.contains("AKIAEXAMPLE"),
            "{text}"
        );
        let options = RemoteOptions {
            endpoint: Some("http://user:pw0rd@127.0.0.1:7480".into()),
            ..RemoteOptions::default()
        };
        let Err(err) = Remote::open("s3://bucket", options) else {
            panic!("an endpoint with credentials was accepted");
        };
        assert!(!err.to_string().contains("pw0rd"));
    }
}
