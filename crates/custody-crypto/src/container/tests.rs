//! Tests of the segment container: round trips, range reads, and detection of
//! tampering, truncation, reordering, substitution and unknown keys.

use std::ops::Range;

use custody_core::{CameraId, MediaType, SegmentId, StreamName, TimeRange, Timestamp};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

use super::*;
use crate::{CryptoError, Kek, KeyId, Keyring};

fn key_id(s: &str) -> KeyId {
    KeyId::parse(s).unwrap()
}

fn ring() -> Keyring {
    Keyring::generate(key_id("k1"))
}

fn meta_for(camera: &str, sequence: u64) -> SegmentMeta {
    let camera = CameraId::parse(camera).unwrap();
    let stream = StreamName::main();
    let start = Timestamp::from_secs(1_800_000_000 + sequence as i64 * 6);
    SegmentMeta {
        segment_id: SegmentId::derive(&camera, &stream, start, sequence),
        camera,
        stream,
        range: TimeRange::new(start, start.saturating_add_nanos(6_000_000_000)).unwrap(),
        sequence,
        media_type: MediaType::parse(MediaType::MPEG_TS).unwrap(),
        created: Timestamp::from_secs(1_800_000_100),
    }
}

fn meta() -> SegmentMeta {
    meta_for("cam-a", 1)
}

/// Deterministic, non-repeating-looking plaintext.
fn plaintext(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ (i as u8))
        .collect()
}

/// Splits `data` into irregular pieces cycling through `sizes`.
fn pieces<'a>(data: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].min(rest.len());
        let (a, b) = rest.split_at(n);
        out.push(a);
        rest = b;
        i += 1;
    }
    out
}

const PIECES: &[usize] = &[1, 7, 0, 1023, 1024, 1025, 3000, 5, 70_000];

/// Encrypts `plain` fed in `sizes`-shaped pieces; returns the whole object.
fn encrypt_with(
    kek: &Kek,
    meta: &SegmentMeta,
    chunk_size: u32,
    plain: &[u8],
    sizes: &[usize],
) -> Vec<u8> {
    let (mut enc, mut obj) = Encryptor::new(kek, meta, chunk_size).unwrap();
    for piece in pieces(plain, sizes) {
        let out = enc.update(piece);
        // Output is always whole full-size chunks.
        assert_eq!(out.len() % (chunk_size as usize + 16), 0);
        assert!(
            enc.buf.len() <= chunk_size as usize,
            "buffers at most one chunk"
        );
        obj.extend_from_slice(&out);
    }
    assert_eq!(enc.plaintext_len(), plain.len() as u64);
    let (tail, footer) = enc.finish();
    assert_eq!(footer.plaintext_len, plain.len() as u64);
    assert_eq!(footer.sha256, <[u8; 32]>::from(Sha256::digest(plain)));
    obj.extend_from_slice(&tail);
    obj
}

fn encrypt(ring: &Keyring, chunk_size: u32, plain: &[u8]) -> Vec<u8> {
    encrypt_with(ring.active(), &meta(), chunk_size, plain, PIECES)
}

fn open(ring: &Keyring, obj: &[u8]) -> Result<OpenedSegment, CryptoError> {
    OpenedSegment::open(ring, obj, obj.len() as u64)
}

/// Decrypts through [`StreamDecryptor`], pushing in `sizes`-shaped pieces.
fn stream_decrypt(
    ring: &Keyring,
    obj: &[u8],
    sizes: &[usize],
) -> Result<(Vec<u8>, SegmentFooter), CryptoError> {
    let opened = open(ring, obj)?;
    let max_buf = opened.chunk_size() as usize + 16;
    let body = &obj[opened.prefix_len() as usize..];
    let mut dec = StreamDecryptor::new(opened);
    let mut plain = Vec::new();
    for piece in pieces(body, sizes) {
        plain.extend_from_slice(&dec.push(piece)?);
        assert!(
            dec.buf.len() <= max_buf.max(56),
            "buffers at most one chunk"
        );
    }
    Ok((plain, dec.finish()?))
}

fn decrypt_all_bytes(ring: &Keyring, obj: &[u8], len: u64) -> Result<Vec<u8>, CryptoError> {
    decrypt_all(ring, obj, len).map(|(_, plain, _)| plain)
}

/// Reads plaintext `range` through random access: indices, object ranges, chunks.
fn read_range(opened: &OpenedSegment, obj: &[u8], range: Range<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    let idx = opened.chunk_indices(range.clone());
    let Some(first) = (!idx.is_empty()).then_some(idx.start) else {
        return out;
    };
    for i in idx {
        let r = opened.chunk_object_range(i);
        out.extend(
            opened
                .decrypt_chunk(i, &obj[r.start as usize..r.end as usize])
                .unwrap(),
        );
    }
    let skip = (range.start - opened.chunk_plain_offset(first)) as usize;
    let end = (range.end.min(opened.plaintext_len()) - range.start) as usize;
    out[skip..skip + end].to_vec()
}

fn chunk_bytes(opened: &OpenedSegment, i: u64) -> Range<usize> {
    let r = opened.chunk_object_range(i);
    r.start as usize..r.end as usize
}

#[test]
fn round_trips_at_chunk_boundaries() {
    let ring = ring();
    let cs = 1024u32;
    for (len, chunks) in [
        (0usize, 1u64),
        (1, 1),
        (1023, 1),
        (1024, 1),
        (1025, 2),
        (3 * 1024, 3),
        (10_000, 10),
    ] {
        let plain = plaintext(len);
        let obj = encrypt(&ring, cs, &plain);
        let opened = open(&ring, &obj).unwrap();
        assert_eq!(opened.chunk_count(), chunks, "len {len}");
        assert_eq!(opened.plaintext_len(), len as u64);
        assert_eq!(opened.chunk_size(), cs);
        assert_eq!(opened.key_id(), ring.active().id());
        assert_eq!(opened.meta(), &meta());
        assert_eq!(opened.footer_range().end, obj.len() as u64);
        let f = opened.footer_range();
        let footer = opened.read_footer(&obj[f.start as usize..]).unwrap();
        assert_eq!(footer.plaintext_len, len as u64);

        let (m, got, footer2) = decrypt_all(&ring, &obj[..], obj.len() as u64).unwrap();
        assert_eq!(m, meta());
        assert_eq!(got, plain, "decrypt_all, len {len}");
        assert_eq!(footer2, footer);

        for sizes in [&[1usize][..], &[13, 1040, 1], &[100_000]] {
            let (got, footer3) = stream_decrypt(&ring, &obj, sizes).unwrap();
            assert_eq!(got, plain, "stream, len {len}, sizes {sizes:?}");
            assert_eq!(footer3, footer);
        }
        assert_eq!(read_range(&opened, &obj, 0..len as u64), plain);
    }
}

#[test]
fn round_trips_multi_mib_with_default_chunks() {
    let ring = ring();
    let plain = plaintext(5 * 1024 * 1024 + 777);
    let obj = encrypt(&ring, DEFAULT_CHUNK_SIZE, &plain);
    let opened = open(&ring, &obj).unwrap();
    assert_eq!(opened.chunk_count(), 81);
    let (_, got, _) = decrypt_all(&ring, &obj[..], obj.len() as u64).unwrap();
    assert_eq!(got, plain);
    let (got, _) = stream_decrypt(&ring, &obj, &[4096, 65_536 + 16, 1, 200_000]).unwrap();
    assert_eq!(got, plain);
    let mid = 3 * 1024 * 1024 + 5..3 * 1024 * 1024 + 70_000;
    assert_eq!(
        read_range(&opened, &obj, mid.clone()),
        plain[mid.start as usize..mid.end as usize]
    );
}

#[test]
fn encryptor_holds_back_the_last_chunk() {
    let ring = ring();
    let (mut enc, _) = Encryptor::new(ring.active(), &meta(), 1024).unwrap();
    assert!(
        enc.update(&[1; 1024]).is_empty(),
        "a full chunk may be the last"
    );
    assert_eq!(
        enc.update(&[2]).len(),
        1024 + 16,
        "more data: the chunk is sealed"
    );
    let (tail, footer) = enc.finish();
    assert_eq!(tail.len() as u64, 1 + 16 + FOOTER_LEN);
    assert_eq!(footer.plaintext_len, 1025);
}

#[test]
fn invalid_chunk_sizes_are_refused() {
    let ring = ring();
    for cs in [0, MAX_CHUNK_SIZE + 1] {
        assert!(matches!(
            Encryptor::new(ring.active(), &meta(), cs),
            Err(CryptoError::InvalidChunkSize(c)) if c == cs
        ));
    }
    assert!(Encryptor::new(ring.active(), &meta(), MAX_CHUNK_SIZE).is_ok());
}

#[test]
fn prefix_probe_checks_magic_version_and_length() {
    let ring = ring();
    let obj = encrypt(&ring, 64, b"abc");
    let probe = &obj[..PREFIX_PROBE_LEN];
    let prefix_len = open_prefix_len(probe).unwrap();
    assert_eq!(prefix_len, open(&ring, &obj).unwrap().prefix_len());
    assert!(prefix_len <= MAX_PREFIX_LEN);

    assert!(matches!(
        open_prefix_len(&probe[..12]),
        Err(CryptoError::Truncated { .. })
    ));
    let mut bad = probe.to_vec();
    bad[0] = b'X';
    assert!(matches!(
        open_prefix_len(&bad),
        Err(CryptoError::NotASegment)
    ));
    let mut bad = probe.to_vec();
    bad[8] = 2;
    assert!(matches!(
        open_prefix_len(&bad),
        Err(CryptoError::UnsupportedVersion(2))
    ));
    for header_len in [0u32, MAX_HEADER_LEN + 1] {
        let mut bad = probe.to_vec();
        bad[9..13].copy_from_slice(&header_len.to_le_bytes());
        assert!(matches!(
            open_prefix_len(&bad),
            Err(CryptoError::Malformed(_))
        ));
    }
}

/// A 4-chunk object (64, 64, 64, 8 plaintext bytes) small enough to tamper
/// with byte by byte.
fn small_object(ring: &Keyring) -> (Vec<u8>, Vec<u8>) {
    let plain = plaintext(200);
    let obj = encrypt(ring, 64, &plain);
    (plain, obj)
}

#[test]
fn every_flipped_byte_is_detected() {
    let ring = ring();
    let (_, obj) = small_object(&ring);
    let opened = open(&ring, &obj).unwrap();
    assert_eq!(opened.chunk_count(), 4);
    let prefix_len = opened.prefix_len() as usize;
    let footer = opened.footer_range().start as usize;
    for pos in 0..obj.len() {
        for mask in [0x01u8, 0x80] {
            let mut bad = obj.clone();
            bad[pos] ^= mask;
            assert!(
                decrypt_all(&ring, &bad[..], bad.len() as u64).is_err(),
                "flip at {pos} undetected by decrypt_all"
            );
            assert!(stream_decrypt(&ring, &bad, &[17]).is_err(), "flip at {pos}");
            if pos < prefix_len {
                assert!(open(&ring, &bad).is_err(), "prefix flip at {pos}");
            } else if pos < footer {
                let i = ((pos - prefix_len) / (64 + 16)) as u64;
                let err = opened.decrypt_chunk(i, &bad[chunk_bytes(&opened, i)]);
                assert!(
                    matches!(&err, Err(CryptoError::Authentication { part }) if *part == format!("chunk {i}")),
                    "chunk flip at {pos}: {err:?}"
                );
            } else {
                let err = opened.read_footer(&bad[footer..]);
                assert!(
                    matches!(&err, Err(CryptoError::Authentication { part }) if part == "footer"),
                    "footer flip at {pos}: {err:?}"
                );
            }
        }
    }
}

#[test]
fn prefix_tampering_names_the_part() {
    let ring = ring();
    let (_, obj) = small_object(&ring);
    let prefix_len = open(&ring, &obj).unwrap().prefix_len() as usize;
    // Last byte of the wrapped DEK (header ends just before the header tag).
    let mut bad = obj.clone();
    bad[prefix_len - 17] ^= 1;
    assert!(matches!(
        open(&ring, &bad),
        Err(CryptoError::Authentication { part }) if part == "wrapped data key"
    ));
    // The header tag itself.
    let mut bad = obj.clone();
    bad[prefix_len - 1] ^= 1;
    assert!(matches!(
        open(&ring, &bad),
        Err(CryptoError::Authentication { part }) if part == "header"
    ));
    // The sequence number: a valid header, but not the authenticated one.
    let mut bad = obj.clone();
    // magic, version, header_len, format, camera "cam-a", stream "main", start, end, id.
    let seq_off = 13 + 1 + 6 + 5 + 8 + 8 + 16;
    assert_eq!(obj[seq_off..seq_off + 8], 1u64.to_le_bytes());
    bad[seq_off] = 2;
    assert!(matches!(
        open(&ring, &bad),
        Err(CryptoError::Authentication { part }) if part == "header"
    ));
}

#[test]
fn every_truncation_is_detected() {
    let ring = ring();
    let (_, obj) = small_object(&ring);
    for cut in 0..obj.len() {
        let short = &obj[..cut];
        assert!(
            decrypt_all(&ring, short, cut as u64).is_err(),
            "cut to {cut} undetected"
        );
        assert!(
            matches!(
                decrypt_all(&ring, short, obj.len() as u64),
                Err(CryptoError::Truncated { .. })
            ),
            "short read at {cut}"
        );
    }
}

#[test]
fn dropped_chunks_are_detected() {
    let ring = ring();
    for plain_len in [200usize, 256] {
        let obj = encrypt(&ring, 64, &plaintext(plain_len));
        let opened = open(&ring, &obj).unwrap();
        let footer = opened.footer_range();
        let footer = &obj[footer.start as usize..];
        let n = opened.chunk_count();
        for drop in 0..n {
            let r = chunk_bytes(&opened, drop);
            let mut bad = obj[..r.start].to_vec();
            bad.extend_from_slice(&obj[r.end..]);
            assert!(
                decrypt_all_bytes(&ring, &bad, bad.len() as u64).is_err(),
                "dropping chunk {drop} of {plain_len}"
            );
        }
        // Footer dropped: the last chunk is read as (part of) a footer.
        let no_footer = &obj[..obj.len() - FOOTER_LEN as usize];
        assert!(decrypt_all_bytes(&ring, no_footer, no_footer.len() as u64).is_err());
        // Last chunk dropped, footer kept.
        let mut bad = obj[..chunk_bytes(&opened, n - 1).start].to_vec();
        bad.extend_from_slice(footer);
        assert!(decrypt_all_bytes(&ring, &bad, bad.len() as u64).is_err());
    }
}

#[test]
fn reordered_chunks_are_detected() {
    let ring = ring();
    // 4 full chunks: the last is full-size too, so every pair can be swapped.
    let obj = encrypt(&ring, 64, &plaintext(256));
    let opened = open(&ring, &obj).unwrap();
    assert_eq!(opened.chunk_count(), 4);
    for a in 0..4 {
        for b in a + 1..4 {
            let (ra, rb) = (chunk_bytes(&opened, a), chunk_bytes(&opened, b));
            let mut bad = obj.clone();
            bad[ra.clone()].copy_from_slice(&obj[rb.clone()]);
            bad[rb].copy_from_slice(&obj[ra]);
            assert!(
                decrypt_all_bytes(&ring, &bad, bad.len() as u64).is_err(),
                "swap {a} {b}"
            );
            assert!(stream_decrypt(&ring, &bad, &[1000]).is_err());
        }
    }
}

#[test]
fn chunks_and_footers_do_not_move_between_objects() {
    let ring = ring();
    let plain = plaintext(200);
    let a = encrypt(&ring, 64, &plain);
    let b = encrypt(&ring, 64, &plain);
    assert_ne!(a, b, "fresh data key per segment");
    let opened_a = open(&ring, &a).unwrap();
    let r = chunk_bytes(&opened_a, 1);
    let mut spliced = a.clone();
    spliced[r.clone()].copy_from_slice(&b[r]);
    assert!(decrypt_all_bytes(&ring, &spliced, a.len() as u64).is_err());
    let f = opened_a.footer_range().start as usize;
    assert!(opened_a.read_footer(&b[f..]).is_err());
    // B's prefix on A's body.
    let mut spliced = b[..opened_a.prefix_len() as usize].to_vec();
    spliced.extend_from_slice(&a[opened_a.prefix_len() as usize..]);
    assert!(decrypt_all_bytes(&ring, &spliced, a.len() as u64).is_err());
}

#[test]
fn segment_of_another_camera_is_a_mismatch() {
    let ring = ring();
    let meta_a = meta_for("cam-a", 1);
    let meta_b = meta_for("cam-b", 1);
    let obj = encrypt_with(ring.active(), &meta_a, 64, b"camera a", PIECES);
    let opened = open(&ring, &obj).unwrap();
    opened
        .check_expected(&meta_a.camera, &meta_a.segment_id)
        .unwrap();
    let err = opened
        .check_expected(&meta_b.camera, &meta_b.segment_id)
        .unwrap_err();
    match err {
        CryptoError::Mismatch { expected, found } => {
            assert!(expected.contains("cam-b"), "{expected}");
            assert!(found.contains("cam-a"), "{found}");
        }
        other => panic!("{other:?}"),
    }
    // Same camera, other segment.
    let other = meta_for("cam-a", 2);
    assert!(matches!(
        opened.check_expected(&meta_a.camera, &other.segment_id),
        Err(CryptoError::Mismatch { .. })
    ));
}

#[test]
fn unknown_and_wrong_keys_are_detected() {
    let ring = ring();
    let obj = encrypt(&ring, 64, b"secret");
    let other = Keyring::generate(key_id("k9"));
    assert!(matches!(
        open(&other, &obj),
        Err(CryptoError::UnknownKey(id)) if id.as_str() == "k1"
    ));
    // Same id, different key material.
    let impostor = Keyring::generate(key_id("k1"));
    assert!(matches!(
        open(&impostor, &obj),
        Err(CryptoError::Authentication { part }) if part == "wrapped data key"
    ));
}

#[test]
fn rotation_keeps_old_segments_readable() {
    let mut ring = ring();
    let old = encrypt(&ring, 64, b"before rotation");
    ring.rotate(key_id("k2")).unwrap();
    let new = encrypt(&ring, 64, b"after rotation");
    assert_eq!(open(&ring, &old).unwrap().key_id().as_str(), "k1");
    assert_eq!(open(&ring, &new).unwrap().key_id().as_str(), "k2");
    assert_eq!(
        decrypt_all_bytes(&ring, &old, old.len() as u64).unwrap(),
        b"before rotation"
    );
    assert_eq!(
        decrypt_all_bytes(&ring, &new, new.len() as u64).unwrap(),
        b"after rotation"
    );
}

#[test]
fn impossible_layouts_and_bad_calls_are_refused() {
    let ring = ring();
    let obj = encrypt(&ring, 64, &plaintext(200));
    let opened = open(&ring, &obj).unwrap();
    let p = opened.prefix_len();
    // Body of one full chunk plus a tag-only (empty) last chunk.
    assert!(matches!(
        OpenedSegment::open(&ring, &obj, p + 80 + 16 + FOOTER_LEN),
        Err(CryptoError::Malformed(_))
    ));
    // Body of one full chunk plus 5 bytes: shorter than a tag.
    assert!(matches!(
        OpenedSegment::open(&ring, &obj, p + 80 + 5 + FOOTER_LEN),
        Err(CryptoError::Malformed(_))
    ));
    assert!(matches!(
        OpenedSegment::open(&ring, &obj, p + FOOTER_LEN),
        Err(CryptoError::Truncated { .. })
    ));
    assert!(matches!(
        OpenedSegment::open(&ring, &obj[..p as usize - 1], obj.len() as u64),
        Err(CryptoError::Truncated { .. })
    ));
    assert!(matches!(
        opened.decrypt_chunk(4, &[]),
        Err(CryptoError::ChunkOutOfRange { index: 4, count: 4 })
    ));
    let r = chunk_bytes(&opened, 0);
    assert!(matches!(
        opened.decrypt_chunk(0, &obj[r.start..r.end - 1]),
        Err(CryptoError::Truncated { .. })
    ));
    assert!(matches!(
        opened.decrypt_chunk(0, &obj[r.start..r.end + 1]),
        Err(CryptoError::Malformed(_))
    ));
    // Bytes past the footer.
    let mut dec = StreamDecryptor::new(opened.clone());
    dec.push(&obj[p as usize..]).unwrap();
    assert!(matches!(dec.push(&[0]), Err(CryptoError::Malformed(_))));
    // Stopping early.
    let mut dec = StreamDecryptor::new(opened);
    dec.push(&obj[p as usize..obj.len() - 1]).unwrap();
    assert!(matches!(dec.finish(), Err(CryptoError::Truncated { .. })));
}

#[test]
fn chunk_layout_helpers_agree() {
    let ring = ring();
    let obj = encrypt(&ring, 64, &plaintext(200));
    let o = open(&ring, &obj).unwrap();
    assert_eq!(o.chunk_indices(0..200), 0..4);
    assert_eq!(o.chunk_indices(63..65), 0..2);
    assert_eq!(o.chunk_indices(64..128), 1..2);
    assert_eq!(o.chunk_indices(199..1000), 3..4);
    assert!(o.chunk_indices(200..300).is_empty());
    assert!(o.chunk_indices(10..10).is_empty());
    assert_eq!(o.chunk_plain_offset(3), 192);
    assert_eq!(o.chunk_object_range(0).start, o.prefix_len());
    assert_eq!(o.chunk_object_range(3).end, o.footer_range().start);
    assert!(o.chunk_object_range(4).is_empty());
    for i in 0..3 {
        assert_eq!(
            o.chunk_object_range(i).end,
            o.chunk_object_range(i + 1).start
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn random_ranges_read_back(
        len in 0usize..6000,
        cs in prop::sample::select(vec![1u32, 7, 64, 1000, 4096]),
        a in 0u64..7000,
        b in 0u64..7000,
    ) {
        let ring = ring();
        let plain = plaintext(len);
        let obj = encrypt(&ring, cs, &plain);
        let opened = open(&ring, &obj).unwrap();
        let (lo, hi) = (a.min(b), a.max(b));
        let got = read_range(&opened, &obj, lo..hi);
        let lo_c = (lo as usize).min(len);
        let hi_c = (hi as usize).min(len);
        prop_assert_eq!(got, plain[lo_c..hi_c].to_vec());
    }

    #[test]
    fn random_splits_round_trip(
        len in 0usize..5000,
        cs in 1u32..600,
        enc_sizes in prop::collection::vec(0usize..1500, 1..6),
        dec_sizes in prop::collection::vec(1usize..1500, 1..6),
    ) {
        let ring = ring();
        let plain = plaintext(len);
        let obj = encrypt_with(ring.active(), &meta(), cs, &plain, &enc_sizes);
        let (got, footer) = stream_decrypt(&ring, &obj, &dec_sizes).unwrap();
        prop_assert_eq!(&got, &plain);
        prop_assert_eq!(footer.plaintext_len, len as u64);
    }
}
