//! The deployment artifact and its runtime.

use std::collections::HashMap;
use std::path::Path;

use adabits_models::adabits_quant::{At, BitWidth, Precision, QuantScheme};
use adabits_models::{
    Architecture, Artifact, ArtifactError, BnSharing, Model, ModelConfig, OfficialLayout,
    QuantSettings, Runtime, export_artifact, file_entry,
};
use adabits_runtime::{IntRuntime, Isa, Residency};
use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};

/// A model whose BatchNorm statistics differ per entry (training-form passes at each) and whose
/// switchable clipping levels differ per entry (so that a runtime taking another entry's shows),
/// returned in evaluation form.
fn trained(config: &ModelConfig, side: usize, seed: u64) -> Model {
    let train = crate::device().autodiff();
    train.seed(seed);
    let model = config.init(&train);
    let images = Tensor::<4>::random([4, 3, side, side], Distribution::Uniform(0.0, 1.0), &train);
    for at in config.bits.entries() {
        let _ = model.forward_at(images.clone(), at);
    }
    let mut model = model.valid();
    model.visit_official(&mut |_, mut layer| {
        if let Some(alpha) = layer.alpha_mut() {
            let levels = alpha.alpha.val();
            let n = levels.dims()[0];
            // Entry i's level scaled by 1 − 0.1·i.
            let factors: Vec<f32> = (0..n).map(|i| 1.0 - 0.1 * i as f32).collect();
            let factors = Tensor::<1>::from_data(
                burn::tensor::TensorData::new(factors, [n]),
                &levels.device(),
            );
            alpha.alpha = burn::module::Param::from_tensor(levels * factors);
        }
    });
    model
}

fn logits(t: Tensor<2>) -> Vec<Vec<f64>> {
    let [_, classes] = t.dims();
    let v: Vec<f64> = t.into_data().iter::<f64>().collect();
    v.chunks(classes).map(<[f64]>::to_vec).collect()
}

fn argmax(row: &[f64]) -> usize {
    (0..row.len())
        .max_by(|&a, &b| row[a].total_cmp(&row[b]))
        .unwrap_or(0)
}

/// Images per check.
const IMAGES: usize = 16;

/// Asserts that both runtimes give the fake-quantized model's predictions at every entry of its
/// list (bit-widths and `wWaA` pairs, [`Model::forward_at`]), switching in both directions, with logits within 1e-4 relative: every image for the Burn
/// runtime, all but the images where a quantization level flipped for the integer runtime (on
/// every instruction set this CPU has); returns the integer runtime's worst relative
/// difference.
fn assert_runtime_matches(
    model: &Model,
    config: &ModelConfig,
    side: usize,
    device: &Device,
) -> f64 {
    let artifact = export_artifact(model, config, side, &HashMap::new(), None).unwrap();
    let bytes = artifact.to_bytes();
    let artifact = Artifact::from_bytes(&bytes, Path::new("test.abq")).unwrap();
    // Every instruction set, and both residencies of the fastest.
    let mut integer: Vec<IntRuntime> = Isa::available()
        .into_iter()
        .map(|isa| IntRuntime::with_isa(artifact.clone(), isa).unwrap())
        .collect();
    let mut expanded = IntRuntime::new(artifact.clone()).unwrap();
    expanded.set_residency(Residency::Expanded);
    integer.push(expanded);
    let mut runtime = Runtime::new(artifact, device).unwrap();
    let mut worst = 0f64;
    // Drawn here, not from the backend's generator, which the tests running beside this one
    // draw from too.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let values: Vec<f32> = (0..IMAGES * 3 * side * side)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect();
    let images = Tensor::<4>::from_data(
        burn::tensor::TensorData::new(values, [IMAGES, 3, side, side]),
        device,
    );
    let list: Vec<At> = config.bits.entries().collect();
    let order: Vec<At> = list.iter().chain(list.iter().rev()).copied().collect();
    let pixels: Vec<f32> = images.clone().into_data().iter::<f32>().collect();
    for at in order {
        let b = at.precision;
        runtime.set_bits(b).unwrap();
        assert_eq!(runtime.bits(), b);
        let expected = logits(model.forward_at(images.clone(), at));
        let label = file_entry(b).unwrap();
        for int in &mut integer {
            int.set_entry(label).unwrap();
            assert_eq!(int.entry(), Some(label));
            let found = int.forward(&pixels, IMAGES, [side, side]).unwrap();
            let classes = expected[0].len();
            // One image alone takes another path (each layer on every thread, and with packed
            // weights laid out as it runs): the same logits, bit for bit.
            let one = int
                .forward(&pixels[..3 * side * side], 1, [side, side])
                .unwrap();
            assert_eq!(
                one,
                found[..classes],
                "{:?}, entry {b}: batch of one",
                int.isa()
            );
            let mut flipped = 0;
            for (e, f) in expected.iter().zip(found.chunks(classes)) {
                let f: Vec<f64> = f.iter().map(|&v| f64::from(v)).collect();
                let scale = e.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-6);
                let diff = e
                    .iter()
                    .zip(&f)
                    .fold(0f64, |m, (x, y)| m.max((x - y).abs()));
                worst = worst.max(diff / scale);
                // The integer sums are exact and the float epilogue differs from the model's
                // float convolution by rounding only (about 1e-6); an input that lands that
                // close to a quantization boundary can take the other level (a flip), which in
                // these 4-to-16-channel random models moves the logits by up to tens of per
                // cent, and may change the class. An error in the arithmetic shows on every
                // image; a flip on a few.
                if diff > 1e-4 * scale {
                    flipped += 1;
                } else {
                    assert_eq!(
                        argmax(e),
                        argmax(&f),
                        "{} {:?}, entry {b}: {e:?} vs {f:?}",
                        config.arch,
                        int.isa()
                    );
                }
            }
            assert!(
                flipped <= IMAGES / 2,
                "{} at entry {b}, {:?}: {flipped} of {IMAGES} images differ by more than 1e-4",
                config.arch,
                int.isa()
            );
        }
        let found = logits(runtime.forward(images.clone()));
        for (e, f) in expected.iter().zip(&found) {
            assert_eq!(argmax(e), argmax(f), "entry {b}: {e:?} vs {f:?}");
            let scale = e.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-6);
            for (x, y) in e.iter().zip(f) {
                assert!(
                    (x - y).abs() <= 1e-4 * scale,
                    "{} at entry {b}: {x} vs {y}",
                    config.arch
                );
            }
        }
    }
    worst
}

#[test]
fn the_runtime_reproduces_the_fake_quantized_model_at_every_bit_width() {
    let device = crate::device();
    let cases = [
        (QuantScheme::Modified, QuantSettings::new()),
        (
            QuantScheme::Centered,
            QuantSettings::new().with_rescale_conv(true),
        ),
        // No shift property: every weight bit-width's codes are stored.
        (QuantScheme::Original, QuantSettings::new()),
        // Shared clipping level, shared BatchNorm, shared affine.
        (
            QuantScheme::Centered,
            QuantSettings::new().with_switchable_alpha(false),
        ),
        (
            QuantScheme::Modified,
            QuantSettings::new().with_bn(BnSharing::Shared),
        ),
        (
            QuantScheme::Centered,
            QuantSettings::new().with_bn(BnSharing::SharedAffine),
        ),
    ];
    for (i, (scheme, quant)) in cases.into_iter().enumerate() {
        let config = ModelConfig::new(Architecture::CifarResNet(20), "8,6,5,4".parse().unwrap())
            .with_width_mult(0.25)
            .with_quant(quant.with_weight_scheme(scheme));
        let model = trained(&config, 16, 40 + i as u64);
        assert_runtime_matches(&model, &config, 16, &device);
    }
}

#[test]
fn one_bit_layers_run_bit_serially_and_reproduce_the_model() {
    let device = crate::device();
    // Width 2: the last stage's 3×3 convolutions have 128·9 = 1152 products per output, deep
    // enough for the bit-serial kernel at 1 bit; the others run on bytes. 8×8 images.
    for (i, scheme) in [QuantScheme::Modified, QuantScheme::Centered]
        .into_iter()
        .enumerate()
    {
        let config = ModelConfig::new(Architecture::CifarResNet(20), "2,1".parse().unwrap())
            .with_width_mult(2.0)
            .with_quant(QuantSettings::new().with_weight_scheme(scheme));
        let model = trained(&config, 8, 80 + i as u64);
        assert_runtime_matches(&model, &config, 8, &device);
        let artifact = export_artifact(&model, &config, 8, &HashMap::new(), None).unwrap();
        let artifact = Artifact::from_bytes(&artifact.to_bytes(), Path::new("t.abq")).unwrap();
        let mut int = IntRuntime::new(artifact).unwrap();
        int.set_bits(1).unwrap();
        let fast = int.isa().runs_bit_serial()
            && std::env::var("ADABITS_BIT_SERIAL").as_deref() != Ok("off");
        // The five 3×3 convolutions of the last stage after its first (64 inputs).
        assert_eq!(int.bit_serial_layers(), if fast { 5 } else { 0 });
        int.set_bits(2).unwrap();
        assert_eq!(int.bit_serial_layers(), 0);
    }
}

/// An ImageNet family at 4, 3 and 2 bits, a quarter wide, through both runtimes.
fn imagenet_family_runs(arch: &str, seed: u64) {
    let config = ModelConfig::new(arch.parse().unwrap(), "4,3,2".parse().unwrap())
        .with_width_mult(0.25)
        .with_quant(QuantSettings::new().with_weight_scheme(QuantScheme::Centered));
    let model = trained(&config, 32, seed);
    assert_runtime_matches(&model, &config, 32, &crate::device());
}

#[test]
fn the_runtime_runs_the_imagenet_models_at_every_bit_width() {
    for (arch, seed) in [("mobilenet_v1", 60), ("resnet18", 62), ("resnet50", 63)] {
        imagenet_family_runs(arch, seed);
    }
}

#[test]
fn the_runtime_runs_mobilenet_v2_at_every_bit_width_with_double_sided_bottlenecks() {
    imagenet_family_runs("mobilenet_v2", 61);
    let device = crate::device();
    // MobileNet-V2 as the `adabits` recipe trains it: the linear bottlenecks' outputs clipped
    // on both sides, whose zero is not a code (the integer runtime's `2q − A`), at 8 bits too
    // (where the centered numerators need the sum of the inputs).
    let config = ModelConfig::new(Architecture::MobileNetV2, "8,4,2".parse().unwrap())
        .with_width_mult(0.25)
        .with_double_side(true)
        .with_quant(QuantSettings::new().with_weight_scheme(QuantScheme::Centered));
    let model = trained(&config, 32, 70);
    assert_runtime_matches(&model, &config, 32, &device);
}

#[test]
fn the_artifact_stays_within_two_percent_of_the_ideal_size() {
    // ResNet-20 at full width, {8,6,5,4}: 270k weights at 8 bits.
    let config = ModelConfig::new(Architecture::CifarResNet(20), "8,6,5,4".parse().unwrap())
        .with_quant(QuantSettings::new().with_weight_scheme(QuantScheme::Centered));
    let model = config.init(&crate::device());
    let artifact = export_artifact(&model, &config, 32, &HashMap::new(), None).unwrap();
    let header = &artifact.header;
    // Every weight at 8 bits (the shift serves 6, 5 and 4), each layer rounded up to a byte.
    assert!(header.code_bytes >= header.weights && header.code_bytes <= header.weights + 30);
    let size = artifact.to_bytes().len() as f64;
    let ideal = header.ideal_bytes() as f64;
    assert!(
        size <= 1.02 * ideal,
        "{size} bytes against an ideal {ideal}"
    );
    // The original scheme stores 8 + 6 + 5 + 4 bits per weight.
    let original = config
        .clone()
        .with_quant(QuantSettings::new().with_weight_scheme(QuantScheme::Original));
    let model = original.init(&crate::device());
    let artifact = export_artifact(&model, &original, 32, &HashMap::new(), None).unwrap();
    // The first convolution (3·16·3·3) and the classifier (64·10) run at max(list) = 8 bits
    // whatever the active bit-width, so only their 8-bit codes are stored.
    let n = artifact.header.weights;
    let fixed = 3 * 16 * 9 + 64 * 10;
    let bits = 23 * (n - fixed) + 8 * fixed;
    let stored = artifact.header.code_bytes * 8;
    // Each code set starts on a byte: at most 7 bits of padding for each of 4 sets per layer.
    assert!(
        stored >= bits && stored < bits + 7 * 4 * 22,
        "{stored} bits stored, {bits} needed"
    );
}

#[test]
fn both_runtimes_run_weight_and_activation_pair_entries() {
    let device = crate::device();
    // Pairs whose weight bit-width is another entry's (w4a8, w2a4) and one of its own (w3a6);
    // switchable and shared clipping levels; the scheme without the shift property stores every
    // weight bit-width's codes.
    let cases = [
        (QuantScheme::Modified, QuantSettings::new(), "8,w4a8,4,w2a4"),
        (
            QuantScheme::Original,
            QuantSettings::new().with_switchable_alpha(false),
            "w3a6,8,w8a4",
        ),
    ];
    for (i, (scheme, quant, list)) in cases.into_iter().enumerate() {
        let config = ModelConfig::new(Architecture::CifarResNet(20), list.parse().unwrap())
            .with_width_mult(0.25)
            .with_quant(quant.with_weight_scheme(scheme));
        let model = trained(&config, 16, 60 + i as u64);
        let mut top1 = HashMap::new();
        top1.insert("w4a8".parse::<Precision>().unwrap(), 61.0);
        let artifact = export_artifact(&model, &config, 16, &top1, None).unwrap();
        // A list with a pair is version 4, its entries in the header as the list is written.
        assert_eq!(artifact.header.version, 4);
        assert_eq!(artifact.header.graph.list(), list);
        let rows: Vec<String> = artifact
            .header
            .table
            .iter()
            .map(|r| r.bits.to_string())
            .collect();
        assert_eq!(rows.join(","), list);
        if i == 0 {
            // Relabelled version 3 and resealed, it is refused: a version-3 reader would take
            // the file and fail on its list.
            let (header_text, tensors) = split(&artifact.to_bytes());
            let mut older: adabits_models::ArtifactHeader =
                serde_json::from_str(&header_text).unwrap();
            older.version = 3;
            let data = |name: &str| &tensors.iter().find(|t| t.0 == name).unwrap().3;
            older.crc32 = older.checksum(data("codes"), data("scalars"));
            let text = serde_json::to_string(&older).unwrap();
            let err = Artifact::from_bytes(
                &rebuild(&text, &tensors, &["codes", "scalars"]),
                Path::new("m.abq"),
            )
            .unwrap_err();
            assert_eq!(
                err.to_string(),
                "m.abq: the metadata field `adabits.version`: expected 4 for a list with a wWaA pair, found 3 with the list 8,w4a8,4,w2a4"
            );
            assert_eq!(artifact.header.table[1].top1, Some(61.0));
            // The pair's cost lies between its two sides' uniform ones.
            let g: Vec<f64> = artifact.header.table.iter().map(|r| r.gbitops).collect();
            assert!(g[0] > g[1] && g[1] > g[2] && g[2] > g[3], "{g:?}");
            assert_eq!(
                artifact.header.table[1].model_bytes,
                artifact.header.table[2].model_bytes
            );
        }
        assert_runtime_matches(&model, &config, 16, &device);
    }
}

#[test]
fn a_damaged_artifact_is_refused_with_a_named_error() {
    let config = ModelConfig::new(Architecture::CifarResNet(20), "4,2".parse().unwrap())
        .with_width_mult(0.25);
    let model = config.init(&crate::device());
    let mut top1 = HashMap::new();
    top1.insert(Precision::uniform(BitWidth::new(4).unwrap()), 51.5);
    let artifact = export_artifact(&model, &config, 16, &top1, Some("runs/x".into())).unwrap();
    assert_eq!(artifact.header.table[0].top1, Some(51.5));
    assert_eq!(artifact.header.table[1].top1, None);
    // A list of bit-widths is written as version 3, as before pair entries, for older readers.
    assert_eq!(artifact.header.version, 3);
    let good = artifact.to_bytes();
    let path = Path::new("model.abq");

    // A flipped bit in the payload (the last byte is a scalar).
    let mut flipped = good.clone();
    *flipped.last_mut().unwrap() ^= 0x10;
    let err = Artifact::from_bytes(&flipped, path).unwrap_err();
    assert!(matches!(err, ArtifactError::Checksum { .. }), "{err}");
    assert!(
        err.to_string().starts_with("model.abq: checksum mismatch"),
        "{err}"
    );

    // Truncated.
    let err = Artifact::from_bytes(&good[..good.len() - 100], path).unwrap_err();
    assert!(matches!(err, ArtifactError::Format { .. }), "{err}");
    let err = Artifact::from_bytes(&good[..5], path).unwrap_err();
    assert!(matches!(err, ArtifactError::Format { .. }), "{err}");

    // Another version, a missing tensor, a foreign SafeTensors file.
    let (header_text, tensors) = split(&good);
    let newer = header_text.replace("\"version\":3", "\"version\":7");
    let err =
        Artifact::from_bytes(&rebuild(&newer, &tensors, &["codes", "scalars"]), path).unwrap_err();
    assert!(
        matches!(err, ArtifactError::Version { found: 7, .. }),
        "{err}"
    );
    let err = Artifact::from_bytes(&rebuild(&header_text, &tensors, &["codes"]), path).unwrap_err();
    assert_eq!(
        err.to_string(),
        "model.abq: tensor `scalars`: expected F32 of 1240 elements, found no such tensor"
            .replace("1240", &artifact.header.scalar_count.to_string())
    );
    let foreign = safetensors::serialize(
        [(
            "x",
            safetensors::tensor::TensorView::new(safetensors::Dtype::U8, vec![1], &[0u8]).unwrap(),
        )],
        None,
    )
    .unwrap();
    let err = Artifact::from_bytes(&foreign, path).unwrap_err();
    assert!(matches!(err, ArtifactError::Header { .. }), "{err}");

    // An edited header: the checksum covers it (an edited table once made `select` pick a
    // bit-width the model does not have).
    let edited = header_text.replace("\"bits\":4,", "\"bits\":7,");
    assert_ne!(edited, header_text);
    let err =
        Artifact::from_bytes(&rebuild(&edited, &tensors, &["codes", "scalars"]), path).unwrap_err();
    assert!(matches!(err, ArtifactError::Checksum { .. }), "{err}");
    // Edited and resealed: the table must still list the model's bit-widths.
    let mut header: adabits_models::ArtifactHeader = serde_json::from_str(&header_text).unwrap();
    header.table[0].bits = "7".parse().unwrap();
    let data = |name: &str| &tensors.iter().find(|t| t.0 == name).unwrap().3;
    header.crc32 = header.checksum(data("codes"), data("scalars"));
    let resealed = serde_json::to_string(&header).unwrap();
    let err = Artifact::from_bytes(&rebuild(&resealed, &tensors, &["codes", "scalars"]), path)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("`adabits.table`: expected one row per entry of the model, in its order: 4,2, found rows for 7,2"),
        "{err}"
    );

    // A bit-width the artifact does not hold.
    let mut runtime =
        Runtime::new(Artifact::from_bytes(&good, path).unwrap(), &crate::device()).unwrap();
    let err = runtime.set_bits(BitWidth::new(3).unwrap()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "3 bits is not one of the artifact's entries (4,2)"
    );

    // A missing file.
    let err = Artifact::read(Path::new("/nonexistent/model.abq")).unwrap_err();
    assert!(
        err.to_string().starts_with("/nonexistent/model.abq: "),
        "{err}"
    );
}

/// Thousands of artifacts with one random damage each (a bit flipped, a byte replaced,
/// deleted or inserted, the tail cut, garbage appended): every one is refused with an error or
/// reads back as the same artifact, and none panics.
#[test]
fn mutated_artifacts_are_refused_without_a_panic() {
    let config = ModelConfig::new(Architecture::CifarResNet(20), "4,2".parse().unwrap())
        .with_width_mult(0.25);
    let model = config.init(&crate::device());
    let good = export_artifact(&model, &config, 16, &HashMap::new(), None)
        .unwrap()
        .to_bytes();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let (mut refused, mut same, mut accepted, mut panics) = (0, 0, 0, 0);
    // The safetensors header (where a byte is likeliest to be read as something else) gets
    // half of the damage.
    let header_end = 8 + u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    for case in 0..3000 {
        let mut bytes = good.clone();
        let span = if case % 2 == 0 {
            header_end
        } else {
            bytes.len()
        };
        let at = (next() as usize) % span;
        match next() % 6 {
            0 => bytes[at] ^= 1 << (next() % 8),
            1 => bytes[at] = next() as u8,
            2 => {
                bytes.remove(at);
            }
            3 => bytes.insert(at, next() as u8),
            4 => bytes.truncate(at),
            _ => bytes.extend((0..1 + next() % 16).map(|_| next() as u8)),
        }
        match std::panic::catch_unwind(|| Artifact::from_bytes(&bytes, Path::new("m.abq"))) {
            Err(_) => panics += 1,
            Ok(Err(_)) => refused += 1,
            Ok(Ok(read)) if read.to_bytes() == good => same += 1,
            Ok(Ok(_)) => accepted += 1,
        }
    }
    eprintln!(
        "3000 mutated artifacts: {refused} refused, {same} the same artifact, {accepted} accepted changed, {panics} panics"
    );
    assert_eq!((accepted, panics), (0, 0));
}

/// The header JSON and the tensors (name, dtype, shape, bytes) of artifact bytes.
#[allow(clippy::type_complexity)]
fn split(
    bytes: &[u8],
) -> (
    String,
    Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>,
) {
    let (_, metadata) = safetensors::SafeTensors::read_metadata(bytes).unwrap();
    let header = metadata.metadata().as_ref().unwrap()["adabits"].clone();
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            (
                name,
                view.dtype(),
                view.shape().to_vec(),
                view.data().to_vec(),
            )
        })
        .collect();
    (header, tensors)
}

fn rebuild(
    header: &str,
    tensors: &[(String, safetensors::Dtype, Vec<usize>, Vec<u8>)],
    keep: &[&str],
) -> Vec<u8> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .filter(|(name, ..)| keep.contains(&name.as_str()))
        .map(|(name, dtype, shape, data)| {
            (
                name.clone(),
                safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    let metadata = HashMap::from([("adabits".to_string(), header.to_string())]);
    safetensors::serialize(views, Some(metadata)).unwrap()
}

/// Every number of a JSON value, as a path of keys and indices.
fn numbers(value: &serde_json::Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match value {
        serde_json::Value::Number(_) => out.push(path.clone()),
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(i.to_string());
                numbers(item, path, out);
                path.pop();
            }
        }
        serde_json::Value::Object(map) => {
            for (key, item) in map {
                path.push(key.clone());
                numbers(item, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

#[test]
fn resealed_graph_edits_are_refused_or_run_by_the_integer_runtime_without_a_panic() {
    // A file written by something else can carry a valid checksum over a graph that does not
    // fit: every number of the graph is edited in turn, the file resealed, and the reader and
    // the integer runtime must refuse it by name or run it, never panic.
    let config = ModelConfig::new(Architecture::CifarResNet(20), "4,2".parse().unwrap())
        .with_width_mult(0.25);
    let model = config.init(&crate::device());
    let good = export_artifact(&model, &config, 16, &HashMap::new(), None)
        .unwrap()
        .to_bytes();
    let (header_text, tensors) = split(&good);
    let header: serde_json::Value = serde_json::from_str(&header_text).unwrap();
    let mut paths = Vec::new();
    numbers(&header["graph"], &mut vec!["graph".into()], &mut paths);
    let data = |name: &str| tensors.iter().find(|t| t.0 == name).unwrap().3.clone();
    let (codes, scalars) = (data("codes"), data("scalars"));
    let images = vec![0.5f32; 3 * 16 * 16];
    let (mut refused, mut ran, mut panics) = (0, 0, 0);
    for (i, path) in paths.iter().enumerate() {
        for value in [0u64, 1, 3, 7, 1 + i as u64 % 40, 1 << 40] {
            let mut edited = header.clone();
            let mut slot = &mut edited;
            for key in path {
                slot = match slot {
                    serde_json::Value::Array(items) => &mut items[key.parse::<usize>().unwrap()],
                    other => &mut other[key.as_str()],
                };
            }
            *slot = value.into();
            // Resealed: a header that no longer deserialises is refused like any other.
            let Ok(mut sealed) = serde_json::from_value::<adabits_models::ArtifactHeader>(edited)
            else {
                refused += 1;
                continue;
            };
            sealed.crc32 = sealed.checksum(&codes, &scalars);
            let text = serde_json::to_string(&sealed).unwrap();
            let bytes = rebuild(&text, &tensors, &["codes", "scalars"]);
            let outcome = std::panic::catch_unwind(|| {
                let artifact =
                    Artifact::from_bytes(&bytes, Path::new("m.abq")).map_err(|e| e.to_string())?;
                let mut int = IntRuntime::new(artifact).map_err(|e| e.to_string())?;
                for b in int.artifact().bits().to_vec() {
                    int.set_entry(b).map_err(|e| e.to_string())?;
                    int.forward(&images, 1, [16, 16])
                        .map_err(|e| e.to_string())?;
                }
                Ok::<_, String>(())
            });
            match outcome {
                Err(_) => panics += 1,
                Ok(Err(_)) => refused += 1,
                Ok(Ok(())) => ran += 1,
            }
        }
    }
    eprintln!(
        "{} resealed graph edits: {refused} refused, {ran} ran, {panics} panics",
        6 * paths.len()
    );
    assert!(paths.len() > 50, "{} numbers in the graph", paths.len());
    assert_eq!(panics, 0);
}

#[test]
fn both_runtimes_run_a_precision_plan() {
    use adabits_models::{Plan, quantized_layers, with_plan};
    let device = crate::device();
    let config = ModelConfig::new(Architecture::CifarResNet(20), "8,4".parse().unwrap())
        .with_width_mult(0.25)
        .with_quant(QuantSettings::new().with_weight_scheme(QuantScheme::Centered));
    let model = trained(&config, 16, 77);
    let artifact = export_artifact(&model, &config, 16, &HashMap::new(), None).unwrap();
    let mut int = IntRuntime::new(artifact).unwrap();
    let side = 16;
    let images = Tensor::<4>::random(
        [IMAGES, 3, side, side],
        Distribution::Uniform(0.0, 1.0),
        &device,
    );
    let pixels: Vec<f32> = images.clone().into_data().iter::<f32>().collect();
    let layers = quantized_layers(&model);
    // A plan of one position everywhere is that bit-width, bit for bit.
    for (position, bits) in [(0usize, 8u8), (1, 4)] {
        int.set_bits(bits).unwrap();
        let want = int.forward(&pixels, IMAGES, [side, side]).unwrap();
        int.set_plan(&vec![position; layers.len()]).unwrap();
        assert_eq!(int.entry(), None);
        assert_eq!(
            int.forward(&pixels, IMAGES, [side, side]).unwrap(),
            want,
            "{bits}"
        );
    }
    // A mixed plan: the fake-quantized model under it, but for level flips.
    let plan: Plan =
        serde_json::from_str(r#"{"default": 4, "layers": {"stage_1_*": 8, "classifier.0": 8}}"#)
            .unwrap();
    let resolved = plan.resolve(&layers, &config.bits).unwrap();
    let positions: Vec<usize> = resolved.layers.iter().map(|(_, at)| at.entry).collect();
    assert!(positions.contains(&0) && positions.contains(&1));
    int.set_plan(&positions).unwrap();
    let found = int.forward(&pixels, IMAGES, [side, side]).unwrap();
    let expected = logits(
        with_plan(&model, &resolved)
            .unwrap()
            .forward(images.clone(), BitWidth::new(4).unwrap()),
    );
    let uniform4 = {
        int.set_bits(4).unwrap();
        int.forward(&pixels, IMAGES, [side, side]).unwrap()
    };
    assert_ne!(found, uniform4);
    let classes = expected[0].len();
    let mut flipped = 0;
    for (e, f) in expected.iter().zip(found.chunks(classes)) {
        let scale = e.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-6);
        let diff = e
            .iter()
            .zip(f)
            .fold(0f64, |m, (x, &y)| m.max((x - f64::from(y)).abs()));
        if diff > 1e-4 * scale {
            flipped += 1;
        }
    }
    assert!(
        flipped <= IMAGES / 2,
        "{flipped} of {IMAGES} images differ by more than 1e-4"
    );
    // The f32 runtime under the plan: the model's logits within 1e-4 on every image, and a
    // uniform plan is its bit-width exactly.
    let artifact = export_artifact(&model, &config, 16, &HashMap::new(), None).unwrap();
    let mut runtime = Runtime::new(artifact, &device).unwrap();
    runtime.set_bits(BitWidth::new(4).unwrap()).unwrap();
    let four = logits(runtime.forward(images.clone()));
    let uniform: Plan = serde_json::from_str(r#"{"default": 4}"#).unwrap();
    runtime
        .set_plan(&uniform.resolve(&layers, &config.bits).unwrap())
        .unwrap();
    assert_eq!(logits(runtime.forward(images.clone())), four);
    runtime.set_plan(&resolved).unwrap();
    let f32_found = logits(runtime.forward(images.clone()));
    for (e, f) in expected.iter().zip(&f32_found) {
        let scale = e.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-6);
        for (x, y) in e.iter().zip(f) {
            assert!((x - y).abs() <= 1e-4 * scale, "{x} vs {y}");
        }
    }
    // Plans that do not fit are named.
    let err = int.set_plan(&positions[1..]).unwrap_err().to_string();
    assert!(err.contains("a position for each of the"), "{err}");
    let mut bad = positions.clone();
    bad[0] = 2;
    let err = int.set_plan(&bad).unwrap_err().to_string();
    assert!(
        err.contains("position 2 is not one of the entries 8,4"),
        "{err}"
    );
}
