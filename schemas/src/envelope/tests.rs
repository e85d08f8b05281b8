use proptest::prelude::*;

use super::*;
use crate::reading::{ReadingColumns, readings_from_batch};

fn sample(rows: usize) -> RecordBatch {
    let mut cols = ReadingColumns::with_capacity(rows);
    for i in 0..rows {
        cols.push(
            &format!("dev-{}", i % 3),
            "temp",
            1_700_000_000_000_000 + i as i64 * 1000,
            i as f64 * 0.5,
        );
    }
    cols.finish()
}

#[test]
fn roundtrip_preserves_header_and_rows() {
    let batch = sample(100);
    let (header, bytes) = encode("gw-1", 7, 42, &batch).unwrap();
    let decoded = decode(&bytes, &DecodeLimits::default()).unwrap();
    assert_eq!(decoded.header, header);
    assert_eq!(decoded.header.row_count, 100);
    assert_eq!(decoded.header.first_event_us, 1_700_000_000_000_000);
    assert_eq!(decoded.header.last_event_us, 1_700_000_000_000_000 + 99_000);
    assert_eq!(
        readings_from_batch(&decoded.readings),
        readings_from_batch(&batch)
    );
    assert_eq!(
        peek_header(&bytes, &DecodeLimits::default()).unwrap().1,
        header
    );
}

#[test]
fn payload_buffers_are_zstd_compressed() {
    let batch = sample(10_000);
    let (_, bytes) = encode("gw", 1, 1, &batch).unwrap();
    let mut plain = Vec::new();
    let mut writer = StreamWriter::try_new(&mut plain, &batch.schema()).unwrap();
    writer.write(&batch).unwrap();
    writer.finish().unwrap();
    drop(writer);
    assert!(
        bytes.len() * 3 < plain.len(),
        "envelope {} bytes vs uncompressed stream {} bytes",
        bytes.len(),
        plain.len()
    );
}

#[test]
fn rejects_every_truncation() {
    let (_, bytes) = encode("gw", 1, 1, &sample(20)).unwrap();
    for cut in 0..bytes.len() {
        assert!(
            decode(&bytes[..cut], &DecodeLimits::default()).is_err(),
            "cut at {cut}"
        );
    }
}

#[test]
fn rejects_oversized_envelope_before_reading_it() {
    let (_, bytes) = encode("gw", 1, 1, &sample(20)).unwrap();
    let limits = DecodeLimits {
        max_envelope_bytes: bytes.len() - 1,
        ..DecodeLimits::default()
    };
    assert!(matches!(
        decode(&bytes, &limits),
        Err(DecodeError::TooLarge { .. })
    ));
}

#[test]
fn rejects_batches_over_the_row_limit() {
    let (_, bytes) = encode("gw", 1, 1, &sample(20)).unwrap();
    let limits = DecodeLimits {
        max_rows: 19,
        ..DecodeLimits::default()
    };
    assert!(matches!(
        decode(&bytes, &limits),
        Err(DecodeError::TooManyRows { .. })
    ));
}

#[test]
fn rejects_payload_that_would_decompress_past_the_limit() {
    let (_, bytes) = encode("gw", 1, 1, &sample(1000)).unwrap();
    let limits = DecodeLimits {
        max_decoded_bytes: 1000,
        ..DecodeLimits::default()
    };
    assert!(matches!(
        decode(&bytes, &limits),
        Err(DecodeError::DecodedTooLarge { .. })
    ));
}

#[test]
fn a_compression_bomb_is_refused_before_anything_is_allocated() {
    // A real envelope whose compressed timestamp buffer now declares 400 MB
    // once decompressed: within the absolute limit, far past what 10 KB on
    // the wire can honestly hold.
    let (_, mut bytes) = encode("gw", 1, 1, &sample(1000)).unwrap();
    let declared = 8000i64.to_le_bytes();
    let at = bytes
        .windows(8)
        .position(|w| w == declared)
        .expect("the timestamp buffer's length prefix");
    bytes[at..at + 8].copy_from_slice(&400_000_000i64.to_le_bytes());
    reseal(&mut bytes);
    assert!(bytes.len() < 20_000);
    assert!(matches!(
        decode(&bytes, &DecodeLimits::default()),
        Err(DecodeError::DecodedTooLarge { limit }) if limit < 64 * 1024 * 1024
    ));
}

#[test]
fn highly_compressible_real_readings_stay_within_the_expansion_limit() {
    // A flat-lining sensor: one series, one value, a reading a second.
    let mut cols = ReadingColumns::with_capacity(200_000);
    for i in 0..200_000 {
        cols.push(
            "pump-7",
            "pressure",
            1_700_000_000_000_000 + i * 1_000_000,
            1.0,
        );
    }
    let (_, bytes) = encode("gw", 1, 1, &cols.finish()).unwrap();
    let decoded = decode(&bytes, &DecodeLimits::default()).unwrap();
    assert_eq!(decoded.readings.num_rows(), 200_000);
}

#[test]
fn rejects_unknown_future_version_with_a_typed_error() {
    let (_, mut bytes) = encode("gw", 1, 1, &sample(3)).unwrap();
    bytes[4..6].copy_from_slice(&(CURRENT_VERSION + 1).to_le_bytes());
    assert_eq!(
        decode(&bytes, &DecodeLimits::default()).unwrap_err(),
        DecodeError::UnsupportedVersion(CURRENT_VERSION + 1)
    );
}

#[test]
fn detects_corruption_with_the_checksum() {
    let (_, bytes) = encode("gw", 1, 1, &sample(50)).unwrap();
    for at in PREAMBLE_LEN..bytes.len() {
        let mut corrupt = bytes.clone();
        corrupt[at] ^= 0x40;
        assert_eq!(
            decode(&corrupt, &DecodeLimits::default()).unwrap_err(),
            DecodeError::Checksum,
            "flip at {at}"
        );
    }
}

#[test]
fn rejects_header_that_disagrees_with_payload() {
    // A sender that computes a valid checksum over a lying header.
    let batch = sample(10);
    let (_, bytes) = encode("gw", 1, 1, &batch).unwrap();
    let header_len = u16::from_le_bytes([bytes[6], bytes[7]]) as usize;
    let mut forged = bytes.clone();
    // row_count sits after gateway_len(1) + "gw"(2) + incarnation(8) + seq(8).
    let at = PREAMBLE_LEN + 1 + 2 + 16;
    forged[at..at + 4].copy_from_slice(&11u32.to_le_bytes());
    let crc = crc32c::crc32c(&forged[PREAMBLE_LEN..]);
    forged[12..16].copy_from_slice(&crc.to_le_bytes());
    assert!(header_len > 0);
    assert_eq!(
        decode(&forged, &DecodeLimits::default()).unwrap_err(),
        DecodeError::RowCountMismatch {
            declared: 11,
            actual: 10
        }
    );
}

/// Re-seals a mutated envelope with a valid checksum so the mutation reaches
/// the header and Arrow decoders instead of being stopped by the CRC.
fn reseal(bytes: &mut [u8]) {
    if bytes.len() >= PREAMBLE_LEN {
        let crc = crc32c::crc32c(&bytes[PREAMBLE_LEN..]);
        bytes[12..16].copy_from_slice(&crc.to_le_bytes());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode(&bytes, &DecodeLimits::default());
    }

    #[test]
    fn resealed_mutations_never_panic(
        rows in 1usize..64,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let (_, mut bytes) = encode("gw-prop", 3, 9, &sample(rows)).unwrap();
        for (index, byte) in edits {
            let at = PREAMBLE_LEN + index.index(bytes.len() - PREAMBLE_LEN);
            bytes[at] = byte;
        }
        reseal(&mut bytes);
        if let Ok(batch) = decode(&bytes, &DecodeLimits::default()) {
            // Whatever survives must be self-consistent.
            prop_assert_eq!(batch.readings.num_rows(), batch.header.row_count as usize);
        }
    }

    #[test]
    fn resealed_truncated_payloads_never_panic(rows in 1usize..64, cut in any::<prop::sample::Index>()) {
        let (_, bytes) = encode("gw", 1, 1, &sample(rows)).unwrap();
        let header_len = u16::from_le_bytes([bytes[6], bytes[7]]) as usize;
        let payload_start = PREAMBLE_LEN + header_len;
        let keep = payload_start + cut.index(bytes.len() - payload_start);
        let mut short = bytes[..keep].to_vec();
        let payload_len = (keep - payload_start) as u32;
        short[8..12].copy_from_slice(&payload_len.to_le_bytes());
        reseal(&mut short);
        prop_assert!(decode(&short, &DecodeLimits::default()).is_err());
    }

    #[test]
    fn roundtrip_any_readings(
        rows in proptest::collection::vec(("[a-z0-9-]{1,12}", "[a-z_]{1,8}", any::<i64>(), any::<f64>()), 1..50),
        incarnation in any::<u64>(),
        seq in 1..u64::MAX,
    ) {
        let mut cols = ReadingColumns::default();
        for (d, m, t, v) in &rows {
            cols.push(d, m, *t, *v);
        }
        let batch = cols.finish();
        let (header, bytes) = encode("gw", incarnation, seq, &batch).unwrap();
        let decoded = decode(&bytes, &DecodeLimits::default()).unwrap();
        prop_assert_eq!(decoded.header, header);
        let back = readings_from_batch(&decoded.readings);
        for (r, (d, m, t, v)) in back.iter().zip(&rows) {
            prop_assert_eq!(&r.device, d);
            prop_assert_eq!(&r.metric, m);
            prop_assert_eq!(r.ts_us, *t);
            prop_assert_eq!(r.value.to_bits(), v.to_bits());
        }
    }
}

#[test]
fn sequence_numbers_start_at_one() {
    assert!(matches!(
        encode("gw", 1, 0, &sample(1)),
        Err(EncodeError::ZeroSeq)
    ));
    let (_, mut bytes) = encode("gw", 1, 1, &sample(1)).unwrap();
    let at = PREAMBLE_LEN + 1 + 2 + 8;
    bytes[at..at + 8].copy_from_slice(&0u64.to_le_bytes());
    reseal(&mut bytes);
    assert_eq!(
        decode(&bytes, &DecodeLimits::default()).unwrap_err(),
        DecodeError::Header("sequence numbers start at 1")
    );
}

/// The envelope is an open format: this one was written by pyarrow plus a few
/// lines of Python (see schemas/fuzz/corpus), not by our encoder.
#[test]
fn decodes_an_envelope_written_by_another_implementation() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fuzz/corpus/envelope_decode/valid-20-rows"
    );
    let bytes = std::fs::read(path).unwrap();
    let batch = decode(&bytes, &DecodeLimits::default()).unwrap();
    assert_eq!(
        (
            batch.header.gateway.as_str(),
            batch.header.incarnation,
            batch.header.seq
        ),
        ("gw-1", 7, 1)
    );
    let rows = readings_from_batch(&batch.readings);
    assert_eq!(rows.len(), 20);
    assert_eq!(
        (
            rows[4].device.as_str(),
            rows[4].metric.as_str(),
            rows[4].value
        ),
        ("pump-1", "temp", 24.0)
    );
    assert_eq!(rows[19].ts_us, 1_700_000_000_000_000 + 19_000_000);
}

/// Inputs found by the `envelope_decode_resealed` fuzz target that made Arrow
/// panic (a column type tag NONE; a validity bitmap shorter than its column;
/// variadic buffer counts without view columns; a schema without fields;
/// a misaligned offsets buffer; an offsets buffer of a ragged length).
/// They must be refused by our own checks before Arrow runs, not merely
/// caught by `catch_unwind`.
#[test]
fn fuzz_regressions_are_refused_before_arrow() {
    for name in [
        "regression-schema-type-none",
        "regression-short-validity-bitmap",
    ] {
        let path = format!(
            "{}/fuzz/corpus/envelope_decode_resealed/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let mut bytes = std::fs::read(path).unwrap();
        reseal(&mut bytes);
        match decode(&bytes, &DecodeLimits::default()) {
            Err(DecodeError::Payload(msg)) => assert!(!msg.contains("panicked"), "{name}: {msg}"),
            other => panic!("{name}: expected a payload error, got {other:?}"),
        }
    }
}
