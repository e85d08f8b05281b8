use std::collections::BTreeMap;

use proptest::prelude::*;

use super::fs::{DirFs, Fault, FaultyFs, LogFs};
use super::*;

fn opts(segment_bytes: u64) -> LogOptions {
    LogOptions {
        suffix: ".log",
        with_meta: true,
        segment_bytes,
        max_record: 1 << 20,
        payload_check: None,
    }
}

fn open(fs: FaultyFs) -> (Log<FaultyFs>, Recovery) {
    Log::open(fs, opts(256), 0).unwrap()
}

fn payloads(log: &mut Log<FaultyFs>) -> Vec<(u64, Vec<u8>)> {
    let ids: Vec<u64> = log.entries().map(|e| e.id).collect();
    ids.into_iter()
        .map(|id| (id, log.read(id).unwrap().unwrap()))
        .collect()
}

#[test]
fn a_flipped_byte_costs_only_the_record_it_hit() {
    let (mut log, _) = Log::open(FaultyFs::default(), opts(1 << 20), 0).unwrap();
    for i in 0..10u8 {
        log.append(u64::from(i), &[i; 100]).unwrap();
    }
    log.sync().unwrap();
    let name = log.segments().next().unwrap().name().to_owned();
    let hit = log.entry(4).unwrap().offset + 40;
    let mut fs = log.into_fs();
    fs.flip(&name, hit);
    let (mut log, rec) = open(fs);
    assert_eq!(rec.damage.len(), 1);
    assert_eq!(rec.damage[0].lost, Lost::Ids { first: 4, last: 4 });
    assert_eq!(rec.damage[0].bytes, 124);
    let got: Vec<u64> = payloads(&mut log).into_iter().map(|(id, _)| id).collect();
    assert_eq!(got, vec![0, 1, 2, 3, 5, 6, 7, 8, 9]);
    assert_eq!(log.entry(7).unwrap().meta, 7, "metadata survives");
    // The damage was quarantined and cut out: the next open reports nothing.
    let mut fs = log.into_fs();
    assert!(fs.list().unwrap().contains(&format!("{name}.corrupt")));
    let (log, rec) = open(fs);
    assert!(rec.damage.is_empty(), "{rec:?}");
    assert_eq!(rec.records, 9);
    assert_eq!(log.next_id(), 10);
}

#[test]
fn a_record_whose_length_or_id_field_was_hit_is_repaired() {
    for field_byte in [1, 9] {
        let (mut log, _) = Log::open(FaultyFs::default(), opts(1 << 20), 0).unwrap();
        for i in 0..6u8 {
            log.append(0, &[i; 50]).unwrap();
        }
        log.sync().unwrap();
        let name = log.segments().next().unwrap().name().to_owned();
        for id in [2, 5] {
            let at = log.entry(id).unwrap().offset + field_byte;
            log.fs_mut().flip(&name, at);
        }
        let (mut log, rec) = open(log.into_fs());
        assert!(rec.damage.is_empty(), "{rec:?}");
        assert_eq!(payloads(&mut log)[2], (2, vec![2; 50]));
        assert_eq!(payloads(&mut log)[5], (5, vec![5; 50]));
        let (_, rec) = open(log.into_fs());
        assert_eq!(rec.records, 6, "the repaired segment was rewritten");
    }
}

#[test]
fn a_payload_with_its_own_check_survives_a_hit_on_the_checksum_field() {
    // Payloads that end in their own CRC32C.
    fn self_checked(p: &[u8]) -> bool {
        p.len() >= 4 && crc32c::crc32c(&p[..p.len() - 4]).to_le_bytes() == p[p.len() - 4..]
    }
    let with_check = LogOptions {
        payload_check: Some(self_checked),
        ..opts(1 << 20)
    };
    let (mut log, _) = Log::open(FaultyFs::default(), with_check, 0).unwrap();
    for i in 0..5u8 {
        let mut p = vec![i; 30];
        p.extend_from_slice(&crc32c::crc32c(&p).to_le_bytes());
        log.append(0, &p).unwrap();
    }
    log.sync().unwrap();
    let name = log.segments().next().unwrap().name().to_owned();
    let at = log.entry(3).unwrap().offset + 5; // the checksum field
    log.fs_mut().flip(&name, at);
    let (mut log, rec) = Log::open(log.into_fs(), with_check, 0).unwrap();
    assert!(rec.damage.is_empty(), "{rec:?}");
    assert_eq!(log.read(3).unwrap().unwrap()[..30], [3u8; 30]);
    // Without the payload's own check the same hit costs the record.
    let (mut log, _) = Log::open(FaultyFs::default(), opts(1 << 20), 0).unwrap();
    for i in 0..5u8 {
        log.append(0, &[i; 30]).unwrap();
    }
    log.sync().unwrap();
    let at = log.entry(3).unwrap().offset + 5;
    log.fs_mut().flip(&name, at);
    let (_, rec) = open(log.into_fs());
    assert_eq!(rec.damage[0].lost, Lost::Ids { first: 3, last: 3 });
}

#[test]
fn damage_to_a_length_and_a_payload_is_resynchronised() {
    let (mut log, _) = Log::open(FaultyFs::default(), opts(1 << 20), 0).unwrap();
    for i in 0..6u8 {
        log.append(0, &[i; 50]).unwrap();
    }
    log.sync().unwrap();
    let name = log.segments().next().unwrap().name().to_owned();
    let at = log.entry(2).unwrap().offset;
    let mut fs = log.into_fs();
    fs.flip(&name, at + 1); // the length now points far past the end
    fs.flip(&name, at + 30); // and the payload is damaged
    let (mut log, rec) = open(fs);
    assert_eq!(rec.damage[0].lost, Lost::Ids { first: 2, last: 2 });
    assert_eq!(payloads(&mut log).len(), 5);
}

#[test]
fn damage_at_the_end_of_the_newest_segment_is_loss_not_a_torn_tail() {
    let (mut log, _) = Log::open(FaultyFs::default(), opts(1 << 20), 0).unwrap();
    for i in 0..3u8 {
        log.append(0, &[i; 50]).unwrap();
    }
    log.sync().unwrap();
    let name = log.segments().next().unwrap().name().to_owned();
    let at = log.entry(2).unwrap().offset + 30;
    let mut fs = log.into_fs();
    fs.flip(&name, at);
    let (log, rec) = open(fs);
    assert_eq!(rec.torn_bytes, 0);
    assert_eq!(rec.damage[0].lost, Lost::From { first: 2 });
    assert!(log.next_id() > 2, "the lost id is not handed out again");
}

#[test]
fn a_record_cut_short_is_a_torn_tail() {
    let (mut log, _) = Log::open(FaultyFs::default(), opts(1 << 20), 0).unwrap();
    log.append(0, b"first").unwrap();
    log.sync().unwrap();
    log.fs_mut().inject(Fault::ShortWrite(10));
    assert!(log.append(0, b"second").is_err());
    // The short write was cut back at once; simulate one that was not.
    let name = log.segments().next().unwrap().name().to_owned();
    let mut fs = log.into_fs();
    fs.append(&name, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
        .unwrap();
    fs.sync(&name).unwrap();
    let (mut log, rec) = open(fs);
    assert_eq!(rec.torn_bytes, 11);
    assert!(rec.damage.is_empty());
    assert_eq!(log.append(0, b"third").unwrap().id, 1);
}

#[test]
fn ids_never_go_back_after_an_idle_restart() {
    // Everything settled and deleted, then a restart with no traffic, then
    // another: the ids continue where they were.
    let (mut log, _) = open(FaultyFs::default());
    for _ in 0..20 {
        log.append(0, &[0; 60]).unwrap();
    }
    log.sync().unwrap();
    while log.pop_oldest().unwrap().is_some() {}
    assert_eq!(log.next_id(), 20);
    let (log, _) = open(log.into_fs());
    assert_eq!(log.next_id(), 20);
    let (mut log, _) = open(log.into_fs());
    assert_eq!(log.append(0, b"x").unwrap().id, 20);
}

#[test]
fn the_floor_lifts_ids_and_is_remembered() {
    let (log, _) = open(FaultyFs::default());
    let (log, _) = Log::open(log.into_fs(), opts(256), 500).unwrap();
    assert_eq!(log.next_id(), 500);
    let (mut log, _) = open(log.into_fs());
    assert_eq!(log.append(0, b"x").unwrap().id, 500);
}

#[test]
fn a_failed_fsync_stops_the_log_until_it_is_reopened() {
    let (mut log, _) = open(FaultyFs::default());
    log.append(0, b"x").unwrap();
    log.fs_mut().inject(Fault::IoError);
    assert!(log.sync().is_err());
    assert!(log.is_failed());
    assert!(matches!(log.append(0, b"y"), Err(LogError::Failed)));
}

#[test]
fn works_on_a_real_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(DirFs::new(dir.path()).unwrap(), opts(300), 0).unwrap();
    for i in 0..10u8 {
        log.append(0, &[i; 100]).unwrap();
    }
    log.sync().unwrap();
    let entry = *log.entry(3).unwrap();
    let name = log
        .segments()
        .find(|s| s.entries().contains(&entry))
        .unwrap()
        .name()
        .to_owned();
    drop(log);
    let path = dir.path().join(name);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[entry.offset as usize + 30] ^= 0x55;
    std::fs::write(&path, bytes).unwrap();
    let (mut log, rec) = Log::open(DirFs::new(dir.path()).unwrap(), opts(300), 0).unwrap();
    assert_eq!(rec.damage.len(), 1);
    assert_eq!(rec.damage[0].lost, Lost::Ids { first: 3, last: 3 });
    assert_eq!(rec.records, 9);
    assert_eq!(log.read(4).unwrap(), Some(vec![4; 100]));
    assert_eq!(log.append(0, b"next").unwrap().id, 10);
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<u8>),
    Sync,
    SettleOldest,
    PopSettled,
    Fault(Fault),
    Damage { record: usize, byte: usize },
    Crash,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => proptest::collection::vec(any::<u8>(), 0..80).prop_map(Op::Append),
        3 => Just(Op::Sync),
        2 => Just(Op::SettleOldest),
        1 => Just(Op::PopSettled),
        1 => (0usize..40).prop_map(|n| Op::Fault(Fault::ShortWrite(n))),
        1 => Just(Op::Fault(Fault::IoError)),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(record, byte)| Op::Damage { record, byte }),
        1 => Just(Op::Crash),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Debug, Clone)]
struct Expected {
    payload: Vec<u8>,
    durable: bool,
    settled: bool,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Against an in-memory model, through a filesystem that injects short
    /// writes, I/O errors, power loss and byte damage to durable records:
    /// after every reopen, each durable record that was not deleted is there
    /// with its exact bytes unless it was damaged, in which case its loss is
    /// reported; nothing that was never accepted appears; ids increase and
    /// a durable record's id is never handed out again.
    #[test]
    fn log_matches_the_model_under_faults_and_damage(ops in proptest::collection::vec(op(), 1..150)) {
        let (mut log, _) = open(FaultyFs::default());
        let mut model: BTreeMap<u64, Expected> = BTreeMap::new();
        let mut damaged: BTreeMap<u64, u32> = BTreeMap::new();
        // Highest id ever durable.
        let mut durable_high: Option<u64> = None;
        for op in ops {
            match op {
                Op::Append(p) => {
                    if let Ok(a) = log.append(0, &p) {
                        prop_assert!(durable_high.is_none_or(|h| a.id > h), "id {} reused", a.id);
                        prop_assert!(model.keys().all(|&k| k < a.id), "ids increase");
                        model.insert(a.id, Expected { payload: p, durable: false, settled: false });
                    }
                }
                Op::Sync => {
                    if log.sync().is_ok() {
                        for (id, e) in model.iter_mut() {
                            e.durable = true;
                            durable_high = durable_high.max(Some(*id));
                        }
                    }
                }
                Op::SettleOldest => {
                    let oldest = log.entries().find(|e| !e.settled).map(|e| e.id);
                    if let Some(id) = oldest {
                        log.settle(id);
                        model.get_mut(&id).expect("in the model").settled = true;
                    }
                }
                Op::PopSettled => {
                    if log.segments().len() > 1 && log.segments().next().unwrap().all_settled() {
                        for e in log.pop_oldest().unwrap().unwrap() {
                            model.remove(&e.id);
                        }
                    }
                }
                Op::Fault(f) => log.fs_mut().inject(f),
                Op::Damage { record, byte } => {
                    // Damage to bytes that are durable (a bad sector), not
                    // to a write in flight.
                    let durable: Vec<(String, u64, u64, u64)> = log
                        .segments()
                        .flat_map(|s| s.entries().iter().map(move |e| (s.name().to_owned(), e.id, e.offset, e.len)))
                        .filter(|(_, id, _, _)| model.get(id).is_some_and(|e| e.durable))
                        .map(|(n, id, off, len)| (n, id, off, log.record_size(len as usize)))
                        .collect();
                    if !durable.is_empty() {
                        let (name, id, offset, size) = &durable[record % durable.len()];
                        log.fs_mut().flip(name, offset + (byte as u64 % size));
                        *damaged.entry(*id).or_default() += 1;
                    }
                }
                Op::Crash | Op::Reopen => {
                    let mut fs = log.into_fs();
                    fs.clear_fault();
                    if matches!(op, Op::Crash) {
                        fs.crash();
                    }
                    let (reopened, rec) = open(fs);
                    log = reopened;
                    let reported = |id: u64| rec.damage.iter().any(|d| match d.lost {
                        Lost::Ids { first, last } => (first..=last).contains(&id),
                        Lost::From { first } => id >= first,
                        Lost::Nothing => false,
                    });
                    let present: Vec<u64> = log.entries().map(|e| e.id).collect();
                    prop_assert!(present.windows(2).all(|w| w[0] < w[1]), "ids in order");
                    for id in &present {
                        let e = model.get(id);
                        prop_assert!(e.is_some(), "record {} was never accepted", id);
                        let got = log.read(*id).unwrap();
                        prop_assert_eq!(got.as_deref(), Some(e.unwrap().payload.as_slice()), "payload of {}", id);
                    }
                    for (id, e) in &model {
                        if e.durable && !present.contains(id) {
                            prop_assert!(damaged.contains_key(id), "durable record {} lost without damage", id);
                            // The one blind spot: two or more hits at the end
                            // of the log (one in a length field) can look like
                            // a write cut short. A single hit never can.
                            let hits: u32 = damaged.values().sum();
                            let blind = hits >= 2 && present.iter().all(|p| p < id);
                            prop_assert!(reported(*id) || blind, "the loss of {} is not reported: {:?}", id, rec);
                        }
                    }
                    for d in &rec.damage {
                        if let Lost::Ids { first, last } = d.lost {
                            for id in first..=last {
                                prop_assert!(damaged.contains_key(&id) || !model.get(&id).is_some_and(|e| e.durable),
                                    "{} reported lost but was not damaged", id);
                            }
                        }
                    }
                    // The reopened log is the new truth.
                    model.retain(|id, _| present.contains(id));
                    for e in model.values_mut() {
                        e.durable = true;
                        e.settled = false;
                    }
                    damaged.clear();
                }
            }
        }
    }
}
