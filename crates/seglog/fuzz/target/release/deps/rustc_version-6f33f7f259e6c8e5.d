/work/main/crates/seglog/fuzz/target/release/deps/rustc_version-6f33f7f259e6c8e5.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/rustc_version-0.4.1/src/lib.rs

/work/main/crates/seglog/fuzz/target/release/deps/librustc_version-6f33f7f259e6c8e5.rlib: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/rustc_version-0.4.1/src/lib.rs

/work/main/crates/seglog/fuzz/target/release/deps/librustc_version-6f33f7f259e6c8e5.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/rustc_version-0.4.1/src/lib.rs

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/rustc_version-0.4.1/src/lib.rs:
