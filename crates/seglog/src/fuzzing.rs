//! The bodies of this crate's fuzz targets (`crates/seglog/fuzz`), here so
//! that an ordinary `cargo test` replays the committed corpora through
//! exactly what the fuzzer runs. The input is a segment file's bytes, as a
//! disk may hand them back: opening must never panic or wedge, and whatever
//! it keeps must read back.

use crate::fs::{FaultyFs, LogFs};
use crate::{Log, LogOptions, record};

fn check(data: &[u8], with_meta: bool) {
    let opts = LogOptions {
        suffix: ".log",
        with_meta,
        segment_bytes: 1 << 16,
        max_record: 1 << 16,
        payload_check: None,
    };
    // The scan: records in order, inside the image, not overlapping gaps.
    let scan = record::scan(data, 0, None, &opts);
    let mut end = 0u64;
    for r in &scan.records {
        assert!(r.offset >= end && r.offset + r.size(opts.meta_len()) <= data.len() as u64);
        end = r.offset + r.size(opts.meta_len());
    }
    assert!(scan.records.windows(2).all(|w| w[0].id < w[1].id));
    // Opening a log whose segment holds these bytes (and a later, intact
    // one): never a panic, every kept record reads back.
    let mut fs = FaultyFs::default();
    let name = format!("{:020}.log", 0);
    fs.create(&name).expect("memory");
    fs.append(&name, data).expect("memory");
    fs.sync(&name).expect("memory");
    let Ok((mut log, _)) = Log::open(fs, opts, 0) else {
        return;
    };
    let ids: Vec<u64> = log.entries().map(|e| e.id).collect();
    for id in ids {
        assert!(log.read(id).expect("a kept record reads back").is_some());
    }
    let next = log.next_id();
    assert_eq!(log.append(0, b"after").expect("appends go on").id, next);
}

/// A WAL segment's bytes (records without metadata).
pub fn wal_record(data: &[u8]) {
    check(data, false);
}

/// A spool segment's bytes (records with 8 bytes of metadata).
pub fn spool_record(data: &[u8]) {
    check(data, true);
}

#[cfg(test)]
mod tests {
    /// Every committed corpus input, through its target's body.
    #[test]
    fn fuzz_corpora_replay() {
        schemas::fuzzing::replay_corpora(
            env!("CARGO_MANIFEST_DIR"),
            &[
                ("wal_record", super::wal_record),
                ("spool_record", super::spool_record),
            ],
        );
    }
}
