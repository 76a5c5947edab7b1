//! Legal holds: placing, releasing and listing them, and what they cover.

use std::collections::BTreeMap;

use custody_catalog::SegmentRecord;
use custody_core::{CameraId, Hold, HoldCameras, HoldId, HoldIndex, Release, TimeRange, Timestamp};
use tracing::info;

use super::{blocking, principal_or_default};
use crate::{Node, ServerError};

/// Holds and releases as this node knows them.
#[derive(Default)]
pub(super) struct HoldsView {
    pub(super) holds: BTreeMap<HoldId, Hold>,
    pub(super) releases: BTreeMap<HoldId, Release>,
    /// The active (unreleased) holds, indexed: what the sweeper checks.
    pub(super) index: HoldIndex,
}

impl HoldsView {
    /// Rebuilds the index after holds or releases changed.
    pub(super) fn reindex(&mut self) {
        let releases = &self.releases;
        self.index = HoldIndex::build(
            self.holds
                .values()
                .filter(|h| !releases.contains_key(&h.id)),
        );
    }
}

/// A hold with its release, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldState {
    /// The hold.
    pub hold: Hold,
    /// Its release, once released.
    pub release: Option<Release>,
}

/// What a new hold covers right now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HoldCoverage {
    /// Segments covered.
    pub segments: u64,
    /// Plaintext bytes covered.
    pub bytes: u64,
    /// Contiguous covered footage, per camera: (camera, range, segments, bytes).
    pub spans: Vec<(CameraId, TimeRange, u64, u64)>,
    /// Parts of the requested range (up to now) with no footage, per camera.
    pub missing: Vec<(CameraId, TimeRange)>,
}

impl Node {
    /// Places a hold. Returns only once the hold is durable in the store and
    /// this node's sweeper can no longer delete what it covers (single node:
    /// the node itself is every member). Cameras in an explicit list must
    /// have footage unless `future_cameras` is set.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_hold(
        &self,
        cameras: HoldCameras,
        start: Timestamp,
        end: Option<Timestamp>,
        case_id: String,
        reason: String,
        principal: &str,
        future_cameras: bool,
    ) -> Result<(Hold, HoldCoverage), ServerError> {
        if let HoldCameras::List(list) = &cameras {
            if !future_cameras {
                for c in list {
                    if !self.knows_camera(c).await? {
                        return Err(ServerError::NotFound(format!(
                            "camera {c} has no footage in this archive; set future_cameras (custody hold create --future-cameras) to hold footage still to come"
                        )));
                    }
                }
            }
        }
        let mut id = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id);
        let hold = Hold {
            id: HoldId::from_bytes(id),
            cameras,
            start,
            end,
            case_id,
            reason,
            placed_by: principal_or_default(principal),
            placed_at: self.clock.now(),
        };
        hold.validate()
            .map_err(|e| ServerError::Invalid(e.to_string()))?;
        self.put_hold(&hold).await?;
        {
            // Waits for every in-flight deletion; later ones see the hold.
            let mut view = self.retention.holds.write().await;
            view.holds.insert(hold.id, hold.clone());
            view.reindex();
        }
        if self.cluster.journals() {
            // Another node may be the sweeper: acknowledged only once no
            // sweeper anywhere can delete what the hold covers.
            let key = custody_store::ObjectPath::from(format!(
                "{}/{}.rec",
                super::records::HOLDS,
                hold.id
            ));
            let written = self.store.head(&key).await?.last_modified;
            self.cluster
                .await_hold_fence(written, self.retention.config.hold_fence())
                .await?;
        }
        info!(hold = %hold.id, case = hold.case_id, by = hold.placed_by, "hold placed");
        let node = self.clone();
        let placed = hold.clone();
        let coverage = blocking(move || node.coverage(&placed)).await?;
        Ok((hold, coverage))
    }

    /// The cameras a hold names: its list, or every camera the catalog knows.
    pub(crate) fn hold_cameras(&self, hold: &Hold) -> Result<Vec<CameraId>, ServerError> {
        Ok(match &hold.cameras {
            HoldCameras::All => self.catalog.map_cameras(|c| c.camera.clone())?,
            HoldCameras::List(l) => l.clone(),
        })
    }

    /// What `hold` covers in the catalog now. Scans the catalog: call it
    /// from a blocking thread.
    fn coverage(&self, hold: &Hold) -> Result<HoldCoverage, ServerError> {
        let cameras = self.hold_cameras(hold)?;
        let now = self.clock.now();
        let mut cov = HoldCoverage::default();
        for camera in cameras {
            let mut segs: Vec<SegmentRecord> = self
                .catalog
                .camera_segments(&camera)?
                .into_iter()
                .filter(|r| hold.covers(&camera, &r.range))
                .collect();
            segs.sort_by_key(|r| r.range.start());
            let mut spans: Vec<(Timestamp, Timestamp, u64, u64)> = Vec::new();
            for r in &segs {
                cov.segments += 1;
                cov.bytes += r.size;
                match spans.last_mut() {
                    Some(last) if r.range.start() <= last.1 => {
                        last.1 = last.1.max(r.range.end());
                        last.2 += 1;
                        last.3 += r.size;
                    }
                    _ => spans.push((r.range.start(), r.range.end(), 1, r.size)),
                }
            }
            // Missing: the requested range up to now, minus the spans.
            let until = hold.end.unwrap_or(now).min(now.max(hold.start));
            let mut cursor = hold.start;
            for (s, e, _, _) in &spans {
                if *s > cursor {
                    if let Ok(r) = TimeRange::new(cursor, (*s).min(until)) {
                        cov.missing.push((camera.clone(), r));
                    }
                }
                cursor = cursor.max(*e);
            }
            if let Ok(r) = TimeRange::new(cursor, until) {
                cov.missing.push((camera.clone(), r));
            }
            for (s, e, n, b) in spans {
                if let Ok(r) = TimeRange::new(s, e) {
                    cov.spans.push((camera.clone(), r, n, b));
                }
            }
        }
        Ok(cov)
    }

    /// Releases a hold; its footage becomes subject to retention again.
    pub async fn release_hold(
        &self,
        id: &HoldId,
        reason: String,
        principal: &str,
    ) -> Result<HoldState, ServerError> {
        let hold = {
            let view = self.retention.holds.read().await;
            let hold = view
                .holds
                .get(id)
                .cloned()
                .ok_or_else(|| ServerError::NotFound(format!("hold {id} not found")))?;
            if let Some(r) = view.releases.get(id) {
                return Err(ServerError::FailedPrecondition(format!(
                    "hold {id} was already released by {} at {}",
                    r.released_by, r.released_at
                )));
            }
            hold
        };
        let release = Release {
            hold_id: *id,
            released_by: principal_or_default(principal),
            reason,
            released_at: self.clock.now(),
        };
        release
            .validate()
            .map_err(|e| ServerError::Invalid(e.to_string()))?;
        match self.put_release(&release).await {
            Err(ServerError::AlreadyExists(_)) => {
                return Err(ServerError::FailedPrecondition(format!(
                    "hold {id} was already released"
                )))
            }
            other => other?,
        };
        let mut view = self.retention.holds.write().await;
        view.releases.insert(*id, release.clone());
        view.reindex();
        info!(hold = %id, by = release.released_by, "hold released");
        Ok(HoldState {
            hold,
            release: Some(release),
        })
    }

    /// One hold and its release.
    pub async fn hold(&self, id: &HoldId) -> Result<HoldState, ServerError> {
        let view = self.retention.holds.read().await;
        let hold = view
            .holds
            .get(id)
            .cloned()
            .ok_or_else(|| ServerError::NotFound(format!("hold {id} not found")))?;
        Ok(HoldState {
            hold,
            release: view.releases.get(id).cloned(),
        })
    }

    /// Every hold, oldest first; released ones too when asked.
    pub async fn holds(&self, include_released: bool) -> Vec<HoldState> {
        let view = self.retention.holds.read().await;
        let mut out: Vec<HoldState> = view
            .holds
            .values()
            .map(|h| HoldState {
                hold: h.clone(),
                release: view.releases.get(&h.id).cloned(),
            })
            .filter(|s| include_released || s.release.is_none())
            .collect();
        out.sort_by_key(|s| (s.hold.placed_at, s.hold.id));
        out
    }
}
