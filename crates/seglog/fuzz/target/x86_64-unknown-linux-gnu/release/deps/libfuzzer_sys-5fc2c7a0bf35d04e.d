/work/main/crates/seglog/fuzz/target/x86_64-unknown-linux-gnu/release/deps/libfuzzer_sys-5fc2c7a0bf35d04e.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/libfuzzer-sys-0.4.13/src/lib.rs

/work/main/crates/seglog/fuzz/target/x86_64-unknown-linux-gnu/release/deps/liblibfuzzer_sys-5fc2c7a0bf35d04e.rlib: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/libfuzzer-sys-0.4.13/src/lib.rs

/work/main/crates/seglog/fuzz/target/x86_64-unknown-linux-gnu/release/deps/liblibfuzzer_sys-5fc2c7a0bf35d04e.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/libfuzzer-sys-0.4.13/src/lib.rs

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/libfuzzer-sys-0.4.13/src/lib.rs:
