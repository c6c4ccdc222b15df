//! Object storage for screenshots: a local directory in the embedded default (served back by the
//! gateway through HMAC-signed, expiring links) or an S3-compatible bucket (presigned GET links
//! for the endpoint browsers reach).
//!
//! An S3 bucket is checked at start and created when missing (object_store has no CreateBucket,
//! so that one call is presigned with rusty-s3 and sent with reqwest). Storage that cannot be set
//! up is retried in the background with backoff; until it is usable, uploads fail at once (the
//! screenshot service answers "Storage service unavailable") and the deep health report says why.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::signer::{Method, Signer};
use object_store::{Attribute, Attributes, ObjectStore, ObjectStoreExt, PutOptions, PutPayload};
use sha2::Sha256;

use crate::config::Config;

/// Why storage could not be set up or used. Each reads "storage: …", as logs have always said;
/// the health report shows the part after the label ([`StorageError::reason`]).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// `STORAGE_DIR` cannot be created.
    #[error("storage: STORAGE_DIR: {0}")]
    Dir(#[source] std::io::Error),
    /// `MINIO_ENDPOINT` (with its port and scheme) is not a URL.
    #[error("storage: MINIO_ENDPOINT: {0}")]
    Endpoint(#[source] url::ParseError),
    /// `MINIO_BUCKET` is not a bucket name S3 accepts.
    #[error("storage: MINIO_BUCKET: {0}")]
    BucketName(#[source] rusty_s3::BucketError),
    /// The object store refused a call or could not be reached.
    #[error("storage: {0}")]
    Store(#[from] object_store::Error),
    /// The link-signing key could not be derived.
    #[error("storage: {0}")]
    Key(#[from] hmac::digest::InvalidLength),
    /// The HTTP client of the bucket setup could not be built.
    #[error("storage: {0}")]
    Client(#[source] reqwest::Error),
    /// The bucket setup could not reach the endpoint.
    #[error("storage: cannot reach {endpoint}: {source}")]
    Unreachable {
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },
    /// HEAD on the bucket answered neither success nor 404.
    #[error("storage: checking the bucket: HTTP {0}")]
    BucketCheck(u16),
    /// CreateBucket was refused (`body`: the start of the answer).
    #[error("storage: creating bucket {bucket}: HTTP {status} {body}")]
    BucketCreate {
        bucket: String,
        status: u16,
        body: String,
    },
    /// The bucket was deleted behind our back; the setup task creates it again.
    #[error("storage: the bucket disappeared")]
    BucketGone,
    /// Uploads wait until the bucket is known to exist (`0`: the last setup failure).
    #[error("storage: not set up yet: {0}")]
    NotReady(String),
}

impl StorageError {
    /// What went wrong, without the "storage:" label every message starts with.
    pub fn reason(&self) -> String {
        let text = self.to_string();
        match text.strip_prefix("storage: ") {
            Some(rest) => rest.to_string(),
            None => text,
        }
    }
}

enum Backend {
    Local {
        public_url: String,
        key: Vec<u8>,
    },
    S3 {
        signer: Box<AmazonS3>,
        bucket: Box<BucketSetup>,
    },
}

/// What it takes to check and create the bucket.
struct BucketSetup {
    bucket: rusty_s3::Bucket,
    credentials: rusty_s3::Credentials,
    http: reqwest::Client,
}

/// Whether the storage can be used, and if not, the last reason.
#[derive(Default)]
struct Readiness {
    ready: AtomicBool,
    last_error: Mutex<Option<String>>,
}

/// What the health report says about storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageStatus {
    pub backend: &'static str,
    pub ready: bool,
    pub error: Option<String>,
}

/// Where screenshots go and how their links are made.
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    backend: Arc<Backend>,
    url_ttl: Duration,
    readiness: Arc<Readiness>,
}

/// Bound on each setup request, so an unreachable endpoint fails fast and is retried.
const SETUP_TIMEOUT: Duration = Duration::from_secs(5);

impl Storage {
    pub fn from_config(cfg: &Config) -> Result<Storage, StorageError> {
        match &cfg.minio {
            None => {
                std::fs::create_dir_all(&cfg.storage_dir).map_err(StorageError::Dir)?;
                let store = LocalFileSystem::new_with_prefix(&cfg.storage_dir)?;
                // Link signatures use a key derived from the internal secret, never the secret itself.
                let mut mac = Hmac::<Sha256>::new_from_slice(cfg.internal_api_secret.as_bytes())?;
                mac.update(b"vizora-gateway screenshot links v1");
                let readiness = Readiness::default();
                readiness.ready.store(true, Ordering::Relaxed);
                Ok(Storage {
                    store: Arc::new(store),
                    backend: Arc::new(Backend::Local {
                        public_url: cfg.public_url.clone(),
                        key: mac.finalize().into_bytes().to_vec(),
                    }),
                    url_ttl: cfg.screenshot_url_ttl,
                    readiness: Arc::new(readiness),
                })
            }
            Some(m) => {
                let build = |endpoint: &str| {
                    AmazonS3Builder::new()
                        .with_bucket_name(&m.bucket)
                        .with_region(&m.region)
                        .with_access_key_id(&m.access_key)
                        .with_secret_access_key(&m.secret_key)
                        .with_endpoint(endpoint)
                        .with_virtual_hosted_style_request(false)
                        .with_allow_http(true)
                        .build()
                };
                let store = build(&m.endpoint_url())?;
                let signer = build(m.public_endpoint.as_deref().unwrap_or(&m.endpoint_url()))?;
                let endpoint =
                    url::Url::parse(&m.endpoint_url()).map_err(StorageError::Endpoint)?;
                let bucket = rusty_s3::Bucket::new(
                    endpoint,
                    rusty_s3::UrlStyle::Path,
                    m.bucket.clone(),
                    m.region.clone(),
                )
                .map_err(StorageError::BucketName)?;
                let http = reqwest::Client::builder()
                    .timeout(SETUP_TIMEOUT)
                    .build()
                    .map_err(StorageError::Client)?;
                Ok(Storage {
                    store: Arc::new(store),
                    backend: Arc::new(Backend::S3 {
                        signer: Box::new(signer),
                        bucket: Box::new(BucketSetup {
                            bucket,
                            credentials: rusty_s3::Credentials::new(&m.access_key, &m.secret_key),
                            http,
                        }),
                    }),
                    url_ttl: cfg.screenshot_url_ttl.min(Duration::from_secs(604_800)),
                    readiness: Arc::new(Readiness::default()),
                })
            }
        }
    }

    pub fn is_local(&self) -> bool {
        matches!(*self.backend, Backend::Local { .. })
    }

    /// Whether uploads can be attempted (the bucket is known to exist).
    pub fn is_ready(&self) -> bool {
        self.readiness.ready.load(Ordering::Relaxed)
    }

    pub fn status(&self) -> StorageStatus {
        StorageStatus {
            backend: if self.is_local() { "local" } else { "s3" },
            ready: self.is_ready(),
            error: self
                .readiness
                .last_error
                .lock()
                .map(|e| e.clone())
                .unwrap_or_default(),
        }
    }

    fn set_ready(&self, result: &Result<(), StorageError>) {
        self.readiness
            .ready
            .store(result.is_ok(), Ordering::Relaxed);
        if let Ok(mut e) = self.readiness.last_error.lock() {
            *e = result.as_ref().err().map(StorageError::reason);
        }
    }

    /// Makes the storage usable: for S3, checks the bucket and creates it when it does not exist
    /// (as the original service does at start). Records the outcome for uploads and health.
    pub async fn ensure_ready(&self) -> Result<(), StorageError> {
        let result = match &*self.backend {
            Backend::Local { .. } => Ok(()),
            Backend::S3 { bucket, .. } => bucket.ensure().await,
        };
        self.set_ready(&result);
        result
    }

    pub async fn put(
        &self,
        key: &str,
        bytes: Vec<u8>,
        content_type: &str,
    ) -> Result<(), StorageError> {
        if !self.is_ready() {
            return Err(StorageError::NotReady(
                self.status().error.unwrap_or_default(),
            ));
        }
        let path = Path::from(key);
        let mut opts = PutOptions::default();
        if !self.is_local() {
            let mut attrs = Attributes::new();
            attrs.insert(Attribute::ContentType, content_type.to_string().into());
            opts.attributes = attrs;
        }
        if let Err(e) = self
            .store
            .put_opts(&path, PutPayload::from(bytes), opts)
            .await
        {
            // A put creates its object, so "not found" can only mean the bucket (S3's
            // NoSuchBucket): deleted behind our back, the setup task creates it again.
            if !self.is_local() && matches!(e, object_store::Error::NotFound { .. }) {
                self.set_ready(&Err(StorageError::BucketGone));
            }
            return Err(e.into());
        }
        Ok(())
    }

    pub async fn get(&self, key: &str) -> Result<Vec<u8>, StorageError> {
        let r = self.store.get(&Path::from(key)).await?;
        Ok(r.bytes().await?.to_vec())
    }

    /// A link the dashboard can open.
    pub async fn url(&self, key: &str) -> Result<String, StorageError> {
        match &*self.backend {
            Backend::Local { public_url, key: k } => {
                let exp = chrono::Utc::now().timestamp() + self.url_ttl.as_secs() as i64;
                Ok(format!(
                    "{public_url}/api/screenshots/{key}?exp={exp}&sig={}",
                    sign(k, key, exp)
                ))
            }
            Backend::S3 { signer, .. } => Ok(signer
                .signed_url(Method::GET, &Path::from(key), self.url_ttl)
                .await?
                .to_string()),
        }
    }

    /// Checks a local link's signature and expiry.
    pub fn verify(&self, key: &str, exp: i64, sig: &str) -> bool {
        let Backend::Local { key: k, .. } = &*self.backend else {
            return false;
        };
        if exp < chrono::Utc::now().timestamp() {
            return false;
        }
        let expected = sign(k, key, exp);
        subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), sig.as_bytes()).into()
    }
}

impl BucketSetup {
    /// HEAD the bucket; on 404, PUT it (CreateBucket). Both requests are presigned for a minute.
    async fn ensure(&self) -> Result<(), StorageError> {
        use rusty_s3::S3Action;
        let sign_for = Duration::from_secs(60);
        let head = self
            .bucket
            .head_bucket(Some(&self.credentials))
            .sign(sign_for);
        let r = self
            .http
            .head(head.as_str())
            .send()
            .await
            .map_err(|source| self.unreachable(source))?;
        match r.status().as_u16() {
            200..=299 => return Ok(()),
            404 => {}
            s => return Err(StorageError::BucketCheck(s)),
        }
        let create = self.bucket.create_bucket(&self.credentials).sign(sign_for);
        // Outside us-east-1 S3 wants the region as the location constraint.
        let body = match self.bucket.region() {
            "us-east-1" => String::new(),
            region => format!(
                r#"<CreateBucketConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><LocationConstraint>{region}</LocationConstraint></CreateBucketConfiguration>"#
            ),
        };
        let r = self
            .http
            .put(create.as_str())
            .body(body)
            .send()
            .await
            .map_err(|source| self.unreachable(source))?;
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        // Another replica may have created it a moment ago.
        if (200..=299).contains(&status) || text.contains("BucketAlreadyOwnedByYou") {
            tracing::info!(bucket = self.bucket.name(), "Created the storage bucket.");
            Ok(())
        } else {
            Err(StorageError::BucketCreate {
                bucket: self.bucket.name().to_string(),
                status,
                body: text.chars().take(200).collect(),
            })
        }
    }

    fn unreachable(&self, source: reqwest::Error) -> StorageError {
        StorageError::Unreachable {
            endpoint: self.endpoint(),
            source,
        }
    }

    fn endpoint(&self) -> String {
        self.bucket.base_url().origin().ascii_serialization()
    }
}

/// Sets storage up at start, and keeps trying with backoff (0.5 s doubling to 30 s) whenever it
/// is not usable, so a MinIO that comes up after the gateway is picked up without a restart.
pub async fn keep_ready(storage: Storage, stop: tokio_util::sync::CancellationToken) {
    let mut backoff = Duration::from_millis(500);
    loop {
        if storage.is_ready() {
            backoff = Duration::from_millis(500);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                _ = stop.cancelled() => return,
            }
        }
        match storage.ensure_ready().await {
            Ok(()) => tracing::info!("Object storage ready."),
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "Object storage not usable yet; retrying.");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

fn sign(k: &[u8], key: &str, exp: i64) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(k) else {
        return String::new();
    };
    mac.update(key.as_bytes());
    mac.update(b"\n");
    mac.update(exp.to_string().as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
