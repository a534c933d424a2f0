//! Runs that start from weights (`TrainConfig::init`): an official full-precision state dict,
//! an official adaptive one, a run directory.

use adabits_models::export_official;
use adabits_train::{InitSource, Quiet, RunOptions, RunResults, TrainConfig, TrainError, train};

use crate::train::temp_dir;

/// The default recipe (`adabits`, which trains from a random start) for a half-width
/// ResNet-20 at `bits` on `train` 16×16 synthetic images, `epochs` epochs and no
/// full-precision stage.
fn recipe_config(bits: &str, train: usize, epochs: usize) -> TrainConfig {
    let mut config = adabits_train::Recipe::Adabits.config();
    config.model.bits = bits.parse().unwrap();
    config.model.width_mult = 0.5;
    config.data =
        adabits_train::data::DataSource::Synthetic(adabits_train::data::SyntheticConfig {
            train,
            val: 500,
            side: 16,
            ..Default::default()
        });
    config.epochs = epochs;
    config.fp_epochs = 0;
    config.batch_size = 64;
    config
}

/// One epoch of four steps of `config`, from `init` or from a random start.
fn short_run(config: &TrainConfig, init: Option<&std::path::Path>, name: &str) -> RunResults {
    let mut config = config.clone();
    config.init = init.map(std::path::Path::to_path_buf);
    let out = temp_dir(name);
    let results = train(config, &crate::device(), &RunOptions::new(&out), &mut Quiet).unwrap();
    std::fs::remove_dir_all(&out).unwrap();
    results
}

fn top1(results: &RunResults) -> Vec<(String, f64)> {
    results
        .bits
        .iter()
        .map(|(k, r)| (k.clone(), r.top1))
        .collect()
}

/// Every entry of `started` at least 20 points above the same entry of `random`.
fn assert_far_above(started: &RunResults, random: &RunResults, from: &str) {
    for (entry, r) in &started.bits {
        let random_start = random.bits[entry].top1;
        assert!(
            r.top1 > random_start + 20.0,
            "{entry}: {} from {from}, {random_start} from a random start",
            r.top1
        );
    }
}

#[test]
fn runs_started_from_full_precision_and_adaptive_weights_are_far_above_a_random_start() {
    let device = crate::device();
    // The source: ResNet-20 at half width trained at full precision.
    let fp_out = temp_dir("init-fp-source");
    let fp_config = recipe_config("32", 6400, 4);
    let fp = train(fp_config, &device, &RunOptions::new(&fp_out), &mut Quiet).unwrap();
    let fp_top1 = fp.bits["32"].top1;
    assert!(fp_top1 > 50.0, "the source: {fp_top1}");
    let saved = adabits_train::load_run(&fp_out, adabits_train::Which::Best, &device).unwrap();
    let fp_dict = fp_out.join("fp-official.safetensors");
    export_official(&saved.model).write(&fp_dict).unwrap();

    // The quantized runs: one epoch of four steps, the same for every start.
    let quantized = recipe_config("8,4", 256, 1);
    let random = short_run(&quantized, None, "init-random");
    let from_dict = short_run(&quantized, Some(&fp_dict), "init-from-fp-dict");
    let from_run = short_run(&quantized, Some(&fp_out), "init-from-fp-run");
    eprintln!(
        "full precision {fp_top1}; random start {:?}; from its state dict {:?}",
        top1(&random),
        top1(&from_dict)
    );
    assert_far_above(&from_dict, &random, "the full-precision weights");
    // The run directory spreads its first entry as the full-precision import does: the same
    // computation.
    assert_eq!(top1(&from_run), top1(&from_dict));

    // An adaptive checkpoint of the same list in the official layout: every tensor in place.
    let adaptive_out = temp_dir("init-adaptive-source");
    let mut adaptive_config = quantized.clone();
    adaptive_config.init = Some(fp_dict.clone());
    train(
        adaptive_config.clone(),
        &device,
        &RunOptions::new(&adaptive_out),
        &mut Quiet,
    )
    .unwrap();
    let adaptive =
        adabits_train::load_run(&adaptive_out, adabits_train::Which::Latest, &device).unwrap();
    let adaptive_dict = adaptive_out.join("adaptive-official.safetensors");
    export_official(&adaptive.model)
        .write(&adaptive_dict)
        .unwrap();
    let (_, report) =
        adabits_train::initial_model(&adaptive_dict, &adaptive_config.model, 0, &device).unwrap();
    assert_eq!(report.source, InitSource::OfficialAdaptive);
    assert!(report.import.replicated.is_empty(), "{:?}", report.import);
    let (_, report) =
        adabits_train::initial_model(&fp_dict, &adaptive_config.model, 0, &device).unwrap();
    assert_eq!(report.source, InitSource::FullPrecision);
    assert!(!report.import.replicated.is_empty(), "{:?}", report.import);
    let from_adaptive = short_run(&quantized, Some(&adaptive_dict), "init-from-adaptive");
    eprintln!("from the adaptive checkpoint {:?}", top1(&from_adaptive));
    assert_far_above(&from_adaptive, &random, "the adaptive weights");
    std::fs::remove_dir_all(&fp_out).unwrap();
    std::fs::remove_dir_all(&adaptive_out).unwrap();
}

#[test]
fn initial_weights_that_do_not_fit_are_named_and_leave_no_run_behind() {
    let dir = temp_dir("init-bad");
    let config = recipe_config("8,4", 256, 1);
    // Another architecture's state dict.
    let other = adabits_models::ModelConfig::new(
        adabits_models::Architecture::CifarResNet(8),
        "8,4".parse().unwrap(),
    )
    .with_width_mult(0.5);
    let dict = dir.join("resnet8.safetensors");
    export_official(&other.init(&crate::device()))
        .write(&dict)
        .unwrap();
    let missing = dir.join("missing.safetensors");
    let not_a_run = dir.join("empty");
    std::fs::create_dir_all(&not_a_run).unwrap();
    for (init, says) in [
        (&dict, "the state dict does not fit the model"),
        (&missing, "missing.safetensors"),
        (&not_a_run, "a folder without config.json"),
    ] {
        let out = dir.join("run");
        let mut config = config.clone();
        config.init = Some(init.clone());
        let err = train(config, &crate::device(), &RunOptions::new(&out), &mut Quiet).unwrap_err();
        assert!(
            matches!(err, TrainError::Import(_) | TrainError::Config { .. }),
            "{err}"
        );
        assert!(err.to_string().contains(says), "{err}");
        assert!(!out.join("config.json").exists(), "{err}: a run was left");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
