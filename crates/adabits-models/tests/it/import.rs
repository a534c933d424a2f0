//! PyTorch state dicts in the official layout: import, full-precision import, export, errors.

use adabits_models::{
    Architecture, BnSharing, CifarResNet, CifarResNetConfig, ImageNetResNetConfig, ImportError,
    ImportMode, MobileNetV1Config, MobileNetV2Config, Model, ModelConfig, QuantSettings, StateDict,
    StateDictError, StateTensor, adapt_from, export_official, import_official, import_pytorch,
};
use adabits_quant::{BitWidth, BitWidths};
use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};
use safetensors::Dtype;

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("adabits-import-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A CIFAR ResNet-8 (one block per stage) with stage widths 4, 8, 16.
fn resnet8(bits: &str, quant: QuantSettings, device: &Device) -> CifarResNet {
    CifarResNetConfig::new(8, bits.parse().unwrap())
        .with_width_mult(0.25)
        .with_quant(quant)
        .init(device)
}

/// Logits at every bit-width of `bits` and at full precision, on the evaluation form.
fn outputs(model: &CifarResNet, bits: &BitWidths, images: &Tensor<4>) -> Vec<Vec<f64>> {
    bits.as_bit_widths()
        .unwrap()
        .into_iter()
        .chain([BitWidth::FULL])
        .map(|b| {
            model
                .forward(images.clone(), b)
                .into_data()
                .iter::<f64>()
                .collect()
        })
        .collect()
}

/// Runs training-form passes at every bit-width so each BatchNorm's statistics differ.
fn train_statistics(model: &CifarResNet, bits: &BitWidths, device: &Device) {
    let images = Tensor::<4>::random([4, 3, 8, 8], Distribution::Uniform(0.0, 1.0), device);
    for b in bits
        .as_bit_widths()
        .unwrap()
        .into_iter()
        .chain([BitWidth::FULL])
    {
        let _ = model.forward(images.clone(), b);
    }
}

/// Pseudo-random values in [-1, 1) from a key, so every tensor of the hand-written file differs.
fn values(key: &str, n: usize) -> Vec<f32> {
    let mut state = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// The official `q_resnet_cifar.py` state dict of a ResNet-8 at bits [4, 2] with stage widths
/// 4, 8, 16, written by hand: `DataParallel`'s `module.` prefix, `alpha` vectors, `bn.<i>.`
/// BatchNorms with their `num_batches_tracked` counters (int64), in the official key names.
fn official_resnet8_file(path: &std::path::Path) {
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut float = |key: String, shape: Vec<usize>| {
        let n = shape.iter().product();
        let mut v = values(&key, n);
        if key.ends_with("running_var") || key.ends_with("alpha") {
            v.iter_mut().for_each(|x| *x = x.abs() + 0.5);
        }
        let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        tensors.push((format!("module.{key}"), Dtype::F32, shape, bytes));
    };
    let conv = |float: &mut dyn FnMut(String, Vec<usize>), name: &str, shape: [usize; 4]| {
        float(format!("{name}.weight"), shape.to_vec());
        float(format!("{name}.alpha"), vec![2]);
    };
    let bn = |float: &mut dyn FnMut(String, Vec<usize>), name: &str, c: usize| {
        for i in 0..2 {
            for field in ["weight", "bias", "running_mean", "running_var"] {
                float(format!("{name}.bn.{i}.{field}"), vec![c]);
            }
        }
    };
    conv(&mut float, "head.0", [4, 3, 3, 3]);
    bn(&mut float, "head.1", 4);
    conv(&mut float, "stage_0_layer_0.body.0", [4, 4, 3, 3]);
    bn(&mut float, "stage_0_layer_0.body.1", 4);
    conv(&mut float, "stage_0_layer_0.body.3", [4, 4, 3, 3]);
    bn(&mut float, "stage_0_layer_0.body.4", 4);
    for (stage, c_in, c) in [(1, 4, 8), (2, 8, 16)] {
        let block = format!("stage_{stage}_layer_0");
        conv(&mut float, &format!("{block}.body.0"), [c, c_in, 3, 3]);
        bn(&mut float, &format!("{block}.body.1"), c);
        conv(&mut float, &format!("{block}.body.3"), [c, c, 3, 3]);
        bn(&mut float, &format!("{block}.body.4"), c);
        conv(&mut float, &format!("{block}.shortcut.0"), [c, c_in, 1, 1]);
        bn(&mut float, &format!("{block}.shortcut.1"), c);
    }
    float("classifier.0.weight".into(), vec![10, 16]);
    float("classifier.0.bias".into(), vec![10]);
    float("classifier.0.alpha".into(), vec![2]);
    let counters: Vec<String> = tensors
        .iter()
        .filter_map(|(k, ..)| {
            k.strip_suffix(".running_mean")
                .map(|p| format!("{p}.num_batches_tracked"))
        })
        .collect();
    for key in counters {
        tensors.push((key, Dtype::I64, vec![], 1234_i64.to_le_bytes().to_vec()));
    }
    let views = tensors.iter().map(|(k, dtype, shape, bytes)| {
        let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes).unwrap();
        (k.clone(), view)
    });
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn a_state_dict_in_the_official_layout_imports_every_tensor_to_its_place() {
    let device = crate::device();
    let dir = temp_dir("official");
    let path = dir.join("official.safetensors");
    official_resnet8_file(&path);
    let model = resnet8("4,2", QuantSettings::new(), &device);
    let (model, report) = import_pytorch(model, &path, ImportMode::Adaptive).unwrap();
    // 9 convs + classifier: weight and alpha each, classifier bias; 9 BatchNorms x 2 bit-widths
    // x 4 tensors.
    assert_eq!(report.loaded, 10 * 2 + 1 + 9 * 2 * 4);
    assert!(report.replicated.is_empty() && report.dropped.is_empty());
    // Reading the model back in the official layout gives the file's values under the file's
    // keys (the importer is strict about names and shapes, so a tensor in the wrong place fails).
    let file = StateDict::read(&path).unwrap();
    let back = export_official(&model);
    assert_eq!(back.len(), file.len());
    for key in file.keys() {
        let (want, got) = (file.get(key).unwrap(), back.get(key).unwrap());
        assert_eq!(want.shape, got.shape, "{key}");
        if !key.ends_with("num_batches_tracked") {
            assert_eq!(want.values, got.values, "{key}");
        }
    }
    // The imported BatchNorms and clipping levels differ per bit-width, and so do the outputs.
    let images = Tensor::<4>::random([2, 3, 8, 8], Distribution::Uniform(0.0, 1.0), &device);
    let out = outputs(&model, &"4,2".parse().unwrap(), &images);
    assert!(out.iter().flatten().all(|v| v.is_finite()));
    assert_ne!(out[0], out[1]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn an_exported_state_dict_reimports_with_identical_outputs_for_every_ablation() {
    let device = crate::device();
    let train = device.clone().autodiff();
    let bits: BitWidths = "8,4,2".parse().unwrap();
    let variants = [
        QuantSettings::new(),
        QuantSettings::new().with_switchable_alpha(false),
        QuantSettings::new().with_bn(BnSharing::Shared),
        QuantSettings::new().with_bn(BnSharing::SharedAffine),
    ];
    let dir = temp_dir("roundtrip");
    for (i, quant) in variants.into_iter().enumerate() {
        train.seed(10 + i as u64);
        let model = resnet8("8,4,2", quant.clone(), &train);
        train_statistics(&model, &bits, &train);
        let model = model.valid();
        let dict = export_official(&model);
        if !quant.switchable_alpha {
            // The official shared alpha is a 0-d tensor.
            assert_eq!(dict.get("head.0.alpha").unwrap().shape, Vec::<usize>::new());
        }
        if quant.bn == BnSharing::SharedAffine {
            assert!(
                dict.get("head.1.weight").is_some() && dict.get("head.1.bn.0.weight").is_none()
            );
        }
        let path = dir.join(format!("variant{i}.safetensors"));
        dict.write(&path).unwrap();
        train.seed(99);
        let fresh = resnet8("8,4,2", quant, &device);
        let (loaded, _) = import_pytorch(fresh, &path, ImportMode::Adaptive).unwrap();
        let images = Tensor::<4>::random([2, 3, 8, 8], Distribution::Uniform(0.0, 1.0), &device);
        assert_eq!(
            outputs(&loaded, &bits, &images),
            outputs(&model, &bits, &images),
            "variant {i}"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// Sets every switchable clipping level of `model` by entry: `levels(i, α)` for entry `i`.
fn set_levels(model: &mut Model, levels: impl Fn(usize, &[f32]) -> f32) {
    use adabits_models::OfficialLayout;
    model.visit_official(&mut |_, mut layer| {
        if let Some(alpha) = layer.alpha_mut() {
            let old: Vec<f32> = alpha.alpha.val().into_data().iter::<f32>().collect();
            let new: Vec<f32> = (0..old.len()).map(|i| levels(i, &old)).collect();
            let device = alpha.alpha.val().device();
            let n = new.len();
            alpha.alpha = burn::module::Param::from_tensor(Tensor::<1>::from_data(
                burn::tensor::TensorData::new(new, [n]),
                &device,
            ));
        }
    });
}

#[test]
fn a_pair_entry_imports_as_the_official_code_clips_it() {
    let device = crate::device();
    let train = device.clone().autodiff();
    // The pair w2a8 at position 1; its activation bit-width 8 at position 2.
    let config = ModelConfig::new(Architecture::CifarResNet(8), "4,w2a8,8".parse().unwrap())
        .with_width_mult(0.25);
    let model = config.init_seeded(21, &train).unwrap();
    let images = Tensor::<4>::random([4, 3, 8, 8], Distribution::Uniform(0.0, 1.0), &train);
    // Training-form passes at each entry give each BatchNorm entry its own statistics.
    for at in config.bits.entries() {
        let _ = model.forward_at(images.clone(), at);
    }
    let mut model = model.valid();
    // Each entry its own clipping levels.
    set_levels(&mut model, |i, old| old[i] * (1.0 - 0.15 * i as f32));
    let dict = export_official(&model);
    // Three entries: three BatchNorm copies and three clipping levels, by position.
    assert_eq!(dict.get("head.0.alpha").unwrap().shape, [3]);
    assert!(dict.get("head.1.bn.2.running_mean").is_some());
    let path = temp_dir("pair").join("pair.safetensors");
    dict.write(&path).unwrap();
    let fresh = config.init_seeded(22, &device).unwrap();
    let (loaded, report) = import_pytorch(fresh, &path, ImportMode::Adaptive).unwrap();
    // The official code clips `w2a8` with the level of 8 bits (position 2) and never trains
    // its own: the import gives the pair that level, in every layer but the first, whose input
    // is not quantized (its level is that of position 0).
    assert!(
        report
            .pair_levels
            .contains(&"stage_0_layer_0.body.0.alpha[1] from [2]".to_string()),
        "{:?}",
        report.pair_levels
    );
    assert!(
        report
            .pair_levels
            .contains(&"head.0.alpha[1] from [0]".to_string()),
        "{:?}",
        report.pair_levels
    );
    let images = images.inner();
    let logits = |m: &Model, at| -> Vec<f64> {
        m.forward_at(images.clone(), at)
            .into_data()
            .iter::<f64>()
            .collect()
    };
    let at: Vec<_> = config.bits.entries().collect();
    // The bit-widths run as they were exported.
    for &i in &[0, 2] {
        assert_eq!(logits(&loaded, at[i]), logits(&model, at[i]), "entry {i}");
    }
    // The pair runs as the official code runs it: the exported model with each pair level
    // replaced by the 8-bit one (the first layer's is not used).
    let mut official = model.clone();
    set_levels(&mut official, |i, old| if i == 1 { old[2] } else { old[i] });
    let want = logits(&official, at[1]);
    let found = logits(&loaded, at[1]);
    assert_eq!(found, want);
    // Not the pair's own levels, nor either uniform entry's computation.
    assert_ne!(found, logits(&model, at[1]));
    assert_ne!(found, logits(&loaded, at[0]));
    assert_ne!(found, logits(&loaded, at[2]));
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[test]
fn a_full_precision_checkpoint_spreads_its_batch_norm_and_alpha_to_every_bit_width() {
    let device = crate::device();
    let train = device.clone().autodiff();
    train.seed(3);
    let fp_bits: BitWidths = "32".parse().unwrap();
    let fp = resnet8("32", QuantSettings::new(), &train);
    train_statistics(&fp, &fp_bits, &train);
    let fp = fp.valid();
    let mut dict = export_official(&fp);
    // Give alpha a value other than its initial one, so the copy is visible.
    dict.insert("head.0.alpha", StateTensor::new(vec![1], vec![3.5]));
    dict.insert(
        "stage_0_layer_0.body.0.alpha",
        StateTensor::new(vec![1], vec![2.25]),
    );
    let adaptive = resnet8("8,4,2", QuantSettings::new(), &device);
    let (model, report) = import_official(adaptive, &dict, ImportMode::FullPrecision).unwrap();
    assert!(
        report.dropped.is_empty() && report.kept_initial.is_empty(),
        "{report:?}"
    );
    assert!(
        report
            .replicated
            .contains(&"head.1.bn.0.running_var".to_string())
    );
    assert!(
        report
            .replicated
            .contains(&"stage_0_layer_0.body.0.alpha".to_string())
    );
    let back = export_official(&model);
    for i in 0..3 {
        for field in ["weight", "bias", "running_mean", "running_var"] {
            let key = |i: usize| format!("stage_1_layer_0.shortcut.1.bn.{i}.{field}");
            assert_eq!(
                back.get(&key(i)).unwrap().values,
                dict.get(&key(0)).unwrap().values
            );
        }
    }
    assert_eq!(
        back.get("stage_0_layer_0.body.0.alpha").unwrap().values,
        [2.25; 3]
    );
    // At full precision the adaptive model is the full-precision model.
    let images = Tensor::<4>::random([2, 3, 8, 8], Distribution::Uniform(0.0, 1.0), &device);
    let want: Vec<f64> = fp
        .forward(images.clone(), BitWidth::FULL)
        .into_data()
        .iter()
        .collect();
    let got: Vec<f64> = model
        .forward(images.clone(), BitWidth::FULL)
        .into_data()
        .iter()
        .collect();
    crate::assert_same_computation(&got, &want, "imported model at full precision");
    // The same, model to model.
    let (direct, _) = adapt_from(&fp, resnet8("8,4,2", QuantSettings::new(), &device)).unwrap();
    let got: Vec<f64> = direct
        .forward(images, BitWidth::FULL)
        .into_data()
        .iter()
        .collect();
    crate::assert_same_computation(&got, &want, "adapted model at full precision");
}

#[test]
fn a_full_precision_import_reads_plain_batch_norms_drops_unknown_keys_and_keeps_missing_alpha() {
    let device = crate::device();
    let fp = resnet8("32", QuantSettings::new(), &device);
    let exported = export_official(&fp);
    // A torchvision-like checkpoint: plain BatchNorm keys, no alpha, an extra head.
    let mut dict = StateDict::new();
    for key in exported.keys() {
        let tensor = exported.get(key).unwrap().clone();
        if key.ends_with(".alpha") {
            continue;
        }
        dict.insert(key.replace(".bn.0.", "."), tensor);
    }
    dict.insert("aux_head.weight", StateTensor::new(vec![2], vec![1.0, 2.0]));
    let (model, report) = import_official(
        resnet8("4,2", QuantSettings::new(), &device),
        &dict,
        ImportMode::FullPrecision,
    )
    .unwrap();
    assert_eq!(report.dropped, ["aux_head.weight"]);
    assert_eq!(report.kept_initial.len(), 10, "{:?}", report.kept_initial);
    let back = export_official(&model);
    assert_eq!(back.get("head.0.alpha").unwrap().values, [8.0, 8.0]);
    assert_eq!(back.get("classifier.0.alpha").unwrap().values, [10.0, 10.0]);
    assert_eq!(
        back.get("head.1.bn.1.running_var").unwrap().values,
        dict.get("head.1.running_var").unwrap().values
    );
}

#[test]
fn missing_unexpected_and_misshaped_keys_are_all_named() {
    let device = crate::device();
    let model = resnet8("4,2", QuantSettings::new(), &device);
    let mut dict = export_official(&model);
    dict.remove("stage_2_layer_0.shortcut.1.bn.1.running_mean");
    dict.insert(
        "stage_3_layer_0.body.0.weight",
        StateTensor::new(vec![1], vec![0.0]),
    );
    dict.insert(
        "classifier.0.weight",
        StateTensor::new(vec![10, 8], vec![0.0; 80]),
    );
    dict.insert("head.0.alpha", StateTensor::new(vec![3], vec![8.0; 3]));
    let err = import_official(
        resnet8("4,2", QuantSettings::new(), &device),
        &dict,
        ImportMode::Adaptive,
    )
    .unwrap_err();
    let msg = err.to_string();
    let ImportError::Mismatch {
        missing,
        unexpected,
        misshaped,
        ..
    } = err
    else {
        panic!("{msg}");
    };
    assert_eq!(
        missing,
        ["stage_2_layer_0.shortcut.1.bn.1.running_mean [16]"]
    );
    assert_eq!(unexpected, ["stage_3_layer_0.body.0.weight"]);
    assert_eq!(
        misshaped,
        [
            "head.0.alpha: expected [2], found [3]",
            "classifier.0.weight: expected [10, 16], found [10, 8]"
        ]
    );
    assert!(msg.starts_with("<state dict>: the state dict does not fit the model: 1 missing"));
    // A full-precision import drops the unknown key but still needs every weight.
    let err = import_official(
        resnet8("4,2", QuantSettings::new(), &device),
        &dict,
        ImportMode::FullPrecision,
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("classifier.0.weight: expected [10, 16], found [10, 8]"),
        "{msg}"
    );
    assert!(!msg.contains("stage_3"), "{msg}");
    // A model with another bit list: the third BatchNorm copy is missing everywhere.
    let err = import_official(
        resnet8("4,2,1", QuantSettings::new(), &device),
        &export_official(&model),
        ImportMode::Adaptive,
    )
    .unwrap_err();
    assert!(err.to_string().contains("head.1.bn.2.weight [4]"), "{err}");
}

#[test]
fn unreadable_files_are_named_errors() {
    let device = crate::device();
    let dir = temp_dir("unreadable");
    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"not a safetensors file").unwrap();
    let err = import_pytorch(
        resnet8("4,2", QuantSettings::new(), &device),
        &garbage,
        ImportMode::Adaptive,
    )
    .unwrap_err();
    assert!(
        matches!(err, ImportError::File(StateDictError::Format { .. })),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("garbage.safetensors: not a readable"),
        "{err}"
    );
    let booleans = dir.join("bool.safetensors");
    let view = safetensors::tensor::TensorView::new(Dtype::BOOL, vec![2], &[0, 1]).unwrap();
    std::fs::write(
        &booleans,
        safetensors::serialize([("mask", view)], None).unwrap(),
    )
    .unwrap();
    let err = StateDict::read(&booleans).unwrap_err().to_string();
    assert!(
        err.contains("bool.safetensors") && err.contains("tensor `mask`") && err.contains("BOOL"),
        "{err}"
    );
    let err = StateDict::read(&dir.join("absent.safetensors")).unwrap_err();
    assert!(
        matches!(err, StateDictError::Io { .. }) && err.to_string().contains("absent.safetensors")
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_mobilenets_and_imagenet_resnets_use_the_official_and_torchvision_names() {
    let device = crate::device();
    let bits: BitWidths = "8,4".parse().unwrap();
    let alphas = |dict: &StateDict| dict.keys().filter(|k| k.ends_with(".alpha")).count();
    // MobileNet-V1: 28 quantized layers (docs/method.md §8.1).
    let v1 = export_official(
        &MobileNetV1Config::new(bits.clone())
            .with_width_mult(0.25)
            .init(&device),
    );
    assert_eq!(alphas(&v1), 28);
    assert_eq!(
        v1.get("stage_0_layer_0.body.0.weight").unwrap().shape,
        [8, 1, 3, 3]
    );
    assert_eq!(
        v1.get("stage_4_layer_1.body.3.weight").unwrap().shape,
        [256, 256, 1, 1]
    );
    assert!(v1.get("stage_4_layer_1.body.4.bn.1.running_var").is_some());
    // MobileNet-V2: 52 convs and the classifier; the t = 1 block has no expansion.
    let v2 = export_official(
        &MobileNetV2Config::new(bits.clone())
            .with_width_mult(0.25)
            .init(&device),
    );
    assert_eq!(alphas(&v2), 53);
    assert_eq!(
        v2.get("stage_0_layer_0.body.0.weight").unwrap().shape,
        [8, 1, 3, 3]
    );
    assert_eq!(
        v2.get("stage_0_layer_0.body.3.weight").unwrap().shape,
        [8, 8, 1, 1]
    );
    assert!(v2.get("stage_0_layer_0.body.6.weight").is_none());
    assert_eq!(
        v2.get("stage_1_layer_0.body.0.weight").unwrap().shape,
        [48, 8, 1, 1]
    );
    assert_eq!(
        v2.get("stage_1_layer_0.body.3.weight").unwrap().shape,
        [48, 1, 3, 3]
    );
    assert_eq!(
        v2.get("stage_6_layer_0.body.6.weight").unwrap().shape,
        [80, 240, 1, 1]
    );
    assert_eq!(v2.get("tail.0.weight").unwrap().shape, [1280, 80, 1, 1]);
    assert_eq!(v2.get("classifier.0.weight").unwrap().shape, [1000, 1280]);
    // ResNet-18 and -50: torchvision's names.
    let r18 = export_official(
        &ImageNetResNetConfig::new(18, bits.clone())
            .with_width_mult(0.125)
            .init(&device),
    );
    assert_eq!(alphas(&r18), 21);
    assert!(r18.get("layer1.0.downsample.0.weight").is_none());
    assert_eq!(
        r18.get("layer2.0.downsample.0.weight").unwrap().shape,
        [16, 8, 1, 1]
    );
    assert_eq!(
        r18.get("layer4.1.conv2.weight").unwrap().shape,
        [64, 64, 3, 3]
    );
    assert_eq!(r18.get("fc.weight").unwrap().shape, [1000, 64]);
    let r50 = export_official(
        &ImageNetResNetConfig::new(50, bits)
            .with_width_mult(0.125)
            .init(&device),
    );
    assert_eq!(alphas(&r50), 54);
    assert_eq!(
        r50.get("layer1.0.downsample.0.weight").unwrap().shape,
        [32, 8, 1, 1]
    );
    assert_eq!(
        r50.get("layer3.5.conv3.weight").unwrap().shape,
        [128, 32, 1, 1]
    );
    assert!(r50.get("layer3.6.conv1.weight").is_none());
    assert!(r50.get("layer4.2.bn3.bn.1.weight").is_some());
}

#[test]
fn spreading_the_first_bit_width_copies_its_batch_norm_and_alpha_to_every_other() {
    let device = crate::device();
    let bits: BitWidths = "8,4,2".parse().unwrap();
    let model = resnet8("8,4,2", QuantSettings::new(), &device);
    train_statistics(&model, &bits, &device);
    // Every BatchNorm entry and every clipping level different.
    let mut dict = export_official(&model);
    let keys: Vec<String> = dict.keys().map(str::to_string).collect();
    for key in &keys {
        let mut t = dict.get(key).unwrap().clone();
        if key.ends_with(".alpha") || key.contains(".bn.") && key.ends_with("weight") {
            t.values = values(key, t.values.len())
                .into_iter()
                .map(|v| 2.0 + v)
                .collect();
            dict.insert(key.clone(), t);
        }
    }
    let (model, _) = import_official(model, &dict, ImportMode::Adaptive).unwrap();
    let images = Tensor::<4>::random([2, 3, 8, 8], Distribution::Uniform(0.0, 1.0), &device);
    let at_full = |m: &CifarResNet| -> Vec<f64> {
        m.forward(images.clone(), BitWidth::FULL)
            .into_data()
            .iter()
            .collect()
    };
    let before = at_full(&model);
    let spread = adabits_models::spread_first(model).unwrap();
    let back = export_official(&spread);
    let mut checked = (0, 0);
    for key in &keys {
        let got = &back.get(key).unwrap().values;
        let original = &dict.get(key).unwrap().values;
        if let Some((head, rest)) = key.rsplit_once(".bn.") {
            let field = rest.split_once('.').unwrap().1;
            let first = &dict.get(&format!("{head}.bn.0.{field}")).unwrap().values;
            assert_eq!(got, first, "{key}");
            checked.0 += 1;
        } else if key.ends_with(".alpha") {
            assert_eq!(got, &vec![original[0]; 3], "{key}");
            checked.1 += 1;
        } else {
            assert_eq!(got, original, "{key}");
        }
    }
    assert!(checked.0 > 20 && checked.1 > 5, "{checked:?}");
    // Full precision runs on the first entry, so it computes what it computed before.
    assert_eq!(at_full(&spread), before);
}
