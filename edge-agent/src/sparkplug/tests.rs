use proptest::prelude::*;

use super::encode::{MetricOut, ValueOut, payload};
use super::*;

const NOW: i64 = 1_700_000_000_000_000;

fn metric(
    name: Option<&'static str>,
    alias: Option<u64>,
    datatype: u32,
    value: ValueOut,
) -> MetricOut<'static> {
    MetricOut {
        name,
        alias,
        datatype,
        value,
        timestamp_ms: None,
    }
}

#[test]
fn birth_names_aliases_that_data_messages_use() {
    let mut state = SparkplugState::default();
    let birth = payload(
        1_700_000_000_000,
        &[
            metric(Some("Temperature"), Some(1), 10, ValueOut::Double(21.5)),
            metric(Some("Pressure"), Some(2), 9, ValueOut::Float(1.5)),
        ],
    );
    let b = state
        .decode("spBv1.0/plant/DBIRTH/node1/pump7", &birth, NOW)
        .unwrap();
    assert_eq!(b.readings.len(), 2);
    assert_eq!(b.readings[0].device, "node1/pump7");
    assert_eq!(b.readings[0].ts_us, 1_700_000_000_000_000);

    let data = payload(
        1_700_000_001_000,
        &[metric(None, Some(2), 9, ValueOut::Float(1.75))],
    );
    let d = state
        .decode("spBv1.0/plant/DDATA/node1/pump7", &data, NOW)
        .unwrap();
    assert_eq!(
        (d.readings[0].metric.as_str(), d.readings[0].value),
        ("Pressure", 1.75)
    );
}

#[test]
fn unknown_alias_is_counted_not_guessed() {
    let mut state = SparkplugState::default();
    let data = payload(1, &[metric(None, Some(9), 10, ValueOut::Double(1.0))]);
    assert_eq!(
        state.decode("spBv1.0/g/DDATA/n/d", &data, NOW),
        Err(Rejection::NoNumericValue)
    );
    let mixed = payload(
        1,
        &[
            metric(None, Some(9), 10, ValueOut::Double(1.0)),
            metric(Some("x"), None, 10, ValueOut::Double(2.0)),
        ],
    );
    let d = state.decode("spBv1.0/g/DDATA/n/d", &mixed, NOW).unwrap();
    assert_eq!((d.readings.len(), d.skipped_fields), (1, 1));
}

#[test]
fn signed_and_boolean_datatypes() {
    let mut state = SparkplugState::default();
    let p = payload(
        5,
        &[
            metric(Some("i8"), None, datatype::INT8, ValueOut::Int(0xFF)),
            metric(Some("i32"), None, datatype::INT32, ValueOut::Int(u32::MAX)),
            metric(Some("i64"), None, datatype::INT64, ValueOut::Long(u64::MAX)),
            metric(Some("u32"), None, 7, ValueOut::Int(4_000_000_000)),
            metric(Some("flag"), None, 11, ValueOut::Bool(true)),
        ],
    );
    let d = state.decode("spBv1.0/g/NDATA/edge1", &p, NOW).unwrap();
    let values: Vec<f64> = d.readings.iter().map(|r| r.value).collect();
    assert_eq!(values, vec![-1.0, -1.0, -1.0, 4e9, 1.0]);
    assert_eq!(d.readings[0].device, "edge1");
}

#[test]
fn an_nbirth_resets_the_nodes_aliases() {
    let mut state = SparkplugState::default();
    state
        .decode(
            "spBv1.0/g/NBIRTH/n",
            &payload(1, &[metric(Some("a"), Some(1), 10, ValueOut::Double(1.0))]),
            NOW,
        )
        .unwrap();
    state
        .decode(
            "spBv1.0/g/NBIRTH/n",
            &payload(2, &[metric(Some("b"), Some(2), 10, ValueOut::Double(1.0))]),
            NOW,
        )
        .unwrap();
    let data = payload(3, &[metric(None, Some(1), 10, ValueOut::Double(5.0))]);
    assert_eq!(
        state.decode("spBv1.0/g/NDATA/n", &data, NOW),
        Err(Rejection::NoNumericValue)
    );
}

fn with_seq(seq: u64, metrics: &[MetricOut<'static>]) -> Vec<u8> {
    super::encode::payload_with_seq(1_700_000_000_000, Some(seq), metrics)
}

fn bd(n: u64) -> MetricOut<'static> {
    metric(
        Some(BD_SEQ_METRIC),
        None,
        datatype::INT64,
        ValueOut::Long(n),
    )
}

/// The rebirth commands queued, as (topic, is a rebirth request).
fn commands(state: &mut SparkplugState) -> Vec<String> {
    state
        .take_commands()
        .into_iter()
        .map(|(topic, payload)| {
            let p = parse_payload(&payload).unwrap();
            assert_eq!(p.metrics[0].name.as_deref(), Some(REBIRTH_METRIC));
            assert_eq!(p.metrics[0].value, Some(Value::Bool(true)));
            topic
        })
        .collect()
}

#[test]
fn data_from_a_node_whose_birth_was_missed_asks_it_for_a_rebirth_once() {
    let mut state = SparkplugState::default();
    let data = with_seq(7, &[metric(None, Some(1), 10, ValueOut::Double(5.0))]);
    assert!(state.decode("spBv1.0/plant/NDATA/n1", &data, NOW).is_err());
    assert_eq!(commands(&mut state), vec!["spBv1.0/plant/NCMD/n1"]);
    // Not again within the interval, however much data comes.
    let more = with_seq(8, &[metric(None, Some(1), 10, ValueOut::Double(6.0))]);
    assert!(state.decode("spBv1.0/plant/NDATA/n1", &more, NOW).is_err());
    assert!(commands(&mut state).is_empty());
    // The rebirth names the alias; data flows; bdSeq is not a reading.
    let birth = with_seq(
        0,
        &[
            metric(Some("temp"), Some(1), 10, ValueOut::Double(5.0)),
            bd(3),
        ],
    );
    let b = state
        .decode("spBv1.0/plant/NBIRTH/n1", &birth, NOW)
        .unwrap();
    assert_eq!(b.readings.len(), 1);
    let next = with_seq(1, &[metric(None, Some(1), 10, ValueOut::Double(7.0))]);
    let d = state.decode("spBv1.0/plant/NDATA/n1", &next, NOW).unwrap();
    assert_eq!(
        (d.readings[0].metric.as_str(), d.readings[0].value),
        ("temp", 7.0)
    );
    assert_eq!(state.rebirths_requested(), 1);
}

#[test]
fn a_gap_in_seq_asks_for_a_rebirth() {
    let mut state = SparkplugState::default();
    let m = || [metric(Some("x"), Some(1), 10, ValueOut::Double(1.0))];
    state
        .decode("spBv1.0/g/NBIRTH/n", &with_seq(0, &m()), NOW)
        .unwrap();
    state
        .decode("spBv1.0/g/NDATA/n", &with_seq(1, &m()), NOW)
        .unwrap();
    assert!(commands(&mut state).is_empty());
    state
        .decode("spBv1.0/g/NDATA/n", &with_seq(3, &m()), NOW)
        .unwrap();
    assert_eq!(commands(&mut state), vec!["spBv1.0/g/NCMD/n"]);
    // seq wraps from 255 to 0.
    let mut state = SparkplugState::default();
    state
        .decode("spBv1.0/g/NBIRTH/n", &with_seq(254, &m()), NOW)
        .unwrap();
    state
        .decode("spBv1.0/g/NDATA/n", &with_seq(255, &m()), NOW)
        .unwrap();
    state
        .decode("spBv1.0/g/NDATA/n", &with_seq(0, &m()), NOW)
        .unwrap();
    assert!(commands(&mut state).is_empty());
}

#[test]
fn only_the_current_sessions_death_ends_it() {
    let mut state = SparkplugState::default();
    let birth = with_seq(
        0,
        &[metric(Some("x"), Some(1), 10, ValueOut::Double(1.0)), bd(5)],
    );
    state.decode("spBv1.0/g/NBIRTH/n", &birth, NOW).unwrap();
    // The will of an older session, delivered late: ignored.
    let stale = payload(1, &[bd(4)]);
    assert_eq!(
        state
            .decode("spBv1.0/g/NDEATH/n", &stale, NOW)
            .unwrap()
            .readings
            .len(),
        0
    );
    let data = with_seq(1, &[metric(None, Some(1), 10, ValueOut::Double(2.0))]);
    assert_eq!(
        state
            .decode("spBv1.0/g/NDATA/n", &data, NOW)
            .unwrap()
            .readings
            .len(),
        1
    );
    // This session's death ends it: its aliases are gone.
    let death = payload(2, &[bd(5)]);
    assert!(
        state
            .decode("spBv1.0/g/NDEATH/n", &death, NOW)
            .unwrap()
            .readings
            .is_empty()
    );
    let after = with_seq(2, &[metric(None, Some(1), 10, ValueOut::Double(3.0))]);
    assert!(state.decode("spBv1.0/g/NDATA/n", &after, NOW).is_err());
    assert_eq!(commands(&mut state), vec!["spBv1.0/g/NCMD/n"]);
    // Deaths of devices and the host's own commands are not rejections.
    assert!(
        state
            .decode("spBv1.0/g/DDEATH/n/d", &payload(3, &[]), NOW)
            .is_ok()
    );
    assert!(
        state
            .decode("spBv1.0/g/NCMD/n", &super::encode::rebirth_command(1), NOW)
            .is_ok()
    );
}

#[test]
fn wrong_topics_and_truncated_payloads_are_rejected() {
    let mut state = SparkplugState::default();
    let good = payload(1, &[metric(Some("x"), None, 10, ValueOut::Double(1.0))]);
    assert_eq!(
        state.decode("spBv1.0/g/DDATA/n", &good, NOW),
        Err(Rejection::TopicMismatch)
    );
    assert_eq!(
        state.decode("spAv1.0/g/NDATA/n", &good, NOW),
        Err(Rejection::TopicMismatch)
    );
    for cut in 1..good.len() {
        assert!(
            state
                .decode("spBv1.0/g/NDATA/n", &good[..cut], NOW)
                .is_err(),
            "cut {cut}"
        );
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut state = SparkplugState::default();
        let _ = state.decode("spBv1.0/g/DBIRTH/n/d", &payload, NOW);
        let _ = state.decode("spBv1.0/g/DDATA/n/d", &payload, NOW);
    }
}
