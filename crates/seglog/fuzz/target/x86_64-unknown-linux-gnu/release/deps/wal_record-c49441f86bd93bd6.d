/work/main/crates/seglog/fuzz/target/x86_64-unknown-linux-gnu/release/deps/wal_record-c49441f86bd93bd6.d: fuzz_targets/wal_record.rs

/work/main/crates/seglog/fuzz/target/x86_64-unknown-linux-gnu/release/deps/wal_record-c49441f86bd93bd6: fuzz_targets/wal_record.rs

fuzz_targets/wal_record.rs:
