//! `screenshot:response`: accepted only for a pending request id minted for this device, strict
//! base64, decoded size cap, PNG/JPEG magic bytes and matching dimensions; stored under
//! `screenshots/{org}/{device}/{requestId}.{ext}`, recorded on the device row, announced to the
//! organisation's dashboards.

use base64::Engine;
use serde_json::json;

use super::{Gateway, room};
use crate::wire::ack::ScreenshotSaved;
use crate::wire::events::ScreenshotResponse;
use crate::wire::iso_now;
use crate::wire::outgoing::{Outgoing, ScreenshotReady};

/// Why a screenshot was refused. What the device is told (the reference's wording) is the
/// socket edge's refusal table (`socket::error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScreenshotError {
    /// Larger than `SCREENSHOT_MAX_BYTES`, with the limit in human form (`2MB`).
    TooLarge(String),
    UnknownRequest,
    BadBase64,
    BadFormat,
    DimensionMismatch,
    StorageUnavailable,
    SaveFailed,
}

/// Human form of the byte limit, e.g. `2MB` for 2097152.
pub fn limit_label(bytes: usize) -> String {
    if bytes.is_multiple_of(1024 * 1024) {
        format!("{}MB", bytes / (1024 * 1024))
    } else if bytes.is_multiple_of(1024) {
        format!("{}KB", bytes / 1024)
    } else {
        format!("{bytes} bytes")
    }
}

/// Largest base64 text that can decode to at most `max_bytes`.
pub fn max_base64_chars(max_bytes: usize) -> usize {
    max_bytes.div_ceil(3) * 4
}

/// Decodes strictly and checks the image; returns bytes, extension and content type.
pub fn check_image(
    r: &ScreenshotResponse,
    max_bytes: usize,
) -> Result<(Vec<u8>, &'static str, &'static str), ScreenshotError> {
    let data = r
        .image_data
        .strip_prefix("data:image/png;base64,")
        .or_else(|| r.image_data.strip_prefix("data:image/jpeg;base64,"))
        .unwrap_or(&r.image_data);
    if data.len() > max_base64_chars(max_bytes) {
        return Err(ScreenshotError::TooLarge(limit_label(max_bytes)));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|_| ScreenshotError::BadBase64)?;
    if bytes.len() > max_bytes {
        return Err(ScreenshotError::TooLarge(limit_label(max_bytes)));
    }
    let (ext, ctype) = if bytes.starts_with(&[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A]) {
        ("png", "image/png")
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        ("jpg", "image/jpeg")
    } else {
        return Err(ScreenshotError::BadFormat);
    };
    let size = imagesize::blob_size(&bytes).map_err(|_| ScreenshotError::BadFormat)?;
    if size.width != r.width as usize || size.height != r.height as usize {
        return Err(ScreenshotError::DimensionMismatch);
    }
    Ok((bytes, ext, ctype))
}

impl Gateway {
    pub async fn screenshot(
        &self,
        device: &str,
        org: &str,
        r: ScreenshotResponse,
    ) -> Result<ScreenshotSaved, ScreenshotError> {
        // Cheap checks first; the request id is consumed only by a well-formed image, so a
        // corrupted upload can be retried with the same id until it expires.
        let (bytes, ext, ctype) = check_image(&r, self.cfg.screenshot_max_bytes)?;
        // Before the request id is consumed, so the device can retry once storage is back.
        if !self.storage.is_ready() {
            return Err(ScreenshotError::StorageUnavailable);
        }
        match self
            .state
            .take_screenshot_request(device, &r.request_id)
            .await
        {
            Ok(true) => {}
            Ok(false) => return Err(ScreenshotError::UnknownRequest),
            Err(_) => {
                self.metrics.store_error("redis", "screenshot_request");
                return Err(ScreenshotError::SaveFailed);
            }
        }
        let key = format!("screenshots/{org}/{device}/{}.{ext}", r.request_id);
        if let Err(e) = self.storage.put(&key, bytes, ctype).await {
            tracing::warn!(device, error = %e, "Screenshot upload failed.");
            return Err(ScreenshotError::StorageUnavailable);
        }
        let url = self
            .storage
            .url(&key)
            .await
            .map_err(|_| ScreenshotError::SaveFailed)?;
        let record = json!({"url": url, "width": r.width, "height": r.height}).to_string();
        if let Err(e) = self.db.update_screenshot(device, org, &record).await {
            self.metrics.store_error("db", "screenshot");
            tracing::warn!(device, error = %e, "Screenshot row update failed.");
            return Err(ScreenshotError::SaveFailed);
        }
        let event = ScreenshotReady {
            device_id: device.to_string(),
            request_id: r.request_id,
            url: url.clone(),
            width: r.width,
            height: r.height,
            timestamp: iso_now(),
            // As the original: the device's timestamp, absent when it sent none.
            captured_at: r.captured_at.filter(|v| !v.is_null()),
        };
        self.emitter
            .emit(room::dashboards(org), Outgoing::of(&event))
            .await;
        Ok(ScreenshotSaved { saved: true, url })
    }
}

/// Why a signed screenshot link is not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRefused {
    /// Bad or expired signature, or a key that tries to leave the screenshots.
    BadSignature,
    /// A valid link to an object that is gone.
    Missing,
}

impl Gateway {
    /// The bytes behind a signed local link (`Storage::url`), once its signature and expiry hold.
    pub async fn signed_screenshot(
        &self,
        key: &str,
        exp: i64,
        sig: &str,
    ) -> Result<Vec<u8>, LinkRefused> {
        if key.contains("..") || !self.storage.verify(key, exp, sig) {
            return Err(LinkRefused::BadSignature);
        }
        self.storage
            .get(key)
            .await
            .map_err(|_| LinkRefused::Missing)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Rgb);
        let mut wr = enc.write_header().unwrap();
        wr.write_image_data(&vec![0u8; (w * h * 3) as usize])
            .unwrap();
        drop(wr);
        out
    }

    fn resp(data: String, w: u32, h: u32) -> ScreenshotResponse {
        ScreenshotResponse {
            request_id: "r".into(),
            image_data: data,
            width: w,
            height: h,
            captured_at: None,
        }
    }

    #[test]
    fn good_png_passes_and_dimensions_must_match() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(png(4, 3));
        assert_eq!(
            check_image(&resp(b64.clone(), 4, 3), 1 << 20).unwrap().1,
            "png"
        );
        assert_eq!(
            check_image(&resp(b64, 3, 4), 1 << 20).unwrap_err(),
            ScreenshotError::DimensionMismatch
        );
    }

    #[test]
    fn refusals_keep_the_reference_wording() {
        assert_eq!(
            check_image(&resp("@@@@".into(), 1, 1), 1 << 20).unwrap_err(),
            ScreenshotError::BadBase64
        );
        let gif = base64::engine::general_purpose::STANDARD.encode(b"GIF89a....");
        assert_eq!(
            check_image(&resp(gif, 1, 1), 1 << 20).unwrap_err(),
            ScreenshotError::BadFormat
        );
        let big = base64::engine::general_purpose::STANDARD.encode(vec![0u8; 3000]);
        assert_eq!(
            check_image(&resp(big, 1, 1), 2048).unwrap_err(),
            ScreenshotError::TooLarge("2KB".into())
        );
        assert_eq!(limit_label(2_097_152), "2MB");
    }
}
