/work/main/crates/seglog/fuzz/target/x86_64-unknown-linux-gnu/release/deps/spool_record-6a7b83c60cf54570.d: fuzz_targets/spool_record.rs

/work/main/crates/seglog/fuzz/target/x86_64-unknown-linux-gnu/release/deps/spool_record-6a7b83c60cf54570: fuzz_targets/spool_record.rs

fuzz_targets/spool_record.rs:
