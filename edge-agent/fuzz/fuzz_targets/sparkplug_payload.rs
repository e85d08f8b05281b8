//! Untrusted Sparkplug B payloads, birth then data on one alias table:
//! typed rejection, never a panic.
#![no_main]

use edge_agent::sparkplug::SparkplugState;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut state = SparkplugState::default();
    let half = data.len() / 2;
    let _ = state.decode(
        "spBv1.0/g/DBIRTH/node/dev",
        &data[..half],
        1_700_000_000_000_000,
    );
    if let Ok(decoded) = state.decode(
        "spBv1.0/g/DDATA/node/dev",
        &data[half..],
        1_700_000_000_000_000,
    ) {
        assert!(decoded.readings.iter().all(|r| r.value.is_finite()));
    }
});
