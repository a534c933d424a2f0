//! Saving and loading: every bit-width's weights, clipping levels and BatchNorm state survive.

use adabits_models::{CheckpointError, CifarResNetConfig, load_model, save_model};
use adabits_quant::{BitWidth, BitWidths};
use burn::tensor::{Distribution, Tensor};

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("adabits-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_saved_model_reloads_with_identical_outputs_at_every_bit_width() {
    let bits: BitWidths = "8,4,2".parse().unwrap();
    let device = crate::device();
    let train = device.clone().autodiff();
    train.seed(1);
    let config = CifarResNetConfig::new(20, bits.clone()).with_width_mult(0.5);
    let model = config.init(&train);
    let images = Tensor::<4>::random([4, 3, 16, 16], Distribution::Uniform(0.0, 1.0), &train);
    // Training-form passes move every bit-width's BatchNorm statistics away from their start.
    for b in bits.as_bit_widths().unwrap() {
        let _ = model.forward(images.clone(), b);
    }
    let dir = temp_dir("checkpoint");
    let path = dir.join("model.safetensors");
    save_model(&model, &path).unwrap();
    let eval = images.clone().inner();
    train.seed(2);
    let fresh = config.init(&device);
    let loaded = load_model(fresh, &path).unwrap();
    let trained = burn::module::Module::valid(&model);
    for b in bits
        .as_bit_widths()
        .unwrap()
        .into_iter()
        .chain([BitWidth::FULL])
    {
        let want: Vec<f64> = trained
            .forward(eval.clone(), b)
            .into_data()
            .iter::<f64>()
            .collect();
        let got: Vec<f64> = loaded
            .forward(eval.clone(), b)
            .into_data()
            .iter::<f64>()
            .collect();
        assert_eq!(got, want, "{b} bits");
    }
    // No temporary file is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, ["model.safetensors"]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_checkpoint_of_another_architecture_is_rejected_with_the_tensor_names() {
    let device = crate::device();
    let dir = temp_dir("mismatch");
    let path = dir.join("r20.safetensors");
    let bits: BitWidths = "8,4".parse().unwrap();
    save_model(
        &CifarResNetConfig::new(20, bits.clone()).init(&device),
        &path,
    )
    .unwrap();
    let err = load_model(CifarResNetConfig::new(32, bits).init(&device), &path).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, CheckpointError::Mismatch { missing, .. } if missing > 0),
        "{msg}"
    );
    assert!(
        msg.contains("r20.safetensors") && msg.contains("missing: blocks."),
        "{msg}"
    );
    let err = load_model(
        CifarResNetConfig::new(20, "8,4,2".parse().unwrap()).init(&device),
        &path,
    )
    .unwrap_err();
    assert!(err.to_string().contains("mismatched"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_truncated_or_missing_file_is_a_named_error() {
    let device = crate::device();
    let dir = temp_dir("truncated");
    let path = dir.join("model.safetensors");
    let bits: BitWidths = "8,4".parse().unwrap();
    let model = CifarResNetConfig::new(20, bits.clone()).init(&device);
    save_model(&model, &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_model(
        CifarResNetConfig::new(20, bits.clone()).init(&device),
        &path,
    )
    .unwrap_err();
    assert!(matches!(err, CheckpointError::Format { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("model.safetensors: not a valid checkpoint"),
        "{err}"
    );
    let missing = dir.join("absent.safetensors");
    let err = load_model(CifarResNetConfig::new(20, bits).init(&device), &missing).unwrap_err();
    assert!(
        matches!(err, CheckpointError::Io { .. }) && err.to_string().contains("absent.safetensors"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
