/work/main/crates/seglog/fuzz/target/x86_64-unknown-linux-gnu/release/deps/seglog-a2fa1aad1f07b328.d: /work/main/crates/seglog/src/lib.rs /work/main/crates/seglog/src/fs.rs /work/main/crates/seglog/src/fuzzing.rs /work/main/crates/seglog/src/record.rs

/work/main/crates/seglog/fuzz/target/x86_64-unknown-linux-gnu/release/deps/libseglog-a2fa1aad1f07b328.rlib: /work/main/crates/seglog/src/lib.rs /work/main/crates/seglog/src/fs.rs /work/main/crates/seglog/src/fuzzing.rs /work/main/crates/seglog/src/record.rs

/work/main/crates/seglog/fuzz/target/x86_64-unknown-linux-gnu/release/deps/libseglog-a2fa1aad1f07b328.rmeta: /work/main/crates/seglog/src/lib.rs /work/main/crates/seglog/src/fs.rs /work/main/crates/seglog/src/fuzzing.rs /work/main/crates/seglog/src/record.rs

/work/main/crates/seglog/src/lib.rs:
/work/main/crates/seglog/src/fs.rs:
/work/main/crates/seglog/src/fuzzing.rs:
/work/main/crates/seglog/src/record.rs:
