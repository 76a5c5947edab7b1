//! Offline verification of an audit chain from its objects.
//!
//! Classification of what can go wrong, and how each is named:
//! - **edited**: an object fails authentication (changed bytes, or forged
//!   without the key) where nothing else claims its records; or an authentic
//!   record disagrees with a checkpoint or its successor's `prev` link.
//! - **removed**: sequence numbers missing between the first and last record.
//! - **reordered**: an authentic object under a key that does not match the
//!   records it holds (objects moved or their contents swapped).
//! - **inserted**: an object that should not be there: a forged object whose
//!   key overlaps authentic records, a copy of authentic records under
//!   another key, two authentic objects claiming one sequence number, or a
//!   foreign key under `audit/`.
//! - **truncated**: a checkpoint (a head in the store, or one the verifier
//!   kept) names a record beyond the last one present.

use std::collections::BTreeMap;
use std::fmt;

use custody_crypto::Keyring;
use serde::Serialize;

use crate::object::{open_batch, open_head, parse_key, ObjectName};
use crate::{AuditRecord, Digest, Head, GENESIS};

/// A head the verifier trusts, e.g. saved earlier with `custody audit head`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedHead {
    /// Sequence number.
    pub seq: u64,
    /// Digest of record `seq`.
    pub digest: Digest,
}

/// What is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProblemKind {
    /// Bytes changed, or a record that contradicts the chain or a checkpoint.
    Edited,
    /// Records missing from the middle of the chain.
    Removed,
    /// Objects moved or swapped.
    Reordered,
    /// Objects that do not belong to the chain.
    Inserted,
    /// Records cut from the tail after a checkpoint.
    Truncated,
}

impl ProblemKind {
    /// The kind's name.
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::Edited => "edited",
            ProblemKind::Removed => "removed",
            ProblemKind::Reordered => "reordered",
            ProblemKind::Inserted => "inserted",
            ProblemKind::Truncated => "truncated",
        }
    }
}

/// One problem, naming the records and the object concerned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// What is wrong.
    pub kind: ProblemKind,
    /// First sequence number concerned (0 when the object names none).
    pub first_seq: u64,
    /// Last sequence number concerned.
    pub last_seq: u64,
    /// The object concerned (empty when the records are simply absent).
    pub object: String,
    /// What was found.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.kind.as_str())?;
        match (self.first_seq, self.last_seq) {
            (0, _) => {}
            (a, b) if a == b => write!(f, "record {a} ")?,
            (a, b) => write!(f, "records {a}..={b} ")?,
        }
        if !self.object.is_empty() {
            write!(f, "({}) ", self.object)?;
        }
        f.write_str(&self.message)
    }
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// Authentic records found in place.
    pub records: u64,
    /// Batch objects read.
    pub batches: u64,
    /// Heads read.
    pub heads: u64,
    /// The last authentic record in place: its seq and hex digest.
    pub last_seq: u64,
    /// Hex digest of record `last_seq` (empty when there is none).
    pub last_digest: String,
    /// Every problem, by sequence number.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// Whether the chain verified without any problem.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// An authentic record in the place its sequence number names.
struct Placed {
    record: AuditRecord,
    digest: Digest,
    object: String,
}

/// A batch object as listed: the sequence range its key names, key and bytes.
type ListedBatch<'a> = (u64, u64, &'a String, &'a [u8]);

/// A head object as listed: the sequence number its key names, key and bytes.
type ListedHead<'a> = (u64, &'a String, &'a Vec<u8>);

/// A checkpoint's word on a record: its seq, its digest, and who says so.
type Claim = (u64, Digest, String);

/// What the checks have established so far.
#[derive(Default)]
struct Verifier {
    problems: Vec<Problem>,
    placed: BTreeMap<u64, Placed>,
    /// Ranges already reported (so a bad object is not also "removed").
    accounted: Vec<(u64, u64)>,
    /// Objects (or their tails) failing authentication: range, key, why.
    forged: Vec<(u64, u64, String, String)>,
    /// Authentic objects holding records their key does not name.
    misplaced: Vec<(u64, u64, String, Vec<AuditRecord>)>,
}

/// Verifies a chain from its objects (`key`, bytes) — every object under
/// `audit/` — with the keyring that sealed them, and optionally a head the
/// verifier kept. Never fails: everything wrong is a [`Problem`].
pub fn verify(
    objects: &[(String, Vec<u8>)],
    keyring: &Keyring,
    trusted: Option<&TrustedHead>,
) -> VerifyReport {
    let mut v = Verifier::default();
    let (batches, heads) = v.sort_objects(objects);
    let mut report = VerifyReport {
        batches: batches.len() as u64,
        heads: heads.len() as u64,
        ..VerifyReport::default()
    };
    // Authentic records in range are placed; the rest is sorted out below.
    for batch in batches {
        v.place_batch(keyring, batch);
    }
    v.report_misplaced();
    v.report_forged();
    let max_seq = v.walk_chain(&mut report);
    // Checkpoints: the store's heads, then the verifier's own.
    let mut claims = v.read_heads(keyring, heads);
    if let Some(t) = trusted {
        claims.push((t.seq, t.digest, "the trusted head".to_string()));
    }
    v.check_claims(claims, max_seq);
    v.problems
        .sort_by_key(|p| (p.first_seq, p.kind, p.object.clone()));
    report.problems = v.problems;
    report
}

impl Verifier {
    /// Splits the objects into batches (by range) and heads by their keys;
    /// any other key is inserted.
    fn sort_objects<'a>(
        &mut self,
        objects: &'a [(String, Vec<u8>)],
    ) -> (Vec<ListedBatch<'a>>, Vec<ListedHead<'a>>) {
        let mut batches: Vec<ListedBatch<'a>> = Vec::new();
        let mut heads = Vec::new();
        for (key, bytes) in objects {
            match parse_key(key) {
                Some(ObjectName::Batch { first, last }) => {
                    batches.push((first, last, key, bytes.as_slice()))
                }
                Some(ObjectName::Head { seq }) => heads.push((seq, key, bytes)),
                // Claims order writers; the records are in the batches.
                Some(ObjectName::Claim { .. }) => {}
                None => self.problems.push(Problem {
                    kind: ProblemKind::Inserted,
                    first_seq: 0,
                    last_seq: 0,
                    object: key.clone(),
                    message: "not an audit object custody writes".to_string(),
                }),
            }
        }
        batches.sort_by_key(|b| (b.0, b.1));
        (batches, heads)
    }

    /// Opens one batch: places its authentic records in range, and sets
    /// aside strays, pieces failing authentication and an unreadable tail.
    fn place_batch(&mut self, keyring: &Keyring, (first, last, key, bytes): ListedBatch<'_>) {
        let opened = open_batch(keyring, bytes);
        let pieces = opened.records.len() as u64;
        let mut strays = Vec::new();
        for (seq, piece) in (first..).zip(opened.records) {
            match piece {
                Ok(record) if (first..=last).contains(&record.seq) => {
                    let seq = record.seq;
                    if let Some(other) = self.placed.get(&seq) {
                        self.problems.push(Problem {
                            kind: ProblemKind::Inserted,
                            first_seq: seq,
                            last_seq: seq,
                            object: key.clone(),
                            message: if other.record == record {
                                format!("a copy of record {seq}, which is also in {}", other.object)
                            } else {
                                format!(
                                    "a second authentic record {seq} (the chain forked); the first is in {}",
                                    other.object
                                )
                            },
                        });
                        continue;
                    }
                    self.placed.insert(
                        seq,
                        Placed {
                            digest: record.digest(),
                            record,
                            object: key.clone(),
                        },
                    );
                }
                Ok(record) => strays.push(record),
                Err(e) => self.forged.push((seq, seq, key.clone(), e.to_string())),
            }
        }
        match opened.unreadable_tail {
            Some(why) => self.forged.push((
                (first + pieces).min(last),
                last,
                key.clone(),
                format!("unreadable from its record {}: {why}", pieces + 1),
            )),
            None if pieces == 0 => {
                self.forged
                    .push((first, last, key.clone(), "the object is empty".into()))
            }
            None => {}
        }
        if !strays.is_empty() {
            self.misplaced.push((first, last, key.clone(), strays));
        }
    }

    /// Names authentic objects under the wrong key: copies of records in
    /// place elsewhere are inserted, the others reordered.
    fn report_misplaced(&mut self) {
        for (first, last, key, records) in std::mem::take(&mut self.misplaced) {
            self.accounted.push((first, last));
            let (c1, c2) = (
                records.iter().map(|r| r.seq).min().unwrap_or(0),
                records.iter().map(|r| r.seq).max().unwrap_or(0),
            );
            let duplicate = records.iter().all(|r| {
                self.placed
                    .get(&r.seq)
                    .is_some_and(|p| p.record == *r && p.object != key)
            });
            self.problems.push(if duplicate {
                Problem {
                    kind: ProblemKind::Inserted,
                    first_seq: first,
                    last_seq: last,
                    object: key,
                    message: format!("a copy of records {c1}..={c2}, which are in place elsewhere"),
                }
            } else {
                Problem {
                    kind: ProblemKind::Reordered,
                    first_seq: first,
                    last_seq: last,
                    object: key,
                    message: format!(
                        "holds records {c1}..={c2}, not the ones its name says: moved or swapped"
                    ),
                }
            });
        }
    }

    /// Names what fails authentication: edited where nothing else claims
    /// its records, inserted (forged) where authentic records are in place.
    fn report_forged(&mut self) {
        for (first, last, key, why) in std::mem::take(&mut self.forged) {
            self.accounted.push((first, last));
            let overlaps: Vec<u64> = self.placed.range(first..=last).map(|(s, _)| *s).collect();
            self.problems.push(if overlaps.is_empty() {
                Problem {
                    kind: ProblemKind::Edited,
                    first_seq: first,
                    last_seq: last,
                    object: key,
                    message: format!("fails authentication ({why}): edited or forged"),
                }
            } else {
                Problem {
                    kind: ProblemKind::Inserted,
                    first_seq: first,
                    last_seq: last,
                    object: key,
                    message: format!(
                        "forged (fails authentication: {why}), claiming records already in place: {overlaps:?}"
                    ),
                }
            });
        }
    }

    /// Walks the chain from record 1: gaps nothing accounts for are
    /// removed, broken `prev` links edited. Counts the records in place,
    /// notes the last one in `report`, and returns the highest seq known.
    fn walk_chain(&mut self, report: &mut VerifyReport) -> u64 {
        let accounted = &self.accounted;
        let is_accounted = |s: u64| accounted.iter().any(|(a, b)| (*a..=*b).contains(&s));
        let max_seq = self
            .placed
            .keys()
            .next_back()
            .copied()
            .into_iter()
            .chain(accounted.iter().map(|(_, b)| *b))
            .max()
            .unwrap_or(0);
        let problems = &mut self.problems;
        let mut gap: Option<(u64, u64)> = None;
        let flush_gap = |gap: &mut Option<(u64, u64)>, problems: &mut Vec<Problem>| {
            if let Some((a, b)) = gap.take() {
                problems.push(Problem {
                    kind: ProblemKind::Removed,
                    first_seq: a,
                    last_seq: b,
                    object: String::new(),
                    message: "missing from the chain".to_string(),
                });
            }
        };
        for s in 1..=max_seq {
            let Some(p) = self.placed.get(&s) else {
                if is_accounted(s) {
                    flush_gap(&mut gap, problems);
                } else {
                    gap = Some(gap.map_or((s, s), |(a, _)| (a, s)));
                }
                continue;
            };
            flush_gap(&mut gap, problems);
            report.records += 1;
            let expected = if s == 1 {
                Some(GENESIS)
            } else {
                self.placed.get(&(s - 1)).map(|q| q.digest)
            };
            if let Some(expected) = expected {
                if p.record.prev_digest() != Some(expected) {
                    problems.push(Problem {
                        kind: ProblemKind::Edited,
                        first_seq: s,
                        last_seq: s,
                        object: p.object.clone(),
                        message: format!(
                            "its prev digest does not match record {}: the chain was rewritten",
                            s - 1
                        ),
                    });
                }
            }
        }
        flush_gap(&mut gap, problems);
        if let Some((s, p)) = self.placed.iter().next_back() {
            report.last_seq = *s;
            report.last_digest = hex::encode(p.digest);
        }
        max_seq
    }

    /// Opens the store's heads: each authentic one under its own key is a
    /// claim; the others are edited or reordered.
    fn read_heads(&mut self, keyring: &Keyring, heads: Vec<ListedHead<'_>>) -> Vec<Claim> {
        let mut claims = Vec::new();
        for (seq, key, bytes) in heads {
            match open_head(keyring, bytes) {
                Ok(h) if h.seq == seq => match h.digest_bytes() {
                    Some(d) => claims.push((seq, d, format!("head {key} written {}", h.at))),
                    None => {
                        self.problems
                            .push(bad_head(seq, key, "its digest is not 64 hex digits"))
                    }
                },
                Ok(h) => self.problems.push(Problem {
                    kind: ProblemKind::Reordered,
                    first_seq: seq,
                    last_seq: seq,
                    object: key.clone(),
                    message: format!("this head names record {}: moved", h.seq),
                }),
                Err(e) => self.problems.push(bad_head(
                    seq,
                    key,
                    &format!("fails authentication ({e}): edited or forged"),
                )),
            }
        }
        claims
    }

    /// Compares the records with the checkpoints' claims: a different
    /// digest is edited, a claim past `max_seq` (the highest) truncated.
    fn check_claims(&mut self, claims: Vec<Claim>, max_seq: u64) {
        let mut truncated: Option<(u64, String)> = None;
        for (seq, digest, source) in claims {
            match self.placed.get(&seq) {
                Some(p) if p.digest != digest => self.problems.push(Problem {
                    kind: ProblemKind::Edited,
                    first_seq: seq,
                    last_seq: seq,
                    object: p.object.clone(),
                    message: format!("differs from {source}: the record was replaced"),
                }),
                Some(_) => {}
                None if seq > max_seq && truncated.as_ref().is_none_or(|(s, _)| seq > *s) => {
                    truncated = Some((seq, source));
                }
                // Inside the chain: already reported as removed or bad.
                None => {}
            }
        }
        if let Some((seq, source)) = truncated {
            self.problems.push(Problem {
                kind: ProblemKind::Truncated,
                first_seq: max_seq + 1,
                last_seq: seq,
                object: String::new(),
                message: format!(
                    "{source} names record {seq}, but the chain ends at {max_seq}: the tail was cut"
                ),
            });
        }
    }
}

/// A head failing its checks: edited, saying why.
fn bad_head(seq: u64, key: &str, message: &str) -> Problem {
    Problem {
        kind: ProblemKind::Edited,
        first_seq: seq,
        last_seq: seq,
        object: key.to_string(),
        message: format!("head {message}"),
    }
}

impl Head {
    /// This head as one a verifier trusts (`None` if its digest is malformed).
    pub fn trusted(&self) -> Option<TrustedHead> {
        self.digest_bytes().map(|digest| TrustedHead {
            seq: self.seq,
            digest,
        })
    }
}

#[cfg(test)]
mod tests {
    use custody_crypto::{KeyId, Keyring};

    use super::*;
    use crate::object::{batch_key, head_key, seal_batch, seal_head};
    use crate::Outcome;

    fn record(seq: u64, prev: &Digest) -> AuditRecord {
        AuditRecord {
            seq,
            prev: hex::encode(prev),
            at: format!("2026-11-24T10:00:{:02}Z", seq % 60),
            principal: "local".into(),
            listener: "local".into(),
            action: "archive.read_segment".into(),
            cameras: vec![format!("cam-{seq}")],
            segment: String::new(),
            hold: String::new(),
            outcome: Outcome::Ok,
            reason: String::new(),
            detail: String::new(),
            node: String::new(),
        }
    }

    /// A chain of batches sized `sizes`, a head after each.
    fn chain(ring: &Keyring, sizes: &[u64]) -> (Vec<(String, Vec<u8>)>, Vec<Head>) {
        let mut out = Vec::new();
        let mut heads = Vec::new();
        let mut prev = GENESIS;
        let mut seq = 1;
        for n in sizes {
            let first = seq;
            let mut recs = Vec::new();
            for _ in 0..*n {
                let r = record(seq, &prev);
                prev = r.digest();
                recs.push(r);
                seq += 1;
            }
            let last = seq - 1;
            out.push((
                batch_key(first, last),
                seal_batch(ring.active(), &recs).unwrap(),
            ));
            let h = Head {
                seq: last,
                digest: hex::encode(prev),
                at: "2026-11-24T10:00:00Z".into(),
                object: batch_key(first, last),
                keys: vec!["k1".into()],
                active_key: "k1".into(),
            };
            out.push((head_key(last), seal_head(ring.active(), &h).unwrap()));
            heads.push(h);
        }
        (out, heads)
    }

    fn ring() -> Keyring {
        Keyring::generate(KeyId::parse("k1").unwrap())
    }

    fn kinds(r: &VerifyReport) -> Vec<(ProblemKind, u64, u64)> {
        r.problems
            .iter()
            .map(|p| (p.kind, p.first_seq, p.last_seq))
            .collect()
    }

    #[test]
    fn clean_chain_verifies() {
        let ring = ring();
        let (objs, heads) = chain(&ring, &[1, 2, 1, 3]);
        let r = verify(&objs, &ring, heads[1].trusted().as_ref());
        assert!(r.ok(), "{:?}", r.problems);
        assert_eq!((r.records, r.batches, r.heads, r.last_seq), (7, 4, 4, 7));
        assert_eq!(r.last_digest, heads[3].digest);
        assert!(verify(&[], &ring, None).ok());
    }

    #[test]
    fn every_edited_byte_is_named() {
        let ring = ring();
        let (objs, _) = chain(&ring, &[1, 2, 1]);
        let i = objs
            .iter()
            .position(|(k, _)| *k == batch_key(2, 3))
            .unwrap();
        for pos in (0..objs[i].1.len()).step_by(7) {
            let mut bad = objs.clone();
            bad[i].1[pos] ^= 0x20;
            let r = verify(&bad, &ring, None);
            assert!(!r.ok(), "byte {pos}");
            for p in &r.problems {
                assert_eq!(p.kind, ProblemKind::Edited, "byte {pos}: {p}");
                assert!(p.first_seq >= 2 && p.last_seq <= 3, "byte {pos}: {p}");
                assert_eq!(p.object, batch_key(2, 3));
            }
        }
        // An edit inside one record's payload names that record alone.
        let first_len = custody_crypto::sealed_record_len(&objs[i].1).unwrap();
        for (pos, seq) in [(first_len - 30, 2), (first_len + 60, 3)] {
            let mut bad = objs.clone();
            bad[i].1[pos] ^= 0x01;
            let r = verify(&bad, &ring, None);
            assert_eq!(kinds(&r), vec![(ProblemKind::Edited, seq, seq)]);
            assert!(r.problems[0]
                .to_string()
                .starts_with(&format!("edited: record {seq} (")));
        }
        // A head edited is named too.
        let h = objs.iter().position(|(k, _)| *k == head_key(3)).unwrap();
        let mut bad = objs.clone();
        bad[h].1[20] ^= 1;
        assert_eq!(
            kinds(&verify(&bad, &ring, None)),
            vec![(ProblemKind::Edited, 3, 3)]
        );
    }

    #[test]
    fn a_removed_object_is_a_gap() {
        let ring = ring();
        let (mut objs, _) = chain(&ring, &[1, 2, 1, 1]);
        objs.retain(|(k, _)| *k != batch_key(2, 3));
        let r = verify(&objs, &ring, None);
        assert_eq!(kinds(&r), vec![(ProblemKind::Removed, 2, 3)]);
        assert!(r.problems[0].to_string().contains("records 2..=3"));
    }

    #[test]
    fn swapped_objects_are_reordered() {
        let ring = ring();
        let (mut objs, _) = chain(&ring, &[1, 1, 1, 1]);
        let a = objs
            .iter()
            .position(|(k, _)| *k == batch_key(2, 2))
            .unwrap();
        let b = objs
            .iter()
            .position(|(k, _)| *k == batch_key(4, 4))
            .unwrap();
        let tmp = objs[a].1.clone();
        objs[a].1 = objs[b].1.clone();
        objs[b].1 = tmp;
        let r = verify(&objs, &ring, None);
        assert_eq!(
            kinds(&r),
            vec![
                (ProblemKind::Reordered, 2, 2),
                (ProblemKind::Reordered, 4, 4)
            ]
        );
    }

    #[test]
    fn inserted_objects_are_named() {
        let ring = ring();
        let (objs, _) = chain(&ring, &[1, 2, 1]);
        // Forged without the key, claiming record 3.
        let other = Keyring::generate(KeyId::parse("k1").unwrap());
        let mut forged = objs.clone();
        forged.push((
            batch_key(3, 3),
            seal_batch(other.active(), &[record(3, &GENESIS)]).unwrap(),
        ));
        let r = verify(&forged, &ring, None);
        assert_eq!(kinds(&r), vec![(ProblemKind::Inserted, 3, 3)]);
        assert_eq!(r.problems[0].object, batch_key(3, 3));
        // A genuine object copied under a new name.
        let mut copied = objs.clone();
        let one = objs.iter().find(|(k, _)| *k == batch_key(1, 1)).unwrap();
        copied.push((batch_key(5, 5), one.1.clone()));
        let r = verify(&copied, &ring, None);
        assert_eq!(kinds(&r), vec![(ProblemKind::Inserted, 5, 5)]);
        // A foreign key.
        let mut foreign = objs.clone();
        foreign.push(("audit/notes.txt".into(), b"x".to_vec()));
        assert_eq!(
            kinds(&verify(&foreign, &ring, None)),
            vec![(ProblemKind::Inserted, 0, 0)]
        );
    }

    #[test]
    fn cut_tail_is_caught_by_a_store_head_or_a_kept_head() {
        let ring = ring();
        let (objs, heads) = chain(&ring, &[1, 2, 1, 2]);
        // Records 5..=6 gone, their head kept.
        let mut cut: Vec<_> = objs
            .iter()
            .filter(|(k, _)| *k != batch_key(5, 6))
            .cloned()
            .collect();
        let r = verify(&cut, &ring, None);
        assert_eq!(kinds(&r), vec![(ProblemKind::Truncated, 5, 6)]);
        // Heads gone too: only a kept head notices.
        cut.retain(|(k, _)| *k != head_key(6));
        assert!(verify(&cut, &ring, None).ok());
        let r = verify(&cut, &ring, heads[3].trusted().as_ref());
        assert_eq!(kinds(&r), vec![(ProblemKind::Truncated, 5, 6)]);
        assert!(r.problems[0].message.contains("trusted head"));
        // A kept head whose record was replaced.
        let wrong = TrustedHead {
            seq: 4,
            digest: [9; 32],
        };
        assert_eq!(
            kinds(&verify(&cut, &ring, Some(&wrong))),
            vec![(ProblemKind::Edited, 4, 4)]
        );
    }

    #[test]
    fn a_rewritten_link_is_edited() {
        // A key holder re-sealing record 2 with a wrong prev is still caught.
        let ring = ring();
        let (mut objs, _) = chain(&ring, &[1, 1]);
        let i = objs
            .iter()
            .position(|(k, _)| *k == batch_key(2, 2))
            .unwrap();
        objs[i].1 = seal_batch(ring.active(), &[record(2, &[7; 32])]).unwrap();
        let r = verify(&objs, &ring, None);
        assert!(
            kinds(&r).contains(&(ProblemKind::Edited, 2, 2)),
            "{:?}",
            r.problems
        );
    }
}
