use std::path::PathBuf;

use super::*;

fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models")
}

#[derive(Deserialize)]
struct Golden {
    input: Vec<Vec<f32>>,
    score: Vec<f32>,
    #[serde(default)]
    contributions: Option<Vec<Vec<f32>>>,
}

/// tract must agree with onnxruntime (the reference that produced the golden
/// vectors) within float32 summation error: 1e-4 relative, 1e-5 absolute.
#[test]
fn tract_matches_onnxruntime_golden_vectors_for_every_committed_model() {
    let mut checked = 0;
    for entry in std::fs::read_dir(models_dir()).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.join("manifest.json").is_file() {
            continue;
        }
        let model = Model::load(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        if model.manifest.detector != DetectorKind::Onnx {
            continue; // an online detector: its own tests in the detect crate
        }
        let golden: Golden =
            serde_json::from_slice(&std::fs::read(dir.join("golden.json")).unwrap()).unwrap();
        let flat: Vec<f32> = golden.input.iter().flatten().copied().collect();
        let out = model.run(&flat).unwrap();
        let scores = out.scores;
        assert_eq!(scores.len(), golden.score.len());
        if let Some(want) = &golden.contributions {
            let got = out.contributions.expect("the model reports contributions");
            let want: Vec<f32> = want.iter().flatten().copied().collect();
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-5 + 1e-4 * w.abs(),
                    "{}: contribution {g} vs {w}",
                    dir.display()
                );
            }
        }
        for (i, (got, want)) in scores.iter().zip(&golden.score).enumerate() {
            let tolerance = 1e-5 + 1e-4 * want.abs();
            assert!(
                (got - want).abs() <= tolerance,
                "{} window {i}: tract {got} vs onnxruntime {want}",
                dir.display()
            );
        }
        checked += 1;
    }
    assert!(checked >= 3, "expected the ONNX models under models/");
}

#[test]
fn a_tampered_model_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = models_dir().join("univariate-forecast");
    std::fs::copy(src.join("manifest.json"), dir.path().join("manifest.json")).unwrap();
    let mut bytes = std::fs::read(src.join("model.onnx")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(dir.path().join("model.onnx"), bytes).unwrap();
    assert!(matches!(
        Model::load(dir.path()),
        Err(ModelError::Checksum { .. })
    ));
}

#[test]
fn a_file_that_is_not_onnx_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let junk = b"definitely not a protobuf";
    let sha = Sha256::digest(junk)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let manifest = serde_json::json!({
        "id": "junk", "version": "0", "file": "model.onnx", "sha256": sha, "opset": 17,
        "input": {"name": "window", "window": 4, "clip": 10.0},
        "score_output": "score", "threshold": 1.0
    });
    std::fs::write(dir.path().join("manifest.json"), manifest.to_string()).unwrap();
    std::fs::write(dir.path().join("model.onnx"), junk).unwrap();
    assert!(matches!(Model::load(dir.path()), Err(ModelError::Load(_))));
}

/// A call is split into chunks of the sizes the model was compiled for, and
/// the last windows are padded: every window must come out as if it had
/// been scored alone, in its place, with every output.
#[test]
fn any_number_of_windows_scores_each_as_if_alone_across_chunk_sizes_and_padding() {
    for name in ["univariate-forecast", "multivariate-autoencoder"] {
        let model = Model::load(&models_dir().join(name)).unwrap();
        let w = model.input_width();
        let mut rng = fastrand::Rng::with_seed(5);
        // 4096 + 1024 + 256 + 64 + 16 + 7: every plan, then padding.
        let n = 4096 + 1024 + 256 + 64 + 16 + 7;
        let windows: Vec<f32> = (0..n * w).map(|_| (rng.f32() - 0.5) * 3.0).collect();
        let all = model.run(&windows).unwrap();
        assert_eq!(all.scores.len(), n);
        let per_window = model.metrics().map_or(1, <[String]>::len);
        for i in (0..n).step_by(97).chain([n - 1]) {
            let alone = model.run(&windows[i * w..(i + 1) * w]).unwrap();
            let close = |a: f32, b: f32| (a - b).abs() <= 1e-5 + 1e-5 * b.abs();
            assert!(close(all.scores[i], alone.scores[0]), "{name} window {i}");
            if let (Some(c), Some(a)) = (&all.contributions, &alone.contributions) {
                for m in 0..per_window {
                    assert!(
                        close(c[i * per_window + m], a[m]),
                        "{name} window {i} metric {m}"
                    );
                }
            }
            if let (Some(f), Some(a)) = (&all.forecast, &alone.forecast) {
                let per = f.len() / n;
                assert!(close(f[i * per], a[0]), "{name} window {i} forecast");
            }
        }
    }
}

#[test]
fn the_detector_models_load_with_their_configuration() {
    let novelty = Model::load(&models_dir().join("novelty")).unwrap();
    assert_eq!(novelty.novelty(), Some(&detect::NoveltyConfig::full()));
    // The lighter configurations ship as models of their own, each with
    // the threshold frozen for it (docs/DETECTION.md).
    for (dir, cfg, threshold) in [
        ("novelty-light", detect::NoveltyConfig::light(), 0.70),
        ("novelty-minimal", detect::NoveltyConfig::minimal(), 0.50),
    ] {
        let lighter = Model::load(&models_dir().join(dir)).unwrap();
        assert_eq!(lighter.novelty(), Some(&cfg), "{dir}");
        assert_eq!(lighter.manifest.threshold, threshold, "{dir}");
        assert!(lighter.expected_values().is_some(), "{dir}");
    }
    let forecaster = novelty
        .expected_values()
        .expect("events get expected values");
    assert_eq!(novelty.window(), forecaster.window());
    assert!(
        novelty.run(&[0.0; 16]).is_err(),
        "a detector is not an ONNX model"
    );
    let monitor = Model::load(&models_dir().join("state-monitor")).unwrap();
    assert_eq!(
        monitor.metrics(),
        None,
        "it finds record-shaped devices by their readings"
    );
    assert_eq!(
        monitor.state_monitor(),
        Some(&detect::StateMonitorConfig::default())
    );
}

#[test]
fn an_inconsistent_detector_manifest_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let write = |json: &str| std::fs::write(dir.path().join("manifest.json"), json).unwrap();
    let error = |json: &str| {
        write(json);
        Model::load(dir.path()).unwrap_err().to_string()
    };
    assert!(
        error(r#"{"id":"n","version":"1","detector":"novelty","threshold":0.8}"#)
            .contains("needs `novelty`")
    );
    let cfg = serde_json::to_string(&detect::NoveltyConfig {
        calibration_lengths: vec![],
        ..detect::NoveltyConfig::full()
    })
    .unwrap();
    assert!(
        error(&format!(
            r#"{{"id":"n","version":"1","detector":"novelty","threshold":0.8,"novelty":{cfg}}}"#
        ))
        .contains("calibration length")
    );
    let cfg = serde_json::to_string(&detect::NoveltyConfig::full()).unwrap();
    let multivariate = models_dir().join("multivariate-forecast");
    assert!(
        error(&format!(
            r#"{{"id":"n","version":"1","detector":"novelty","threshold":0.8,"novelty":{cfg},"expected_values":{:?}}}"#,
            multivariate.display().to_string()
        ))
        .contains("not a univariate ONNX forecaster")
    );
    assert!(
        error(r#"{"id":"s","version":"1","detector":"state-monitor","threshold":1,"input":{"metrics":[]},"state_monitor":{"warmup_records":400,"explained_variance":0.85,"confidence":0.999,"mset_limit":0.01,"ema_span":5,"t2q":true,"mset":true}}"#)
            .contains("lists its metrics")
    );
}
