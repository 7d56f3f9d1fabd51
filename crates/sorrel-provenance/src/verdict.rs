//! One judgement of a file's provenance from its credentials and its pixels, shared by `sorrel verify` and
//! the server's `/credentials` route so that both say the same thing about the same file.

use serde_json::{json, Value};

use crate::watermark::{Detection, Detector, WatermarkKey, MIN_SHORT_SIDE};
use crate::{CredentialState, Credentials};

/// What was found in a file.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The C2PA credentials; `None` when the file's format cannot carry them (and no sidecar was given).
    pub credentials: Option<Credentials>,
    /// The watermark detector's result, or why the pixels could not be checked.
    pub watermark: std::result::Result<Detection, String>,
    /// Set when the frames are smaller than the watermark is made for: a missing mark then proves nothing.
    pub too_small: Option<String>,
}

impl Verdict {
    /// Checks `pixels` (the decoded file, or why it could not be decoded) for the watermark of `key`, next to
    /// the file's `credentials`.
    pub fn judge(
        credentials: Option<Credentials>,
        pixels: std::result::Result<sorrel_media::Clip, String>,
        key: &WatermarkKey,
    ) -> Self {
        let mut too_small = None;
        let watermark = pixels.map(|clip| {
            let side = clip.width().min(clip.height());
            if side < MIN_SHORT_SIDE {
                too_small = Some(format!(
                    "the frames are {}x{}, smaller than the {MIN_SHORT_SIDE} pixels the watermark is made for: \
                     a missing watermark says nothing about such a file",
                    clip.width(),
                    clip.height(),
                ));
            }
            Detector::new(key).detect_clip(&clip)
        });
        Self {
            credentials,
            watermark,
            too_small,
        }
    }

    /// The payload the credentials' soft binding names, if any.
    pub fn claimed_payload(&self) -> Option<u64> {
        self.credentials.as_ref().and_then(|c| c.watermark_payload)
    }

    /// Whether the file's origin is established: its credentials are Valid or Trusted, or it has none
    /// (stripped, or a format that cannot hold them) and the watermark is found. Invalid credentials fail
    /// whatever the pixels say: the file was changed after signing.
    pub fn origin_established(&self) -> bool {
        match self.credentials.as_ref().map(|c| c.state) {
            Some(CredentialState::Valid | CredentialState::Trusted) => true,
            Some(CredentialState::Invalid) => false,
            Some(CredentialState::Absent) | None => {
                self.watermark.as_ref().is_ok_and(|d| d.detected)
            }
        }
    }

    /// Whether the credentials say the content was made by a trained model (IPTC's
    /// `trainedAlgorithmicMedia` source type, under either scheme of its URL).
    pub fn ai_generated(&self) -> bool {
        self.credentials
            .as_ref()
            .and_then(|c| c.digital_source_type.as_deref())
            .is_some_and(|d| d.ends_with("/trainedAlgorithmicMedia"))
    }

    /// The verdict as `sorrel verify --json` prints it: the credentials' fields (or `state: Unsupported`),
    /// `ai_generated`, `watermark` and `origin_established`.
    pub fn to_json(&self) -> Value {
        let mut v = match &self.credentials {
            Some(c) => to_value(c),
            None => json!({"state": "Unsupported"}),
        };
        v["ai_generated"] = self.ai_generated().into();
        v["watermark"] = match &self.watermark {
            Ok(d) => {
                let mut w = to_value(d);
                w["matches_credentials"] =
                    json!(self.claimed_payload().map(|c| d.payload == Some(c)));
                if let Some(note) = &self.too_small {
                    w["note"] = note.clone().into();
                }
                w
            }
            Err(e) => json!({"detected": false, "error": e}),
        };
        v["origin_established"] = self.origin_established().into();
        v
    }
}

/// Plain structs with string keys, which cannot fail to serialise.
fn to_value(x: &impl serde::Serialize) -> Value {
    serde_json::to_value(x).expect("a plain struct serialises")
}
