//! Object storage for screenshots: a local directory in the embedded default (served back by the
//! gateway through HMAC-signed, expiring links) or an S3-compatible bucket (presigned GET links
//! for the endpoint browsers reach).

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::signer::{Method, Signer};
use object_store::{Attribute, Attributes, ObjectStore, ObjectStoreExt, PutOptions, PutPayload};
use sha2::Sha256;

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
#[error("storage: {0}")]
pub struct StorageError(pub String);

fn se(e: impl std::fmt::Display) -> StorageError {
    StorageError(e.to_string())
}

enum Backend {
    Local { public_url: String, key: Vec<u8> },
    S3 { signer: Box<AmazonS3> },
}

/// Where screenshots go and how their links are made.
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    backend: Arc<Backend>,
    url_ttl: Duration,
}

impl Storage {
    pub fn from_config(cfg: &Config) -> Result<Storage, StorageError> {
        match &cfg.minio {
            None => {
                std::fs::create_dir_all(&cfg.storage_dir)
                    .map_err(|e| StorageError(format!("STORAGE_DIR: {e}")))?;
                let store = LocalFileSystem::new_with_prefix(&cfg.storage_dir).map_err(se)?;
                // Link signatures use a key derived from the internal secret, never the secret itself.
                let mut mac = Hmac::<Sha256>::new_from_slice(cfg.internal_api_secret.as_bytes())
                    .map_err(se)?;
                mac.update(b"vizora-gateway screenshot links v1");
                Ok(Storage {
                    store: Arc::new(store),
                    backend: Arc::new(Backend::Local {
                        public_url: cfg.public_url.clone(),
                        key: mac.finalize().into_bytes().to_vec(),
                    }),
                    url_ttl: cfg.screenshot_url_ttl,
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
                        .map_err(se)
                };
                let store = build(&m.endpoint_url())?;
                let signer = build(m.public_endpoint.as_deref().unwrap_or(&m.endpoint_url()))?;
                Ok(Storage {
                    store: Arc::new(store),
                    backend: Arc::new(Backend::S3 {
                        signer: Box::new(signer),
                    }),
                    url_ttl: cfg.screenshot_url_ttl.min(Duration::from_secs(604_800)),
                })
            }
        }
    }

    pub fn is_local(&self) -> bool {
        matches!(*self.backend, Backend::Local { .. })
    }

    pub async fn put(
        &self,
        key: &str,
        bytes: Vec<u8>,
        content_type: &str,
    ) -> Result<(), StorageError> {
        let path = Path::from(key);
        let mut opts = PutOptions::default();
        if !self.is_local() {
            let mut attrs = Attributes::new();
            attrs.insert(Attribute::ContentType, content_type.to_string().into());
            opts.attributes = attrs;
        }
        self.store
            .put_opts(&path, PutPayload::from(bytes), opts)
            .await
            .map_err(se)?;
        Ok(())
    }

    pub async fn get(&self, key: &str) -> Result<Vec<u8>, StorageError> {
        let r = self.store.get(&Path::from(key)).await.map_err(se)?;
        Ok(r.bytes().await.map_err(se)?.to_vec())
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
            Backend::S3 { signer } => Ok(signer
                .signed_url(Method::GET, &Path::from(key), self.url_ttl)
                .await
                .map_err(se)?
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
